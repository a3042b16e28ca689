"""Operations: want, get, gc, verify, status, release, forget, as functions over the
settings, a manifest and a store.

Every front calls these: the Python API (`api.Prefetch`, a thin facade), the daemon
(on the handles it holds for its lifetime), the inbox (to apply a request). An
operation opens nothing itself, so a caller decides how long its handles live.
This package imports no submodule, so importing one operation does not pull in the
fetch engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..config import Settings
    from ..manifest import Manifest
    from ..store import Store


class Handles(Protocol):
    """What an operation works on: the daemon's handles, or an `api.Prefetch`."""

    settings: Settings
    manifest: Manifest
    store: Store
