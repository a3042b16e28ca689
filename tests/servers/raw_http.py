"""A loopback HTTP/1.1 server whose every answer a test scripts, byte for byte.

For what a well-behaved server never does: close a keep-alive connection without
saying so, compress against Accept-Encoding, redirect in loops, or act as a proxy.
`answer(conn, n, target, headers)` gets the connection's number, the request's
number on that connection, the request target and the headers (lower-case names);
it returns the raw response bytes, or None to close the connection unanswered.
"""

from __future__ import annotations

import socket
import socketserver
import ssl
import threading
from collections.abc import Callable
from typing import Any

Answer = Callable[[int, int, str, dict[str, str]], bytes | None]


def response(status: int, body: bytes = b"", **headers: str) -> bytes:
    head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}"]
    head += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class RawServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, answer: Answer, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answer = answer
        self.tls = tls
        self.connections = 0
        self.requests: list[tuple[int, str, dict[str, str]]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True)
        return sock, addr

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(socketserver.StreamRequestHandler):
    server: RawServer

    def handle(self) -> None:
        with self.server.lock:
            self.server.connections += 1
            conn = self.server.connections
        n = 0
        while True:
            line = self.rfile.readline()
            if not line:
                return
            target = line.split()[1].decode()
            headers: dict[str, Any] = {}
            while (h := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
                k, _, v = h.decode().partition(":")
                headers[k.strip().lower()] = v.strip()
            n += 1
            with self.server.lock:
                self.server.requests.append((conn, target, headers))
            out = self.server.answer(conn, n, target, headers)
            if out is None:
                return
            self.wfile.write(out)
            self.wfile.flush()
