"""prefetchd: verified, atomic, deduplicated local copies of the files agents need.

    from prefetchd import Prefetch, get
    path = get("report-2024.pdf", timeout="10m")

The public names load on first use (PEP 562): `import prefetchd` alone costs nothing,
so the CLI's socket path (quick.py) stays cheap.
"""

from __future__ import annotations

__version__ = "0.1.0"
API_VERSION = 1  # the local API's version (its routes are /v1/...)

__all__ = ["BadRequest", "DaemonUnavailable", "GaveUpError", "GetResult", "NotReadyError",
           "Prefetch", "PrefetchError", "Transfer", "__version__", "forget", "get", "path",
           "release", "status", "want"]

_FROM_API = {"GetResult", "Prefetch", "Transfer", "forget", "get", "path", "release",
             "status", "want"}
_FROM_ERRORS = {"BadRequest", "DaemonUnavailable", "GaveUpError", "NotReadyError",
                "PrefetchError"}

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing itself is not loaded at run time
    from typing import Any

    from .api import GetResult, Prefetch, Transfer, forget, get, path, release, status, want
    from .errors import BadRequest, DaemonUnavailable, GaveUpError, NotReadyError, PrefetchError


def __getattr__(name: str) -> Any:
    if name in _FROM_API:
        from . import api

        return getattr(api, name)
    if name in _FROM_ERRORS:
        from . import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'prefetchd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
