"""PostgREST and Storage subsets over a real PostgreSQL, for supabase-py to talk to.

Only what prefetchd uses, on the real wire protocol:
  GET  /rest/v1/<table>?select=a,b&col=eq.value&limit=N     (PostgREST filters)
  POST /rest/v1/rpc/<function>   {"arg": value}             (named arguments)
  GET  /storage/v1/object/authenticated/<bucket>/<path>     (Range, If-Range, ETag)
Every request runs as a transaction under the role its API key maps to
(`service_role` or `anon`, as on Supabase) with the test's schema as search_path,
so grants and row-level security are PostgreSQL's own. Storage objects live in a
table `storage_objects` of that schema.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import psycopg
from psycopg import sql

_FILTER_RE = re.compile(r"^(eq|neq|gt|lt|gte|lte)\.(.*)$", re.S)
_OPS = {"eq": "=", "neq": "<>", "gt": ">", "lt": "<", "gte": ">=", "lte": "<="}


class SupabaseServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, dsn: str, schema: str, service_key: str, anon_key: str,
                 port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.dsn, self.schema = dsn, schema
        self.keys = {service_key: "service_role", anon_key: "anon"}
        self.storage_faults: dict[str, deque[dict[str, Any]]] = {}
        self.requests: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> SupabaseServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def run_sql(self, role: str, query: Any, params: Any = None) -> list[tuple]:
        with psycopg.connect(self.dsn) as conn:
            with conn.transaction():
                conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
                conn.execute(sql.SQL("SET LOCAL search_path = {}").format(
                    sql.Identifier(self.schema)))
                cur = conn.execute(query, params)
                return cur.fetchall() if cur.description else []


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: SupabaseServer

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body, default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _role(self) -> str | None:
        key = self.headers.get("apikey")
        auth = self.headers.get("Authorization", "")
        role = self.server.keys.get(key or "")
        if role is None or auth != f"Bearer {key}":
            self._send(401, {"message": "Invalid API key", "code": "401"})
            return None
        return role

    def _log(self, method: str) -> None:
        self.server.requests.append({"method": method, "path": self.path,
                                     "headers": {k.lower(): v for k, v in self.headers.items()}})

    def do_GET(self) -> None:
        self._log("GET")
        role = self._role()
        if role is None:
            return
        parts = urlsplit(self.path)
        if parts.path.startswith("/rest/v1/"):
            return self._select(role, unquote(parts.path[len("/rest/v1/"):]),
                                parse_qsl(parts.query, keep_blank_values=True))
        prefix = "/storage/v1/object/authenticated/"
        if parts.path.startswith(prefix):
            bucket, _, name = unquote(parts.path[len(prefix):]).partition("/")
            return self._object(role, bucket, name)
        self._send(404, {"message": "no such route"})

    def do_POST(self) -> None:
        self._log("POST")
        role = self._role()
        if role is None:
            return
        path = urlsplit(self.path).path
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        m = re.match(r"^/rest/v1/rpc/([a-z_][a-z0-9_]*)$", path)
        if not m:
            return self._send(404, {"message": "no such route"})
        try:
            args = json.loads(body or b"{}")
            names = list(args)
            q = sql.SQL("SELECT {}({})").format(
                sql.Identifier(m.group(1)),
                sql.SQL(", ").join(sql.SQL("{} => %s").format(sql.Identifier(n)) for n in names))
            params = [json.dumps(args[n]) if isinstance(args[n], (list, dict)) else args[n]
                      for n in names]
            rows = self.server.run_sql(role, q, params)
        except psycopg.errors.InsufficientPrivilege as e:
            return self._send(403, {"message": str(e).splitlines()[0], "code": "42501"})
        except psycopg.Error as e:
            return self._send(400, {"message": str(e).splitlines()[0],
                                    "code": getattr(e, "sqlstate", None)})
        self._send(200, rows[0][0])

    def _select(self, role: str, table: str, query: list[tuple[str, str]]) -> None:
        cols: Any = sql.SQL("*")
        where, params, limit = [], [], None
        for k, v in query:
            if k == "select":
                if v != "*":
                    cols = sql.SQL(", ").join(sql.Identifier(c) for c in v.split(","))
            elif k == "limit":
                limit = int(v)
            elif k == "order":
                continue
            else:
                m = _FILTER_RE.match(v)
                if not m:
                    return self._send(400, {"message": f"unsupported filter {k}={v}"})
                where.append(sql.SQL("{} {} %s").format(sql.Identifier(k),
                                                        sql.SQL(_OPS[m.group(1)])))
                params.append(m.group(2))
        q = sql.SQL("SELECT row_to_json(t) FROM (SELECT {} FROM {}{}{}) t").format(
            cols, sql.Identifier(table),
            sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL(""),
            sql.SQL(f" LIMIT {limit}") if limit is not None else sql.SQL(""))
        try:
            rows = self.server.run_sql(role, q, params)
        except psycopg.Error as e:
            return self._send(400, {"message": str(e).splitlines()[0]})
        self._send(200, [r[0] for r in rows])

    def _object(self, role: str, bucket: str, name: str) -> None:
        try:
            rows = self.server.run_sql(
                role, "SELECT data, etag FROM storage_objects WHERE bucket = %s AND name = %s",
                [bucket, name])
        except psycopg.Error as e:
            return self._send(400, {"message": str(e).splitlines()[0]})
        if not rows:
            return self._send(404, {"statusCode": "404", "error": "not_found",
                                    "message": "Object not found"})
        data, etag = bytes(rows[0][0]), rows[0][1]
        fault = (self.server.storage_faults.get(f"{bucket}/{name}") or deque([{}]))
        fault = fault.popleft() if fault else {}
        start, status = 0, 200
        rng, if_range = self.headers.get("Range"), self.headers.get("If-Range")
        m = re.match(r"bytes=(\d+)-$", rng or "")
        if m and (if_range is None or if_range == etag):
            start, status = int(m.group(1)), 206
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        cut = fault.get("cut_after")
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            time.sleep(0.05)
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)
