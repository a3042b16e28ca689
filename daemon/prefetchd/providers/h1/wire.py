"""A socket's incoming bytes, received straight into the buffer that goes to disk."""

from __future__ import annotations

import asyncio

SPARE_SIZE = 256 << 10  # bytes that arrive while no body buffer is posted, at most
LINGER = 0.1  # a body buffer that stops filling is handed over after this many seconds

__all__ = ["LINGER", "SPARE_SIZE", "Wire"]


class Wire(asyncio.BufferedProtocol):
    """A socket's incoming bytes, received straight into the reader's buffer.

    asyncio's StreamReader copies every byte twice (into its buffer, then out of it)
    and shifts its buffer on every read: about 1 s of CPU per GiB here, against 0.2 s
    for recv_into the buffer that goes to disk. `fill()` posts such a buffer and wakes
    its reader only when it is full (or the stream ends); bytes that arrive while no
    buffer is posted (headers, or between two fills) land in a small spare buffer, and
    the socket pauses while that is full.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._spare = bytearray(SPARE_SIZE)
        self._have = 0  # bytes waiting in the spare buffer
        self._target: memoryview | None = None  # the reader's buffer being filled
        self._filled = 0
        self._waiter: asyncio.Future[bool | None] | None = None  # None: woken
        self.eof = False
        self._error: BaseException | None = None
        self._paused = False

    # -- protocol callbacks (event loop) ---------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._target is not None:
            return self._target[self._filled:]
        return memoryview(self._spare)[self._have:]  # never empty: full means paused

    def buffer_updated(self, nbytes: int) -> None:
        if self._target is not None:
            self._filled += nbytes
            if self._filled == len(self._target):
                self._target = None
                self._wake()
            return
        self._have += nbytes
        if self._have == len(self._spare) and self.transport is not None:
            self.transport.pause_reading()
            self._paused = True
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self._error = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- reading (the connection's task) ---------------------------------------------

    @property
    def buffered(self) -> bool:
        return self._have > 0

    async def read_some(self, timeout: float) -> bytes:
        """Whatever has arrived (waiting up to `timeout` for something); b"" at the end."""
        while not self._have and not self.eof:
            if not await self._wait(timeout):
                raise TimeoutError("no bytes from the server within the stall timeout")
        if not self._have and self._error is not None:
            raise self._error
        data = bytes(memoryview(self._spare)[:self._have])
        self._have = 0
        self._resume()
        return data

    def hand_off(self) -> bytes:
        """Stop reading (a thread takes the socket over, see raw.RawBody); returns the
        bytes buffered so far. `take_back` reads again."""
        data = bytes(memoryview(self._spare)[:self._have])
        self._have = 0
        if not self._paused and self.transport is not None:
            self.transport.pause_reading()
            self._paused = True
        return data

    def take_back(self) -> None:
        self._resume()

    async def fill(self, buf: memoryview, timeout: float) -> int:
        """Receive into `buf` until it is full, the stream ends, or LINGER seconds pass
        with it part-filled (a slow stream still hands over what it has, so a cancelled
        download keeps it); returns the count. TimeoutError when `timeout` passes with
        no byte at all."""
        n = min(self._have, len(buf))
        if n:
            buf[:n] = memoryview(self._spare)[:n]
            rest = self._have - n
            self._spare[:rest] = self._spare[n:self._have]  # same size: no reallocation
            self._have = rest
        if n < len(buf) and not self.eof:
            self._target, self._filled = buf, n
            self._resume()
            idle = 0.0
            try:
                while self._target is not None and not self.eof:
                    if await self._wait(LINGER):
                        continue  # woken: full, or the end
                    if self._filled > n:
                        break  # a slow stream: hand over what came
                    idle += LINGER
                    if idle >= timeout:
                        raise TimeoutError("no bytes from the server within the stall timeout")
            finally:
                self._target = None  # later bytes go to the spare buffer, not to `buf`
            n = self._filled
        self._resume()
        if not n and self._error is not None:
            raise self._error
        return n

    async def _wait(self, timeout: float) -> bool:
        """Wait for a wake-up (bytes, the end, or a full buffer); False on timeout.
        A timer on the future itself: asyncio.wait's sets, callbacks and second future
        cost more than the rest of a small response's reading."""
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        return waiter.result() is None

    def _resume(self) -> None:
        if self._paused and self._have < len(self._spare) and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()


def _expire(waiter: asyncio.Future[bool | None]) -> None:
    """The timer of Wire._wait: no wake-up came in time."""
    if not waiter.done():
        waiter.set_result(False)
