"""What the local API works on, handed over by the daemon (the server never imports
the service: the daemon wires it)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..manifest import Manifest
from ..manifest.threads import JobThreads
from ..ops import Handles


@dataclass(frozen=True)
class Host:
    """The daemon's long-lived handles (their `settings` follow SIGHUP), its job
    threads, a way to wake its loop (the manifest changed on its own connection) and
    the Supabase push of `stats --push`."""

    handles: Handles
    jobs: JobThreads
    wake: Callable[[], None]
    push_stats: Callable[[Manifest], int]
    cancel_unwanted: Callable[[], Awaitable[None]]  # stop downloads nobody claims now
