"""An OpenAI-compatible files API on loopback, with faults the tests switch on.

It speaks the real wire protocol that the `openai` SDK uses:
  GET /v1/files/{id}           -> the File object (id, bytes, filename, ...)
  GET /v1/files/{id}/content   -> the bytes, with Range / If-Range / ETag
and the same bytes at GET /raw/{id} for the `http` provider. Each content request
takes the next fault queued for that file, if any.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import unquote

from tests.servers.quiet import QuietServer


@dataclass
class Fault:
    """What to do to one content request.

    status/retry_after: answer with this error; cut_after: close the connection
    after N body bytes; corrupt: flip bytes, same length; ignore_range: answer 200
    to a Range request; stall_after/stall_s: stop sending after N bytes for a while
    (or, with `hold`, until the test sets that event); rate: bytes per second (slow
    body); no_length: chunked, no Content-Length.
    """

    status: int | None = None
    retry_after: str | None = None
    cut_after: int | None = None
    corrupt: bool = False
    ignore_range: bool = False
    stall_after: int | None = None
    stall_s: float = 0.0
    rate: float | None = None
    no_length: bool = False
    hold: threading.Event | None = None


@dataclass
class StoredFile:
    data: bytes
    filename: str
    purpose: str = "assistants"
    etag: str = ""
    faults: deque[Fault] = field(default_factory=deque)


class FilesServer(QuietServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, api_key: str | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, StoredFile] = {}
        self.requests: list[dict[str, Any]] = []
        self.client_closed = 0  # bodies the client stopped reading (closed) before the end
        self.api_key = api_key
        self.lock = threading.Lock()
        self.active = 0  # bodies being sent right now
        self.peak_active = 0
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def start(self) -> FilesServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def add(self, file_id: str, data: bytes, filename: str | None = None,
            purpose: str = "assistants") -> StoredFile:
        f = StoredFile(data, filename or f"{file_id}.bin", purpose,
                       etag='"' + hashlib.sha256(data).hexdigest()[:16] + '"')
        self.files[file_id] = f
        return f

    def fault(self, file_id: str, *faults: Fault) -> None:
        self.files[file_id].faults.extend(faults)

    def content_requests(self, file_id: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["file_id"] == file_id and r["kind"] == "content"]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FilesServer

    def log_message(self, *args: Any) -> None:
        pass

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        m = re.match(r"^/v1/files/([^/]+)(/content)?$", self.path)
        raw = re.match(r"^/raw/(.+)$", self.path)
        if not m and not raw:
            return self._json(404, {"error": {"message": "no such route"}})
        file_id = unquote(m.group(1) if m else raw.group(1))
        kind = "content" if (raw or m.group(2)) else "retrieve"
        with self.server.lock:
            self.server.requests.append(
                {"file_id": file_id, "kind": kind, "peer": self.client_address[1],
                 "headers": {k.lower(): v for k, v in self.headers.items()}})
        if self.server.api_key and m:
            if self.headers.get("Authorization") != f"Bearer {self.server.api_key}":
                return self._json(401, {"error": {"message": "bad key", "type": "auth"}})
        f = self.server.files.get(file_id)
        if f is None:
            return self._json(404, {"error": {"message": "file not found", "type": "invalid"}})
        if kind == "retrieve":
            return self._json(200, {"id": file_id, "object": "file", "bytes": len(f.data),
                                    "created_at": 1700000000, "filename": f.filename,
                                    "purpose": f.purpose, "status": "processed"})
        fault = f.faults.popleft() if f.faults else Fault()
        if fault.status:
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            return self._json(fault.status, {"error": {"message": f"fault {fault.status}"}},
                              headers)
        self._send_body(f, fault)

    def _send_body(self, f: StoredFile, fault: Fault) -> None:
        data = f.data
        if fault.corrupt:
            data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
        start = 0
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        status = 200
        if rng and not fault.ignore_range and (if_range is None or if_range == f.etag):
            m = re.match(r"bytes=(\d+)-$", rng)
            if m:
                start = int(m.group(1))
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("ETag", f.etag)
        self.send_header("Last-Modified", formatdate(1700000000, usegmt=True))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        if fault.no_length:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with self.server.lock:
            self.server.active += 1
            self.server.peak_active = max(self.server.peak_active, self.server.active)
        try:
            self._write(body, fault)
        finally:
            with self.server.lock:
                self.server.active -= 1

    def _write(self, body: bytes, fault: Fault) -> None:
        step = 64 * 1024 if fault.rate is None else max(1024, int(fault.rate / 20))
        sent = 0
        try:
            while sent < len(body):
                limit = len(body)
                for mark in (fault.cut_after, fault.stall_after):
                    if mark is not None and sent < mark:
                        limit = min(limit, mark)
                piece = body[sent:min(limit, sent + step)]
                if fault.no_length:
                    self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                else:
                    self.wfile.write(piece)
                sent += len(piece)
                if fault.cut_after is not None and sent >= fault.cut_after:
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                if fault.stall_after is not None and sent == fault.stall_after:
                    self.wfile.flush()
                    _stall(fault)
                if fault.rate:
                    self.wfile.flush()
                    time.sleep(len(piece) / fault.rate)
            if fault.no_length:
                self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            with self.server.lock:
                self.server.client_closed += 1


def _stall(fault: Fault) -> None:
    """The body's pause: until the test sets `hold`, else `stall_s` seconds."""
    if fault.hold is not None:
        fault.hold.wait(600)
    else:
        time.sleep(fault.stall_s)
    fault.stall_after = None
