"""A lean HTTP/1.1 GET client: h11 over asyncio streams, keep-alive per origin.

Why not httpx here: for thousands of small files the per-request CPU of httpx +
httpcore + anyio (about 0.6 ms a request, measured with bench/run.py) cost more
than the transfers themselves, and prefetchd runs the whole pipeline on one event
loop. h11 does the protocol (message framing, chunked bodies, keep-alive rules)
for about a seventh of that (0.18 s against 1.2 s for 2,000 requests); this package
only manages connections (client), one exchange on a connection (exchange), the
response it yields (response), timeouts, redirects, the bytes off the socket (wire)
and where it may connect (policy). Requests through a proxy from the
environment go through httpx instead (see HttpProvider).
"""

from .client import (
    MAX_REDIRECTS,
    REDIRECT_STATUS,
    ConnectError,
    H1Client,
    TooManyRedirects,
    proxied,
)
from .exchange import TRANSPORT_ERRORS, InvalidURL, Origin
from .policy import AddressPolicy, AddressRefused
from .raw import RawBody
from .response import Response
from .wire import Wire

__all__ = ["MAX_REDIRECTS", "REDIRECT_STATUS", "TRANSPORT_ERRORS", "AddressPolicy",
           "AddressRefused", "ConnectError", "H1Client", "InvalidURL", "Origin", "RawBody",
           "Response", "TooManyRedirects", "Wire", "proxied"]
