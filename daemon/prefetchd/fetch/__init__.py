"""Downloads: provider stream -> temp -> verify -> publish -> link; retry and resume.

`Engine` (engine.py) owns what downloads share and runs one `Download` (download.py)
per file_id: resolve -> resume -> stream -> seal -> publish -> record. A download is
given a `DownloadContext` (context.py), never the engine.
"""

from .commit import GroupCommit
from .context import Progress, Started
from .download import Download
from .engine import Engine
from .ledger import Outcome
from .pools import backoff_delay
from .space import SpaceReserve, human_size, space_backoff

__all__ = ["Download", "Engine", "GroupCommit", "Outcome", "Progress", "SpaceReserve", "Started",
           "backoff_delay", "human_size", "space_backoff"]
