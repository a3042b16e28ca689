"""The bytes of one origin download as they reach its temp file, for the cache upload
that follows them (see tier.Tier._as_holder and upload.Uploader.follow).

The download tells the feed of every buffer it kept (`written`, on its writing thread,
right after the write); the upload's thread waits for them (`ready`). The feed holds
its own descriptor of the temp file (a dup, so the download may close, rename and
publish the file meanwhile: the inode stays the same), and reads from it only.

What may be sent: whole chunks while the download runs, never the bytes that would
complete the upload; the rest only after `verified` (the download checked the sha256
and published the file). A download that starts over in another file, or shrinks its
file (a restart from zero), fails the feed: the bytes already sent may not be the
ones that will be verified, so that upload is abandoned, never completed.
"""

from __future__ import annotations

import os
import threading
from enum import StrEnum
from typing import Protocol


class _Part(Protocol):
    """What the feed reads of the download's temp file (store.Partial)."""

    fd: int
    size: int


class FeedState(StrEnum):
    OPEN = "open"  # the download runs
    VERIFIED = "verified"  # the download's file is verified and published: send the rest
    FAILED = "failed"  # the download failed, stopped, or started over: abandon the upload


class Abandoned(Exception):
    """The upload that follows the feed must end unfinished (`reason` says why)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Feed:
    """A growing file, shared by the download's writer (written) and the upload's
    thread (ready, read); `verified` and `fail` come from the event loop."""

    def __init__(self, sha256: str) -> None:
        self.sha256 = sha256  # what the whole file must hash to (known in advance)
        self._cond = threading.Condition()
        self._fd = -1
        self._inode: tuple[int, int] | None = None
        self.size = 0  # bytes in the file, in order from 0
        self.total: int | None = None  # the file's announced length (Content-Length)
        self.state = FeedState.OPEN
        self.reason = ""

    # -- the download's side ---------------------------------------------------------------

    def written(self, part: _Part, total: int | None) -> None:
        """A buffer was appended to `part` (the download's writing thread)."""
        with self._cond:
            if self.state is not FeedState.OPEN:
                return
            st = os.fstat(part.fd)
            inode = (st.st_dev, st.st_ino)
            if self._inode is None:
                self._fd, self._inode = os.dup(part.fd), inode
            elif inode != self._inode or part.size < self.size:
                self._fail("the download started over")
                return
            self.size = part.size
            if total is not None:
                self.total = total
            self._cond.notify_all()

    def verified(self, sha256: str, size: int) -> None:
        """The download verified and published its file: the rest may go."""
        with self._cond:
            if self.state is not FeedState.OPEN:
                return
            if sha256 != self.sha256 or size != self.size:
                self._fail("the verified file is not the one followed")
                return
            self.total = size
            self.state = FeedState.VERIFIED
            self._cond.notify_all()

    def fail(self, reason: str) -> None:
        with self._cond:
            if self.state is FeedState.OPEN:
                self._fail(reason)

    def _fail(self, reason: str) -> None:
        self.state, self.reason = FeedState.FAILED, reason
        self._cond.notify_all()

    # -- the upload's side -----------------------------------------------------------------

    def start(self, chunk: int) -> int | None:
        """Wait until the upload can be created: the length is known and more than one
        chunk is there. Returns the length, or None when there is nothing to follow (the
        file ended first, or its length is unknown): then the whole object is uploaded
        after the download, as without a feed."""
        with self._cond:
            while self.state is FeedState.OPEN and (self.total is None or self.size < chunk):
                self._cond.wait()
            if self.state is FeedState.FAILED:
                raise Abandoned(self.reason)
            if self.total is None or self.total <= chunk or self.state is FeedState.VERIFIED:
                return None
            return self.total

    def ready(self, offset: int, chunk: int) -> tuple[int, bool]:
        """How many bytes from `offset` may be sent now (waits for them), and whether
        they are the last ones (sent only after `verified`). Whole chunks while the
        download runs, and never the chunk that would complete the file."""
        with self._cond:
            while True:
                if self.state is FeedState.FAILED:
                    raise Abandoned(self.reason)
                total = self.total if self.total is not None else offset
                if self.state is FeedState.VERIFIED:
                    n = min(chunk, total - offset)
                    return n, offset + n == total
                if self.size - offset >= chunk and offset + chunk < total:
                    return chunk, False
                self._cond.wait()

    def read_into(self, buf: memoryview, offset: int) -> int:
        return os.preadv(self._fd, [buf], offset)

    def close(self) -> None:
        with self._cond:
            if self.state is FeedState.OPEN:
                self._fail("closed")
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
