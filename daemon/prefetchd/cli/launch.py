"""The `prefetchd` console script: the socket path first, else the CLI with the cyclic
collector paused while it loads.

With a daemon running, most commands an agent makes are one request over its socket:
quick.py does them importing almost nothing (the full CLI's imports are about 0.3 s;
the generated script itself imports only `re`, `sys` and this module). quick.run()
answers None when it is not sure to do exactly what the full CLI would; then the CLI
runs.

CPython runs many full collections while a few hundred modules load (pydantic,
sqlite-utils, structlog, h11...), and scans every loaded object again at exit:
about 0.1 s of each `prefetchd` call, measured. The modules are loaded with the
collector off, then what they made is frozen (never scanned again); the collector is
back on before any command runs. A Ctrl-C while the CLI loads is one line, exit 130,
as it is once a command runs (not runpy's traceback).
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Sequence

INTERRUPTED_EXIT = 130  # as the CLI's: 128 + SIGINT


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args == ["--version"]:
        from .. import __version__

        print(f"prefetchd {__version__}")
        return 0
    from .quick import run as quick

    code = quick(args)
    if code is not None:
        return code
    gc.disable()
    try:
        from .commands import main as cli_main
    except KeyboardInterrupt:  # Ctrl-C while the CLI loads: nothing was asked yet
        print("prefetchd: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT
    finally:
        gc.freeze()
        gc.enable()
    return cli_main(args)


if __name__ == "__main__":  # pragma: no cover - `python -m prefetchd.cli.launch`
    sys.exit(main())
