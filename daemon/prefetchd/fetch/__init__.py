"""Downloads: provider stream -> temp -> verify -> publish -> link; retry and resume.

`Engine` (engine.py) owns what downloads share and runs one `Download` (download.py)
per file_id: resolve -> resume -> stream -> seal -> publish -> record.
"""

from .commit import GroupCommit
from .download import Download
from .engine import Engine, Progress, Started, backoff_delay
from .ledger import Outcome
from .space import SpaceReserve, human_size, space_backoff

__all__ = ["Download", "Engine", "GroupCommit", "Outcome", "Progress", "SpaceReserve", "Started",
           "backoff_delay", "human_size", "space_backoff"]
