"""Free space on the root's filesystem: the min_free_bytes reserve, kept by refusing
to start a download that would cross it, the wait of an entry that ran out, and the
one-at-a-time way for downloads of unknown length while space is short.

Apart from the engine so that it can be tested alone: give it a statvfs.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import NoSpaceError, TooLargeError, human_size

__all__ = ["FREE_SPACE_TTL", "SHORT_FREE", "SPACE_BACKOFF", "SpaceReserve", "human_size",
           "space_backoff"]

FREE_SPACE_TTL = 0.25  # seconds a statvfs answer is used for (see SpaceReserve.claim)
SPACE_BACKOFF = 5.0    # first wait of an entry that ran out of space again (doubles)
SHORT_FREE = 1 << 30   # less than this free (beyond the reserve): space is short
MiB = 1 << 20


def space_backoff(hits: int, cap: float, base: float = SPACE_BACKOFF) -> float | None:
    """How long an entry that ran out of space waits before its next try: not at all
    the first time (a cleanup pass runs at once), then `base` (5 s), twice that, ... up
    to `cap`, so one that can never fit does not fill the disk, or run a pass, every
    few seconds."""
    if hits < 1:
        return None
    return min(max(cap, base), base * 2 ** min(hits - 1, 20))


class SpaceReserve:
    """Lets downloads start only while the filesystem keeps `reserve` bytes free.

    statvfs is asked at most every FREE_SPACE_TTL seconds (while the group commit
    flushes, it can take a fraction of a millisecond, on the event loop, for each of
    thousands of small files); in between, what earlier claims let through is counted
    as used, so concurrent downloads never share the same free bytes.
    """

    def __init__(self, root: Path, reserve: int, *,
                 statvfs: Callable[[Path], os.statvfs_result] = os.statvfs,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root = root
        self.reserve = reserve  # min_free_bytes; the engine updates it on reload
        self._statvfs = statvfs
        self._clock = clock
        self._free, self._free_at = 0, float("-inf")
        self._fs_size = 0  # the filesystem's total size, read with the free space
        self.backoff_base = SPACE_BACKOFF  # the daemon sets it (_PREFETCHD_SPACE_RETRY)
        # One download of unknown length at a time while space is short (see `short`).
        self.unknown_way = asyncio.Lock()

    def short(self) -> bool:
        """Whether space is short: less than SHORT_FREE (1 GiB) is free beyond the
        reserve, counting what claims let through. Then downloads of unknown length
        take `unknown_way` one at a time: two of them streaming at once can fill the
        disk under each other, and one that can never fit would take the room of one
        that fits alone."""
        if self._clock() - self._free_at > FREE_SPACE_TTL:
            self._refresh()
        return self._free - self.reserve < SHORT_FREE

    def claim(self, file_id: str, need: int) -> None:
        """Count `need` bytes as used, or refuse: NoSpaceError while the reserve would be
        crossed, TooLargeError when the file cannot fit even on an empty filesystem."""
        if self._clock() - self._free_at > FREE_SPACE_TTL:
            self._refresh()
        self._fits_at_all(file_id, need)
        if self._free - need < self.reserve:
            self._free_at = float("-inf")  # space may come back: ask again next time
            raise NoSpaceError(need_bytes=need, file_id=file_id, free=self._free,
                               limit=self.reserve)
        self._free -= need

    def known_minimum(self, file_id: str, need: int | None) -> None:
        """An entry that filled the disk before (`need`, its min_size) starts only once
        more than that is free: a download that can never fit does not fill the disk
        again and again while files that fit wait (no network, no disk write)."""
        if not need:
            return
        # Its own statvfs: refreshing claim's cache would forget what it let through.
        st = self._statvfs(self.root)
        free, self._fs_size = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
        self._fits_at_all(file_id, need, at_least=True)
        if free - need < self.reserve:
            raise NoSpaceError(need_bytes=need, at_least=True, file_id=file_id, free=free,
                               limit=self.reserve)

    def learned_minimum(self, file_id: str, need: int) -> None:
        """After ENOSPC on a download of unknown length that reached `need` - 1 bytes:
        TooLargeError when even the empty filesystem would not hold more. The download
        filled a filesystem that held (almost) nothing else, so the file is larger than
        the filesystem less what any file system keeps for itself (a metadata block or
        two; 1 MiB or 1 % of the filesystem is allowed for it): waiting cannot help."""
        st = self._statvfs(self.root)
        self._fs_size = st.f_blocks * st.f_frsize
        slack = max(MiB, self._fs_size // 100)
        capacity = self._fs_size - self.reserve
        if need > capacity - slack:
            raise TooLargeError(need_bytes=need, capacity=capacity, file_id=file_id,
                                limit=self.reserve, at_least=True)

    def _refresh(self) -> None:
        st = self._statvfs(self.root)
        self._free, self._free_at = st.f_bavail * st.f_frsize, self._clock()
        self._fs_size = st.f_blocks * st.f_frsize

    def _fits_at_all(self, file_id: str, need: int, at_least: bool = False) -> None:
        """A file larger than the filesystem (less the reserve) fails at once: waiting
        cannot help, and evicting every other file would not make room."""
        capacity = self._fs_size - self.reserve
        if need > capacity:
            raise TooLargeError(need_bytes=need, capacity=capacity, file_id=file_id,
                                limit=self.reserve, at_least=at_least)
