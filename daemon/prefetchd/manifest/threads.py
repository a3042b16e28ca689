"""Job threads for the daemon's blocking passes, each with its own manifest connection
(a SQLite connection serves one thread at a time)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from . import Manifest

T = TypeVar("T")


class JobThreads:
    """A few threads for the daemon's blocking passes (retention, scrub, reap, mirror,
    start-up reconciliation), each with one manifest connection, opened on its first
    job and kept until close().

    A SQLite connection serves one thread at a time, so the passes cannot share the
    event loop's; opening one per pass cost a connection (and a store, six fds) for
    every scheduled job.
    """

    def __init__(self, db_path: Path, size: int = 4) -> None:
        self._db_path = db_path
        self._pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="prefetchd-job")
        self._local = threading.local()
        self._opened: list[Manifest] = []
        self._lock = threading.Lock()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(manifest, *args)` on a job thread, with that thread's manifest."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._call, fn, args)

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        manifest: Manifest | None = getattr(self._local, "manifest", None)
        if manifest is None:
            manifest = self._local.manifest = Manifest(self._db_path)
            with self._lock:
                self._opened.append(manifest)
        return fn(manifest, *args)

    def close(self) -> None:
        """Wait for the passes running, then close every thread's manifest."""
        self._pool.shutdown(wait=True)
        for manifest in self._opened:
            manifest.close()
        self._opened.clear()
