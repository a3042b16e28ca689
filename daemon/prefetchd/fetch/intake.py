"""One body's bytes into a partial, with the size and type limits checked on the way.

Network reads overlap with hashing and disk writes: bytes gather into a large
buffer, and each full buffer is handed to a worker thread (hashlib and os.write
release the GIL) while the next one is received.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from .. import limits
from ..config import LimitsSettings
from ..errors import PermanentError, TransientError
from ..store import Partial

Buffer = bytes | bytearray


@dataclass
class Intake:
    """Receives one body into `part`; `run` returns the last buffer, unwritten.

    `write(buf)` starts hashing and writing a buffer in a worker and returns its
    future; `first_bytes()` is called before bytes are first kept on disk (it saves
    where they come from, for a resume), so a body that arrives whole never needs it.
    `progress(received)` follows each buffer handed over.
    """

    part: Partial
    file_id: str
    name: str | None
    total: int | None
    limits: LimitsSettings
    chunk_size: int
    write: Callable[[Buffer], asyncio.Future[None]]
    first_bytes: Callable[[], None]
    progress: Callable[[int], None]
    received: int = field(init=False)
    _buf: Buffer = field(init=False, default=b"")
    _pending: asyncio.Future[None] | None = field(init=False, default=None)
    _head_checked: bool = field(init=False)

    def __post_init__(self) -> None:
        self.received = self.part.size
        self._head_checked = self.part.size > 0 or not self.limits.check_magic

    async def run(self, chunks: AsyncIterator[Buffer]) -> Buffer:
        """Receive into large buffers; hash+write each in a worker while the next arrives."""
        try:
            async for chunk in chunks:
                self._take(chunk)
                if len(self._buf) >= self.chunk_size:
                    await self._hand_over()
            if not self._head_checked:
                limits.check_magic(self.limits, self.file_id, self.name, bytes(self._buf))
            limits.check_size(self.limits, self.file_id, self.name, self.received)
        except (TransientError, asyncio.CancelledError):
            await self._keep()  # every byte that arrived: the next attempt resumes after them
            raise
        finally:
            if self._pending is not None:
                await self._pending  # never close the temp under a running write
        self.progress(self.received)
        return self._buf

    def _take(self, chunk: Buffer) -> None:
        """Add a chunk to the buffer and check it against the limits."""
        if not self._buf:
            self._buf = chunk  # a full-size buffer goes to disk as it came, uncopied
        else:
            if type(self._buf) is not bytearray:
                self._buf = bytearray(self._buf)
            self._buf += chunk
        self.received += len(chunk)
        if self.total is not None and self.received > self.total:
            raise TransientError(f"{self.file_id}: more bytes than the announced {self.total}",
                                 file_id=self.file_id)
        cap = self.limits.max_file_size
        if cap is not None and self.received > cap:
            raise PermanentError(
                f"{self.file_id}: over limits.max_file_size ({cap}) while streaming",
                file_id=self.file_id)
        if not self._head_checked and len(self._buf) >= limits.MAGIC_BYTES_NEEDED:
            head = bytes(self._buf[:limits.MAGIC_BYTES_NEEDED])
            limits.check_magic(self.limits, self.file_id, self.name, head)
            self._head_checked = True

    async def _hand_over(self) -> None:
        """Start writing the full buffer once the previous write is done."""
        if self._pending is not None:
            await self._pending
        else:
            self.first_bytes()
        self._pending = self.write(self._buf)
        self._buf = b""
        self.progress(self.received)

    async def _keep(self) -> None:
        if self._pending is not None:
            await self._pending
            self._pending = None
        if self._buf:
            self.first_bytes()
            await self.write(self._buf)
