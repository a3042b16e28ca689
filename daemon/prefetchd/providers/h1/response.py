"""A response: its status and headers, and its body read through its exchange."""

from __future__ import annotations

import h11

from .exchange import Exchange
from .raw import RawBody


class Response:
    """Status, headers (lower-case names) and final URL of a GET; iterate for the body.

    It holds only its exchange (as httpx's Response holds only a stream): the exchange
    reads the body and, at `aclose`, gives the connection back or closes it."""

    def __init__(self, exchange: Exchange, head: h11.Response, url: str) -> None:
        self._exchange = exchange
        self.status = head.status_code
        self.url = url
        self.header_list: list[tuple[bytes, bytes]] = list(head.headers)
        headers: dict[str, str] = {}
        for name, value in self.header_list:
            key = name.decode("latin-1")
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        self.headers = headers

    def can_hand_off(self) -> bool:
        """Whether `hand_off` may give the body to a thread (see Exchange.hand_off)."""
        return self._exchange.can_hand_off()

    def hand_off(self) -> RawBody:
        """The rest of the body for one blocking thread, which must be done before
        `aclose`; the body is not iterated after this."""
        return self._exchange.hand_off()

    def __aiter__(self) -> Response:
        return self

    async def __anext__(self) -> bytes | bytearray:
        chunk = await self._exchange.receive()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        """Done with this response: its connection goes back to the pool if the body
        was read to the end, else it is closed."""
        await self._exchange.finish(drain=False)

    async def discard(self) -> None:
        """Done with a redirect: read its short body, if any, to keep the connection."""
        await self._exchange.finish(drain=True)
