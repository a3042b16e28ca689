"""The `prefetchd` console script: loads the CLI with the cyclic collector paused.

CPython runs many full collections while a few hundred modules load (pydantic,
sqlite-utils, structlog, h11...), and scans every loaded object again at exit:
about 0.1 s of each `prefetchd` call, measured. The modules are loaded with the
collector off, then what they made is frozen (never scanned again); the collector is
back on before any command runs.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    gc.disable()
    try:
        from .cli import main as cli_main
    finally:
        gc.freeze()
        gc.enable()
    return cli_main(argv)


if __name__ == "__main__":  # pragma: no cover - `python -m prefetchd.launch`
    import sys

    sys.exit(main())
