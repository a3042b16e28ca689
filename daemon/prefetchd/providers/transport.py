"""The one mapping of a transport failure to a prefetchd error, by class.

h1's errors, httpx's (through a proxy) and the openai SDK's all end here: the
classes in the exception's chain of causes say what happened, never a class name
or a message's words.
"""

from __future__ import annotations

import re
import socket
import ssl
import sys
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
        return PermanentError(f"{what}: {_cert_words(cert)}")
    return TransientError(f"{what}: {_what_happened(chain)}")


def in_words(exc: BaseException, timeout_setting: str | None = None) -> str:
    """What `exc` (a transport failure) says happened, as transport_error puts it,
    without the place: for messages that name the place themselves (supabase). A
    timeout names `timeout_setting` instead of connect_timeout / stall_timeout."""
    chain = _causes(exc)
    cert = _find(chain, ssl.SSLCertVerificationError)
    if cert is not None:
        return _cert_words(cert)
    return _what_happened(chain, timeout_setting)


def _cert_words(cert: ssl.SSLCertVerificationError) -> str:
    reason = str(cert.verify_message or cert.reason or "unknown reason").rstrip(".")
    hint = "" if cert.verify_code in _NAME_MISMATCH else (
        " (set SSL_CERT_FILE to trust a private CA)")
    return f"certificate verify failed: {reason}{hint}"


def _what_happened(chain: Sequence[BaseException], timeout_setting: str | None = None) -> str:
    at: ConnectError | None = _find(chain, ConnectError)
    peer = at.peer if at is not None else "the server"
    if _find(chain, socket.gaierror):
        return f"could not resolve host {at.host if at else ''}".rstrip()
    if _find(chain, ConnectionRefusedError):
        return f"connection refused by {peer}"
    if timed_out := _timed_out(chain, at is not None, peer, timeout_setting):
        return timed_out
    if _find(chain, (ConnectionResetError, BrokenPipeError)):
        return f"connection reset by {peer}"
    if tls := _find(chain, ssl.SSLError):
        return f"TLS with {peer} failed: {_tls_words(tls)}"
    if broken := _find(chain, h11.RemoteProtocolError):
        return f"the connection to {peer} broke: {unrepr(str(broken))}"
    if os_error := next((e for e in chain if isinstance(e, OSError) and e.strerror), None):
        return f"{peer}: {os_error.strerror}"
    words = next((unrepr(str(e)) for e in chain if str(e)), "")
    return f"connection problem with {peer}" + (f": {words}" if words else "")


def _timed_out(chain: Sequence[BaseException], connecting: bool, peer: str,
               setting: str | None) -> str | None:
    connect_kinds, every_kind = _timeout_classes()
    if not _find(chain, every_kind):
        return None
    if connecting or _find(chain, connect_kinds):
        return f"could not connect to {peer} within {setting or 'connect_timeout'}"
    return f"no bytes from {peer} within {setting or 'stall_timeout'}"


def _timeout_classes() -> tuple[tuple[type[BaseException], ...],
                                tuple[type[BaseException], ...]]:
    """(connect timeouts, every timeout): TimeoutError, and those of the HTTP libraries
    that are loaded (httpx, the openai SDK's fork of it, httpcore), which do not derive
    from TimeoutError. Looked up, not imported: whoever raised one loaded its module."""
    connect: list[type[BaseException]] = []
    every: list[type[BaseException]] = [TimeoutError]
    for name in ("httpx", "httpx2", "httpcore"):
        module = sys.modules.get(name)
        if module is not None:
            connect.append(module.ConnectTimeout)
            every.append(module.TimeoutException)
    return tuple(connect), tuple(every)


def _tls_words(err: ssl.SSLError) -> str:
    """OpenSSL's reason code in words: WRONG_VERSION_NUMBER -> wrong version number
    (the usual answer of a plain-HTTP port to a TLS handshake, hence the hint)."""
    if not err.reason:
        return str(err.strerror or "handshake failed")
    words = err.reason.lower().replace("_", " ")
    if err.reason == "WRONG_VERSION_NUMBER":
        words += " (does that port speak plain http?)"
    return words


_BYTES_REPR = re.compile(r"""bytearray\(b(['"])(.*?)\1\)|(?<!\w)b(['"])(.*?)\3""")


def unrepr(text: str) -> str:
    """h11 quotes what it could not parse as Python reprs (`bytearray(b'HELLO')`):
    shown as plain quoted text (`'HELLO'`)."""
    return _BYTES_REPR.sub(lambda m: f"'{m.group(2) or m.group(4) or ''}'", text)


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
