"""One large body into a partial on two threads of its own; the event loop only watches.

A thread receives the body straight into a few reused buffers (BlockingBody.readinto)
and appends each to the temp file; a second thread hashes each written buffer while
the first receives the next (hashlib releases the GIL), so a large file costs the
longer of the two, and the event loop none of its bytes. Measured on 1 GiB from nginx
on loopback (bench/profile_big.py): the loop spent 0.75 s of CPU per GiB on chunk
wake-ups and hand-offs before; now it wakes every PROGRESS_EVERY seconds.

The loop reports progress, runs `first_bytes` (a manifest write) when the thread asks,
and on cancellation stops the thread, which keeps the bytes that arrived (a resume
starts after them) and ends within wire.LINGER; the temp is never closed under it.
"""

from __future__ import annotations

import asyncio
import mmap
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from .. import limits
from ..config import LimitsSettings
from ..errors import PermanentError, TransientError
from ..providers.base import BlockingBody, ReadStopped
from ..store import Partial
from ..store.temps import DIRECT_ALIGN

BUFFERS = 4  # in flight between the receiving and the hashing thread
DIRECT = True  # write whole aligned buffers past the page cache (Partial.append_direct)
PROGRESS_EVERY = 0.1  # seconds between progress reports

_Queue = queue.SimpleQueue[tuple[mmap.mmap, int] | None]  # written buffers, to be hashed


@dataclass
class Pump:
    """Receives the rest of one body of known length into `part` (see the module).

    `first_bytes()` runs on the event loop before bytes are first written; `written()`
    runs on the writing thread right after each write (the fleet's feed follows it);
    `progress(received)` on the loop.
    """

    part: Partial
    file_id: str
    name: str | None
    total: int
    limits: LimitsSettings
    chunk_size: int
    first_bytes: Callable[[], None]
    written: Callable[[], None]
    progress: Callable[[int], None]
    # Whether whole aligned buffers may go past the page cache: not when the bytes are
    # read again at once (the fleet's upload follows them through a duplicate of the
    # file's descriptor, which O_DIRECT would then apply to as well).
    direct: bool = True
    received: int = field(init=False)
    _first: bool = field(init=False, default=True)  # nothing written yet
    _direct: bool = field(init=False, default=False)
    _hash_error: BaseException | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.received = self.part.size

    async def run(self, body: BlockingBody) -> None:
        """Receive, write and hash the rest of `body`; every byte is written and hashed
        when this returns or raises."""
        loop = asyncio.get_running_loop()
        done: Future[None] = Future()
        thread = threading.Thread(target=self._main, args=(body, loop, done),
                                  name="prefetchd-pump", daemon=True)
        thread.start()
        waiter = asyncio.wrap_future(done)
        try:
            while not (await asyncio.wait((waiter,), timeout=PROGRESS_EVERY))[0]:
                self.progress(self.received)
        except BaseException:  # cancelled (or a progress callback failed): stop it
            body.stop()
            await _until_done(waiter)
            raise
        finally:
            thread.join()  # it has set `done`: only its return is left
        waiter.result()
        self.progress(self.received)

    # -- the receiving thread ---------------------------------------------------------

    def _main(self, body: BlockingBody, loop: asyncio.AbstractEventLoop,
              done: Future[None]) -> None:
        try:
            self._receive(body, loop)
        except BaseException as e:  # noqa: BLE001 - handed to the waiting coroutine
            done.set_exception(e)
        else:
            done.set_result(None)

    def _receive(self, body: BlockingBody, loop: asyncio.AbstractEventLoop) -> None:
        size = max(1, min(self.chunk_size, body.left))
        bufs = [mmap.mmap(-1, size) for _ in range(BUFFERS)]  # page-aligned: O_DIRECT
        free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        for buf in bufs:
            free.put(buf)
        self._direct = DIRECT and self.direct and size % DIRECT_ALIGN == 0
        hashing: _Queue = queue.SimpleQueue()
        hasher = threading.Thread(target=self._hash, args=(hashing, free),
                                  name="prefetchd-pump-hash", daemon=True)
        hasher.start()
        head_checked = self.part.size > 0 or not self.limits.check_magic
        try:
            while body.left:
                buf = free.get()
                if self._hash_error is not None:
                    raise self._hash_error
                n = self._fill(body, buf, loop, hashing)
                if not head_checked:
                    limits.check_magic(self.limits, self.file_id, self.name,
                                       bytes(buf[:limits.MAGIC_BYTES_NEEDED]))
                    head_checked = True
                self._keep(buf, n, loop, hashing)
            limits.check_size(self.limits, self.file_id, self.name, self.received)
        finally:
            hashing.put(None)
            hasher.join()
            for buf in bufs:
                try:
                    buf.close()
                except BufferError:
                    pass  # a view lives on in the traceback of what is raised: GC frees it
        if self._hash_error is not None:
            raise self._hash_error

    def _fill(self, body: BlockingBody, buf: mmap.mmap, loop: asyncio.AbstractEventLoop,
              hashing: _Queue) -> int:
        """Receive into `buf` until it is full or the body ends; on a broken connection
        or a stop, first keep what arrived (the next attempt resumes after it)."""
        n = 0
        with memoryview(buf) as view:
            try:
                while n < len(view) and body.left:
                    n += body.readinto(view[n:])
            except (TransientError, ReadStopped):
                if n:
                    self._keep(buf, n, loop, hashing)
                raise
        return n

    def _keep(self, buf: mmap.mmap, n: int, loop: asyncio.AbstractEventLoop,
              hashing: _Queue) -> None:
        """Write the first `n` bytes of `buf`, then hand it to the hashing thread."""
        self.received += n
        cap = self.limits.max_file_size
        if cap is not None and self.received > cap:
            raise PermanentError(
                f"{self.file_id}: over limits.max_file_size ({cap}) while streaming",
                file_id=self.file_id)
        if self._first:
            self._on_loop(loop, self.first_bytes)
            self._first = False
        part = self.part
        with memoryview(buf) as view:
            if not (self._direct and n % DIRECT_ALIGN == 0 and part.size % DIRECT_ALIGN == 0
                    and part.append_direct(view[:n])):
                part.append(view[:n])
        self.written()
        hashing.put((buf, n))

    @staticmethod
    def _on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[[], None]) -> None:
        """Run `fn` on the event loop and wait for it. The loop is free meanwhile: the
        coroutine that started this thread only waits for it (even when cancelled)."""
        result: Future[None] = Future()

        def call() -> None:
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - raised again on the thread
                result.set_exception(e)
            else:
                result.set_result(None)

        loop.call_soon_threadsafe(call)
        result.result()

    # -- the hashing thread -----------------------------------------------------------

    def _hash(self, hashing: _Queue, free: queue.SimpleQueue[mmap.mmap]) -> None:
        """Hash each written buffer in order, then hand it back for receiving."""
        update = self.part.hasher.update
        while (item := hashing.get()) is not None:
            buf, n = item
            if self._hash_error is None:
                try:
                    with memoryview(buf) as view:
                        update(view[:n])
                except BaseException as e:  # noqa: BLE001 - raised on the receiving thread
                    self._hash_error = e
            free.put(buf)


async def _until_done(waiter: asyncio.Future[None]) -> None:
    """Wait for the thread to end, even when cancelled again meanwhile: the temp must
    not be closed under a write. The thread ends within one LINGER once stopped; what
    it raised then (ReadStopped, most likely) gives way to the cancellation."""
    while not waiter.done():
        try:
            await asyncio.wait((waiter,))
        except asyncio.CancelledError:
            continue
    waiter.exception()
