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
        self.accepted = 0  # TCP connections, counted before any TLS handshake
        self.connections = 0  # connections that reached HTTP (after TLS, if any)
        self.requests: list[tuple[int, str, dict[str, str]]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        with self.lock:
            self.accepted += 1
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


class TunnelProxy(socketserver.ThreadingTCPServer):
    """A loopback proxy that only tunnels: `CONNECT host:port`, then bytes both ways
    (what an https URL through HTTPS_PROXY needs). `targets` lists what was asked."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Tunnel)
        self.targets: list[str] = []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _Tunnel(socketserver.StreamRequestHandler):
    server: TunnelProxy

    def handle(self) -> None:
        line = self.rfile.readline().decode()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        method, target = line.split()[:2]
        self.server.targets.append(target)
        host, _, port = target.rpartition(":")
        if method != "CONNECT" or host.strip("[]") not in ("127.0.0.1", "::1", "localhost"):
            self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return  # this proxy never leaves loopback
        with socket.create_connection((host.strip("[]"), int(port))) as upstream:
            self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self.wfile.flush()
            back = threading.Thread(target=_pipe, args=(upstream, self.connection), daemon=True)
            back.start()
            _pipe(self.connection, upstream)
            back.join(timeout=60)


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the other side closed first: the tunnel is over either way
