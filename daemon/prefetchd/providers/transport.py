"""The one mapping of a transport failure to a prefetchd error, by class.

h1's errors, httpx's (through a proxy) and the openai SDK's all end here: the
classes in the exception's chain of causes say what happened, never a class name
or a message's words.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Sequence
from typing import Any

import h11

from ..errors import DownloadError, PermanentError, TransientError
from .h1 import ConnectError

#: X509_V_ERR_HOSTNAME_MISMATCH, _EMAIL_MISMATCH, _IP_ADDRESS_MISMATCH: the certificate
#: is trusted but names another host, so a private CA is not the fix
_NAME_MISMATCH = {62, 63, 64}


def transport_error(exc: BaseException, what: str) -> DownloadError:
    """`exc` (a transport failure) as a prefetchd error whose message names `what`.

    A certificate that does not verify is permanent: retrying gets the same certificate
    (curl gives up at once too). Everything else may pass: refused, reset, timed out,
    DNS, a garbled answer. Messages say what happened in words, with the place.
    """
    chain = _causes(exc)
    if cert := _find(chain, ssl.SSLCertVerificationError):
        reason = str(cert.verify_message or cert.reason or "unknown reason").rstrip(".")
        hint = "" if cert.verify_code in _NAME_MISMATCH else (
            " (set SSL_CERT_FILE to trust a private CA)")
        return PermanentError(f"{what}: certificate verify failed: {reason}{hint}")
    return TransientError(f"{what}: {_what_happened(chain)}")


def _what_happened(chain: Sequence[BaseException]) -> str:
    at: ConnectError | None = _find(chain, ConnectError)
    peer = at.peer if at is not None else "the server"
    if _find(chain, socket.gaierror):
        return f"could not resolve host {at.host if at else ''}".rstrip()
    if _find(chain, ConnectionRefusedError):
        return f"connection refused by {peer}"
    if _find(chain, TimeoutError):
        if at is not None:
            return f"could not connect to {peer} within connect_timeout"
        return f"no bytes from {peer} within stall_timeout"
    if _find(chain, (ConnectionResetError, BrokenPipeError)):
        return f"connection reset by {peer}"
    if tls := _find(chain, ssl.SSLError):
        return f"TLS with {peer} failed: {tls.reason or tls.strerror}"
    if broken := _find(chain, h11.RemoteProtocolError):
        return f"the connection to {peer} broke: {broken}"
    if os_error := next((e for e in chain if isinstance(e, OSError) and e.strerror), None):
        return f"{peer}: {os_error.strerror}"
    words = next((str(e) for e in chain if str(e)), "")
    return f"connection problem with {peer}" + (f": {words}" if words else "")


def _find(chain: Sequence[BaseException],
          kind: type[BaseException] | tuple[type[BaseException], ...]) -> Any:
    return next((e for e in chain if isinstance(e, kind)), None)


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc`, what caused it, what caused that...; also the members of exception groups
    (anyio raises one when every address of a host refused) and exceptions carried as
    arguments (httpcore wraps one so, then drops the chain with `raise ... from None`)."""
    out: list[BaseException] = []
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if any(e is seen for seen in out):
            continue
        out.append(e)
        if isinstance(e, BaseExceptionGroup):
            todo.extend(e.exceptions)
        todo.extend(a for a in e.args if isinstance(a, BaseException))
        nxt = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
        if nxt is not None:
            todo.append(nxt)
    return out
