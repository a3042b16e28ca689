"""PostgREST and Storage subsets over a real PostgreSQL, for supabase-py to talk to.

Only what prefetchd uses, on the real wire protocol (routes, headers, status codes and
error bodies as PostgREST 12 and supabase/storage answer them):
  GET  /rest/v1/<table>?select=a,b&col=eq.value&order=c.desc&limit=N   (PostgREST reads)
  POST /rest/v1/rpc/<function>   {"arg": value}             (named arguments; void -> 204)
  GET  /storage/v1/object/authenticated/<bucket>/<path>     (Range, If-Range, ETag)
  POST|PUT /storage/v1/object/<bucket>/<path>               (upload; x-upsert; raw or multipart)
  POST /storage/v1/upload/resumable, HEAD|PATCH|OPTIONS <Location>   (TUS 1.0.0)

Keys: the fixed service and anon keys, or a JWT (HS256) signed with `jwt_secret`, as on
Supabase: the request runs in one transaction under the JWT's `role`
(`SET LOCAL ROLE`), with its claims in `request.jwt.claims` and the test's schema as
search_path, so grants and row-level security are PostgreSQL's own.

Storage keeps bytes on disk under `storage_dir/<bucket>/<name>` and the metadata in a
table `objects` (bucket_id, name, etag, size, created_at) of the test schema, read and
written as the caller's role, so Storage's row-level security is the schema's policies.
Unfinished TUS uploads live under `storage_dir/.tus/` (a restarted server resumes them).

Fast where the wire does not show it (the fleet benchmark runs this process on the
hosts' own cores): objects go out with sendfile, PATCH bodies come in through two
buffers per connection with the ETag's md5 on a thread of its own, and database
connections are pooled, as PostgREST's and Storage's are.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.utils
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import jwt
import psycopg
from psycopg import sql

from tests.servers.quiet import QuietServer

_FILTER_RE = re.compile(r"^(not\.)?(eq|neq|gt|lt|gte|lte|in|is)\.(.*)$", re.S)
_OPS = {"eq": "=", "neq": "<>", "gt": ">", "lt": "<", "gte": ">=", "lte": "<="}
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CHUNK = 1 << 20
_BODY_BUF = 2 << 20  # a connection's buffers for request bodies (see _Handler._body_into)
_POOL_MAX = 16  # idle database connections kept
_VOID_OID = 2278
TUS_PATH = "/storage/v1/upload/resumable"
_JSON_NULL = object()  # a body that is the JSON value null


class SupabaseServer(QuietServer):
    """One stand-in; several may serve the same schema and storage_dir at once."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, dsn: str, schema: str, service_key: str, anon_key: str,  # noqa: PLR0913
                 port: int = 0, *, jwt_secret: str | None = None,
                 storage_dir: str | Path | None = None,
                 roles: dict[str, str] | None = None) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.dsn, self.schema = dsn, schema
        self.keys = {service_key: "service_role", anon_key: "anon"}
        self.jwt_secret = jwt_secret
        # Supabase's role names (as keys and JWTs say them) -> the cluster's roles that
        # stand for them (the tests' own names: see tests/supa_env.py ROLES).
        self.roles = dict(roles or {})
        self._own_dir = storage_dir is None
        self.storage_dir = Path(storage_dir or tempfile.mkdtemp(prefix="supa-storage-"))
        (self.storage_dir / ".tus").mkdir(parents=True, exist_ok=True)
        # "<bucket>/<name>" -> faults for the next GETs: {"cut_after": N} sends N bytes
        # of the body and drops the connection.
        self.storage_faults: dict[str, deque[dict[str, Any]]] = {}
        # "<bucket>/<name>" -> faults for the next TUS PATCHes: {"cut_after": N} stores
        # N bytes of the chunk and drops the connection without an answer;
        # {"stall_s": S} waits S seconds before taking the chunk.
        self.upload_faults: dict[str, deque[dict[str, Any]]] = {}
        self.requests: list[dict[str, Any]] = []
        # TUS upload id -> (offset, md5 of its bytes up to there), see _patch.
        self.tus_md5: dict[str, tuple[int, Any]] = {}
        # An S3 backend's multipart ETag ("<md5>-<parts>") instead of the file backend's
        # md5, for objects stored from now on: it still names the content.
        self.multipart_etags = False
        # The file backend's ETag algorithm (STORAGE_FILE_ETAG_ALGORITHM, see etag_for):
        # "md5" (Storage's default) or "mtime".
        self.etag_algorithm = "md5"
        # Connections open now: a stopped server drops them (see stop).
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        # Idle database connections (see _conn); closed at stop.
        self._pool: list[Any] = []
        self._pool_lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> SupabaseServer:
        self._thread.start()
        return self

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def stop(self) -> None:
        """Stop as the real server's process does: no new connection, and the open ones
        (a client's kept-alive connections) dropped. `shutdown()` alone only stops the
        accept loop: each connection's thread would go on answering on it, so a client
        with a kept-alive connection would still be served by a "stopped" Supabase."""
        self.shutdown()
        self.server_close()
        with self._open_lock:
            still = list(self._open)
        for conn in still:
            with contextlib.suppress(OSError):  # that one closed meanwhile
                conn.shutdown(socket.SHUT_RDWR)  # its handler's read ends; the client sees EOF
        with self._pool_lock:
            self._stopped = True
            idle, self._pool = self._pool, []
        for db in idle:
            db.close()
        if self._own_dir:
            shutil.rmtree(self.storage_dir, ignore_errors=True)

    def run_sql(self, role: str, query: Any, params: Any = None,
                claims: dict[str, Any] | None = None) -> list[tuple]:
        """One transaction as PostgREST runs it: role, claims, schema."""
        return self.run(role, claims, lambda conn: _rows(conn.execute(query, params)))

    def run(self, role: str, claims: dict[str, Any] | None, work: Any) -> Any:
        with self._conn() as conn, conn.transaction():
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(
                sql.Identifier(self.roles.get(role, role))))
            conn.execute("SELECT set_config('request.jwt.claims', %s, true)",
                         [json.dumps(claims if claims is not None else {"role": role})])
            conn.execute(sql.SQL("SET LOCAL search_path = {}").format(
                sql.Identifier(self.schema)))
            return work(conn)

    @contextlib.contextmanager
    def _conn(self) -> Iterator[Any]:
        """A database connection from the server's pool, as PostgREST and Storage keep
        one (a new connection per request cost ~10 ms: a TUS upload authorizes every
        PATCH). Everything a request sets is transaction-local (SET LOCAL, set_config
        local), so the next request on the connection starts clean; a connection left
        in a transaction or broken is closed, not pooled."""
        with self._pool_lock:
            conn = self._pool.pop() if self._pool else None
        if conn is None:
            conn = psycopg.connect(self.dsn, autocommit=True)
        try:
            yield conn
        finally:
            idle = (not conn.closed and conn.info.transaction_status
                    == psycopg.pq.TransactionStatus.IDLE)
            with self._pool_lock:
                keep = idle and not self._stopped and len(self._pool) < _POOL_MAX
                if keep:
                    self._pool.append(conn)
            if not keep:
                conn.close()

    def object_path(self, bucket: str, name: str) -> Path:
        return self.storage_dir / bucket / name

    def bucket(self, bucket: str) -> tuple[str, int | None] | None:
        """(id, file_size_limit) of a bucket, read as Storage reads it (`asSuperUser()`
        in src/http/routes/tus/lifecycle.ts onCreate), or None when there is none."""
        with self._conn() as conn:
            row = conn.execute(sql.SQL("SELECT id, file_size_limit FROM {}.buckets WHERE id = %s")
                               .format(sql.Identifier(self.schema)), [bucket]).fetchone()
        return (row[0], row[1]) if row else None

    def bucket_exists(self, bucket: str) -> bool:
        return self.bucket(bucket) is not None

    def etag_of(self, md5_hex: str, size: int) -> str:
        """The ETag an object gets: the quoted md5 (file backend, src/storage/backend/
        file.ts), or an S3 multipart ETag of 5 MiB parts (`multipart_etags`)."""
        if self.multipart_etags:
            return f'"{md5_hex}-{max(1, -(-size // (5 << 20)))}"'
        return f'"{md5_hex}"'

    def etag_for(self, path: Path, md5: Any = None) -> str:
        """The ETag of the object stored at `path`: etag_of its md5 (`md5`, the bytes'
        hash so far, or the file read for it), or with `etag_algorithm = "mtime"` the
        file backend's other ETag, `"<mtimeMs hex>-<size hex>"` (src/storage/backend/
        file.ts etag(): STORAGE_FILE_ETAG_ALGORITHM=mtime; whole milliseconds here, where
        Node prints the fraction too). That one hashes nothing: a Storage of that kind
        costs its machine no hashing, and clients see a validator made of metadata."""
        st = path.stat()
        if self.etag_algorithm == "mtime":
            return f'"{st.st_mtime_ns // 1_000_000:x}-{st.st_size:x}"'
        if md5 is None:
            md5 = hashlib.md5()  # noqa: S324 - Storage's ETag
            with path.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    md5.update(chunk)
        return self.etag_of(md5.hexdigest(), st.st_size)

    # -- Storage as the owner (fixtures) ---------------------------------------------------

    def put_object(self, bucket: str, name: str, data: bytes, *,  # noqa: PLR0913
                   content_type: str | None = None, cache_control: str | None = None) -> str:
        """Store (or replace) an object as the service role would; returns its ETag."""
        dest = self.object_path(bucket, name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".put-tmp")
        tmp.write_bytes(data)
        os.replace(tmp, dest)  # a new file, as Storage writes a new version
        etag = self.etag_for(dest, hashlib.md5(data))  # noqa: S324
        meta = json.dumps({"mimetype": content_type, "cacheControl": cache_control})
        self.run_sql("service_role", sql.SQL(
            "INSERT INTO objects (bucket_id, name, etag, size, metadata) VALUES (%s, %s, %s,"
            " %s, %s) ON CONFLICT (bucket_id, name) DO UPDATE SET etag = excluded.etag,"
            " size = excluded.size, metadata = excluded.metadata, created_at = now()"),
            [bucket, name, etag, len(data), meta])
        return etag


def _rows(cur: Any) -> list[tuple]:
    return cur.fetchall() if cur.description else []


def _safe_name(name: str) -> bool:
    parts = name.split("/")
    return bool(name) and all(p not in ("", ".", "..") for p in parts) and "\0" not in name


class _Refused(Exception):
    """A request refused before it reached the database: status, headers and JSON body."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


def storage_error(status: int, code: str, error: str, message: str) -> _Refused:
    """Storage's error: the HTTP status is 400 (500 stays 500); the body says the real one."""
    return _Refused(500 if status == 500 else 400,
                    {"statusCode": str(status), "code": code, "error": error, "message": message})


def _storage_db_error(e: psycopg.Error) -> _Refused:
    """supabase/storage's DBError.fromDBError for the codes an upload or read can hit."""
    state = getattr(e, "sqlstate", None)
    msg = str(e).splitlines()[0]
    if state == "42501":
        return storage_error(403, "AccessDenied", "Unauthorized",
                             "new row violates row-level security policy"
                             if "row-level security" in msg else msg)
    if state == "23505":
        return storage_error(409, "ResourceAlreadyExists", "Duplicate",
                             "The resource already exists")
    return storage_error(500, "DatabaseError", "DatabaseError", msg)


def _postgrest_status(state: str | None) -> int:
    """PostgREST's mapSQLtoHTTP (the cases a test meets)."""
    s = state or ""
    table = {"23503": 409, "23505": 409, "25006": 405, "42501": 403, "42883": 404,
             "42P01": 404, "P0001": 400, "42P17": 500}
    if s in table:
        return table[s]
    if s[:2] in ("08", "53"):
        return 503
    if s[:2] in ("25", "2D", "38", "39", "3B", "40", "54", "55", "57", "58", "XX", "P0"):
        return 500
    return 400


def _postgrest_error(e: psycopg.Error) -> _Refused:
    diag = getattr(e, "diag", None)
    return _Refused(_postgrest_status(getattr(e, "sqlstate", None)), {
        "code": getattr(e, "sqlstate", None),
        "details": getattr(diag, "message_detail", None),
        "hint": getattr(diag, "message_hint", None),
        "message": getattr(diag, "message_primary", None) or str(e).splitlines()[0]})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: SupabaseServer
    _read = 0
    _bufs: tuple[bytearray, bytearray] | None = None  # see _body_into
    _hashing: ThreadPoolExecutor | None = None

    def log_message(self, *args: Any) -> None:
        pass

    # -- plumbing ---------------------------------------------------------------------------

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        text = isinstance(body, str)
        data = (b"" if body is None else b"null" if body is _JSON_NULL else body.encode()
                if text else json.dumps(body, default=str).encode())
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "text/plain" if text else "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _log(self) -> None:
        self.server.requests.append({"method": self.command, "path": self.path,
                                     "headers": {k.lower(): v for k, v in self.headers.items()},
                                     "at": time.time()})

    def _auth(self, storage: bool) -> tuple[str, dict[str, Any]]:
        """(role, claims) of the request's key, as the gateway + PostgREST/Storage see it."""
        apikey = self.headers.get("apikey") or ""
        auth = self.headers.get("Authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
        if not apikey or (apikey not in self.server.keys and not self._valid_jwt(apikey)):
            raise _Refused(401, {"message": "Invalid API key"})
        token = token or apikey
        role = self.server.keys.get(token)
        if role is not None:
            return role, {"role": role}
        try:
            if self.server.jwt_secret is None:
                raise jwt.InvalidSignatureError("signature verification failed")
            claims = jwt.decode(token, self.server.jwt_secret, algorithms=["HS256"],
                                options={"verify_aud": False})
        except jwt.ExpiredSignatureError:
            raise self._jwt_error(storage, "PGRST303", "JWT expired",
                                  '"exp" claim timestamp check failed') from None
        except jwt.DecodeError as e:
            raise self._jwt_error(storage, "PGRST301", "JWT cryptographic operation failed",
                                  str(e) or "signature verification failed") from None
        except jwt.InvalidTokenError as e:
            raise self._jwt_error(storage, "PGRST303", "Parsing claims failed", str(e)) from None
        return str(claims.get("role") or "anon"), claims

    def _valid_jwt(self, token: str) -> bool:
        if self.server.jwt_secret is None:
            return False
        try:
            jwt.decode(token, self.server.jwt_secret, algorithms=["HS256"],
                       options={"verify_aud": False, "verify_exp": False})
        except jwt.InvalidTokenError:
            return False
        return True

    @staticmethod
    def _jwt_error(storage: bool, code: str, message: str, storage_message: str) -> _Refused:
        if storage:
            return storage_error(403, "AccessDenied", "Unauthorized", storage_message)
        return _Refused(401, {"code": code, "details": None, "hint": None, "message": message},
                        {"WWW-Authenticate": f'Bearer error="invalid_token", '
                                             f'error_description="{message}"'})

    def _dispatch(self, route: Any) -> None:
        self._log()
        self._read = 0  # body bytes read so far (one handler serves a keep-alive connection)
        try:
            route()
        except _Refused as r:
            self._drain()
            self._send(r.status, r.body, r.headers)

    def _drain(self) -> None:
        """Read an unread request body so the connection stays usable after an error."""
        left = int(self.headers.get("Content-Length") or 0) - self._read
        while left > 0:
            got = self.rfile.read(min(left, _CHUNK))
            if not got:
                break
            left -= len(got)
        self._read = int(self.headers.get("Content-Length") or 0)

    # -- routes -----------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch(self._get)

    def do_POST(self) -> None:
        self._dispatch(self._post)

    def do_PUT(self) -> None:
        self._dispatch(self._put)

    def do_HEAD(self) -> None:
        self._dispatch(self._head)

    def do_PATCH(self) -> None:
        self._dispatch(self._patch)

    def do_OPTIONS(self) -> None:
        self._dispatch(self._options)

    def do_DELETE(self) -> None:
        self._dispatch(self._tus_delete)

    def _get(self) -> None:
        parts = urlsplit(self.path)
        if parts.path.startswith("/rest/v1/"):
            role, claims = self._auth(storage=False)
            return self._select(role, claims, unquote(parts.path[len("/rest/v1/"):]),
                                parse_qsl(parts.query, keep_blank_values=True))
        prefix = "/storage/v1/object/authenticated/"
        if parts.path.startswith(prefix):
            role, claims = self._auth(storage=True)
            bucket, _, name = unquote(parts.path[len(prefix):]).partition("/")
            return self._object(role, claims, bucket, name)
        raise _Refused(404, {"message": "no such route"})

    def _post(self) -> None:
        path = urlsplit(self.path).path
        if path.startswith("/rest/v1/rpc/"):
            role, claims = self._auth(storage=False)
            return self._rpc(role, claims, path[len("/rest/v1/rpc/"):])
        if path.startswith("/storage/v1/object/"):
            return self._upload(path, upsert=self.headers.get("x-upsert") == "true")
        if path.rstrip("/") == TUS_PATH:
            return self._tus_create()
        raise _Refused(404, {"message": "no such route"})

    def _put(self) -> None:
        path = urlsplit(self.path).path
        if path.startswith("/storage/v1/object/"):
            return self._upload(path, upsert=True, update=True)
        raise _Refused(404, {"message": "no such route"})

    # -- PostgREST ----------------------------------------------------------------------------

    def _rpc(self, role: str, claims: dict[str, Any], fn: str) -> None:
        if not _IDENT.match(fn):
            raise _Refused(404, {"code": "PGRST202", "details": None, "hint": None,
                                 "message": f"Could not find the function {fn}"})
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._read = len(body)
        try:
            args = json.loads(body or b"{}")
        except ValueError:
            raise _Refused(400, {"code": "PGRST102", "details": None, "hint": None,
                                 "message": "Empty or invalid json"}) from None
        names = list(args)
        q = sql.SQL("SELECT {}({})").format(
            sql.Identifier(fn),
            sql.SQL(", ").join(sql.SQL("{} => %s").format(sql.Identifier(n)) for n in names))
        params = [json.dumps(args[n]) if isinstance(args[n], (list, dict)) else args[n]
                  for n in names]

        def work(conn: Any) -> tuple[bool, Any]:
            cur = conn.execute(q, params)
            void = cur.description[0].type_code == _VOID_OID
            return void, cur.fetchone()[0]

        try:
            void, value = self.server.run(role, claims, work)
        except psycopg.Error as e:
            raise _postgrest_error(e) from None
        if void:
            return self._send(204, None)
        if value is None:  # a NULL result is the JSON `null`, not an empty body
            return self._send(200, _JSON_NULL)  # (PostgREST #1762, fixed by #1795)
        self._send(200, value)

    def _select(self, role: str, claims: dict[str, Any], table: str,
                query: list[tuple[str, str]]) -> None:
        cols: Any = sql.SQL("*")
        where: list[Any] = []
        params: list[Any] = []
        order: list[Any] = []
        limit = None
        for k, v in query:
            if k == "select":
                if v != "*":
                    cols = sql.SQL(", ").join(sql.Identifier(c) for c in v.split(","))
            elif k == "limit":
                limit = int(v)
            elif k == "order":
                for term in v.split(","):
                    col, *mods = term.split(".")
                    bad = [m for m in mods if m not in ("asc", "desc", "nullsfirst", "nullslast")]
                    if bad or not col:
                        raise _Refused(400, {"code": "PGRST100", "details": None, "hint": None,
                                             "message": f'"failed to parse order ({v})"'})
                    words = " ".join({"asc": "ASC", "desc": "DESC", "nullsfirst": "NULLS FIRST",
                                      "nullslast": "NULLS LAST"}[m] for m in mods)
                    order.append(sql.SQL("{} {}").format(sql.Identifier(col), sql.SQL(words)))
            else:
                where.append(self._filter(k, v, params))
        q = sql.SQL("SELECT row_to_json(t) FROM (SELECT {} FROM {}{}{}{}) t").format(
            cols, sql.Identifier(table),
            sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL(""),
            sql.SQL(" ORDER BY ") + sql.SQL(", ").join(order) if order else sql.SQL(""),
            sql.SQL(f" LIMIT {limit}") if limit is not None else sql.SQL(""))
        try:
            rows = self.server.run_sql(role, q, params, claims)
        except psycopg.Error as e:
            raise _postgrest_error(e) from None
        self._send(200, [r[0] for r in rows])

    @staticmethod
    def _filter(col: str, value: str, params: list[Any]) -> Any:
        m = _FILTER_RE.match(value)
        if not m:
            raise _Refused(400, {"code": "PGRST100", "details": None, "hint": None,
                                 "message": f'"failed to parse filter ({value})"'})
        neg, op, arg = m.groups()
        ident = sql.Identifier(col)
        if op == "in":
            items = [x.strip().strip('"') for x in arg.strip("()").split(",") if x.strip()]
            params.append(items)
            expr = sql.SQL("{}::text = ANY(%s)").format(ident)
        elif op == "is":
            word = {"null": "NULL", "true": "TRUE", "false": "FALSE"}.get(arg.lower())
            if word is None:
                raise _Refused(400, {"code": "PGRST100", "details": None, "hint": None,
                                     "message": f'"failed to parse filter ({value})"'})
            expr = sql.SQL("{} IS {}").format(ident, sql.SQL(word))
        else:
            params.append(arg)
            expr = sql.SQL("{} {} %s").format(ident, sql.SQL(_OPS[op]))
        return sql.SQL("NOT ({})").format(expr) if neg else expr

    # -- Storage: download --------------------------------------------------------------------

    def _object(self, role: str, claims: dict[str, Any], bucket: str,  # noqa: C901
                name: str) -> None:
        """GET (and HEAD) /object/authenticated/<bucket>/<name>, as supabase/storage
        answers it (file backend):

        - `If-Range` is ignored: nothing in supabase/storage reads it; a Range request is
          always a 206 from the object as it is now, with its current ETag
          (src/storage/backend/file.ts getObject: `if (headers?.range)`, no If-Range).
        - A range that starts at or past the end is a 416 with Storage's JSON error body
          and no Content-Range (src/storage/range.ts `invalidRangeHeaderError`: status
          416 through `StorageBackendError.withStatusCode`; src/http/error-handler.ts
          sends it without headers of its own).
        - Headers: Content-Type as stored at upload (`application/octet-stream` when none),
          ETag the quoted md5 of the bytes (or an S3 multipart ETag `"<md5>-<parts>"`
          when `multipart_etags`), Last-Modified, Cache-Control as stored (`no-cache` when
          none), Accept-Ranges (src/storage/renderer/renderer.ts setHeaders;
          src/storage/backend/file.ts `cacheControl || 'no-cache'`).
        - A missing object is 400 with `{"statusCode":"404","code":"NoSuchKey"}`; a
          missing bucket `{"statusCode":"404","code":"NoSuchBucket","error":"Bucket not
          found"}` (src/internal/errors/codes.ts NoSuchKey, NoSuchBucket; the 400 from
          StorageBackendError's userStatusCode in src/internal/errors/storage-error.ts).
        """
        try:
            rows = self.server.run_sql(
                role, "SELECT etag, size, metadata, created_at FROM objects"
                " WHERE bucket_id = %s AND name = %s", [bucket, name], claims)
        except psycopg.Error as e:
            raise _storage_db_error(e) from None
        path = self.server.object_path(bucket, name)
        if not rows and not self.server.bucket_exists(bucket):
            raise storage_error(404, "NoSuchBucket", "Bucket not found", "Bucket not found")
        if not rows or not _safe_name(name) or not path.is_file():
            raise storage_error(404, "NoSuchKey", "not_found", "Object not found")
        etag, _, metadata, created = rows[0]
        metadata = metadata or {}
        size = path.stat().st_size
        faults = self.server.storage_faults.get(f"{bucket}/{name}")
        fault = faults.popleft() if faults else {}
        start, end, status = 0, size - 1, 200
        m = re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("Range") or "")
        if m:  # If-Range is not looked at (see above)
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            if start >= size:
                raise _Refused(416, {"statusCode": "416", "code": "InvalidRange",
                                     "error": "invalid_range",
                                     "message": "invalid range provided"})
            status = 206
        length = end - start + 1
        self.send_response(status)
        self.send_header("Content-Type", metadata.get("mimetype") or "application/octet-stream")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", email.utils.formatdate(
            created.timestamp(), usegmt=True))
        self.send_header("Cache-Control", metadata.get("cacheControl") or "no-cache")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(length))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        cut = fault.get("cut_after")
        with path.open("rb") as f:
            # The body straight from the file (sendfile: no copy through this process,
            # and no lock held while the kernel sends), from the range's start.
            self.connection.sendfile(f, start, length if cut is None else min(cut, length))
        if cut is not None:
            self._cut()

    def _cut(self) -> None:
        self.wfile.flush()
        time.sleep(0.05)
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    # -- Storage: upload ----------------------------------------------------------------------

    def _upload(self, path: str, *, upsert: bool, update: bool = False) -> None:
        role, claims = self._auth(storage=True)
        bucket, _, name = unquote(path[len("/storage/v1/object/"):]).partition("/")
        if not bucket or not _safe_name(name):
            raise storage_error(400, "InvalidKey", "InvalidKey", f"Invalid key: {name}")
        length = self.headers.get("Content-Length")
        if length is None:
            raise storage_error(400, "MissingContentLength", "MissingContentLength",
                                "You must provide the Content-Length HTTP header.")
        tmp = self._spool(int(length))
        try:
            self._commit(role, claims, bucket, name, tmp, upsert=upsert, update=update)
        finally:
            tmp.unlink(missing_ok=True)
        self._send(200, {"Id": str(uuid.uuid4()), "Key": f"{bucket}/{name}"})

    def _spool(self, length: int) -> Path:
        """The request body (raw, or the `file` part of multipart/form-data) in a temp file."""
        fd, tmpname = tempfile.mkstemp(dir=self.server.storage_dir / ".tus", suffix=".up")
        tmp = Path(tmpname)
        ctype = self.headers.get("Content-Type", "")
        try:
            with os.fdopen(fd, "wb") as out:
                if ctype.startswith("multipart/form-data"):
                    self._multipart(ctype, length, out)
                elif self._body_into(fd, length) < length:
                    raise ConnectionError("client went away mid-upload")
            self._read = length
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def _multipart(self, ctype: str, length: int, out: Any) -> None:
        from python_multipart.multipart import MultipartParser, parse_options_header

        _, opts = parse_options_header(ctype)
        state: dict[str, Any] = {"name": None, "header": b"", "headers": {}}

        def on_header_field(data: bytes, start: int, end: int) -> None:
            state["header"] += data[start:end]

        def on_header_value(data: bytes, start: int, end: int) -> None:
            state["headers"][state["header"].lower()] = (
                state["headers"].get(state["header"].lower(), b"") + data[start:end])

        def on_header_end() -> None:
            state["header"] = b""

        def on_headers_finished() -> None:
            disp = state["headers"].get(b"content-disposition", b"")
            state["name"] = dict(parse_options_header(disp)[1]).get(b"name")
            state["headers"] = {}

        def on_part_data(data: bytes, start: int, end: int) -> None:
            if state["name"] == b"file":
                out.write(data[start:end])

        parser = MultipartParser(opts[b"boundary"], callbacks={
            "on_header_field": on_header_field, "on_header_value": on_header_value,
            "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data})
        left = length
        while left > 0:
            chunk = self.rfile.read(min(left, _CHUNK))
            if not chunk:
                raise ConnectionError("client went away mid-upload")
            parser.write(chunk)
            left -= len(chunk)
        parser.finalize()

    def _commit(self, role: str, claims: dict[str, Any], bucket: str, name: str,  # noqa: PLR0913
                tmp: Path, *, upsert: bool, update: bool,
                metadata: dict[str, Any] | None = None, md5: Any = None) -> None:
        """Insert (or update) the object's row as the caller, then move the bytes in.
        `md5`: the bytes' md5 so far (a TUS upload's, hashed as its PATCHes came),
        else the file is read for it (see SupabaseServer.etag_for)."""
        size = tmp.stat().st_size
        etag = self.server.etag_for(tmp, md5)
        meta = json.dumps(metadata or {})
        dest = self.server.object_path(bucket, name)

        def work(conn: Any) -> None:
            if update:
                cur = conn.execute("UPDATE objects SET etag = %s, size = %s, metadata = %s,"
                                   " created_at = now() WHERE bucket_id = %s AND name = %s",
                                   [etag, size, meta, bucket, name])
                if cur.rowcount == 0:
                    raise storage_error(404, "NoSuchKey", "not_found", "Object not found")
            elif upsert:
                conn.execute("INSERT INTO objects (bucket_id, name, etag, size, metadata)"
                             " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (bucket_id, name) DO"
                             " UPDATE SET etag = excluded.etag, size = excluded.size,"
                             " metadata = excluded.metadata, created_at = now()",
                             [bucket, name, etag, size, meta])
            else:
                conn.execute("INSERT INTO objects (bucket_id, name, etag, size, metadata)"
                             " VALUES (%s, %s, %s, %s, %s)", [bucket, name, etag, size, meta])
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, dest)

        try:
            self.server.run(role, claims, work)
        except psycopg.Error as e:
            raise _storage_db_error(e) from None

    def _can_insert(self, role: str, claims: dict[str, Any], bucket: str, name: str,
                    upsert: bool) -> None:
        """Storage's canUpload at TUS creation: try the row insert, then roll it back."""

        class _Rollback(Exception):
            pass

        def work(conn: Any) -> None:
            q = ("INSERT INTO objects (bucket_id, name, etag, size) VALUES (%s, %s, '', 0)"
                 + (" ON CONFLICT (bucket_id, name) DO UPDATE SET size = 0" if upsert else ""))
            conn.execute(q, [bucket, name])
            raise _Rollback

        try:
            self.server.run(role, claims, work)
        except _Rollback:
            return
        except psycopg.Error as e:
            raise _storage_db_error(e) from None

    # -- Storage: TUS resumable uploads ------------------------------------------------------

    def _tus_headers(self) -> dict[str, str]:
        return {"Tus-Resumable": "1.0.0", "Cache-Control": "no-store"}

    def _tus_refuse(self, r: _Refused) -> _Refused:
        """The TUS routes answer errors in text with the real status (lifecycle.ts)."""
        if isinstance(r.body, dict) and "statusCode" in r.body:
            return _TusRefused(int(r.body["statusCode"]), r.body["message"])
        return r

    def _tus_paths(self, upload_id: str) -> tuple[Path, Path]:
        d = self.server.storage_dir / ".tus"
        key = hashlib.sha256(upload_id.encode()).hexdigest()
        return d / f"{key}.json", d / f"{key}.bin"

    def _tus_load(self) -> tuple[str, dict[str, Any], Path, Path]:
        path = urlsplit(self.path).path
        if not path.startswith(TUS_PATH + "/"):
            raise _Refused(404, {"message": "no such route"})
        upload_id = path[len(TUS_PATH) + 1:]
        meta_path, data_path = self._tus_paths(upload_id)
        if not meta_path.is_file():
            raise _TusRefused(404, "Upload not found")
        return upload_id, json.loads(meta_path.read_text()), meta_path, data_path

    def _tus_create(self) -> None:  # noqa: C901 - the route as Storage runs it
        """POST /upload/resumable (src/http/routes/tus/index.ts, lifecycle.ts):
        - the bucket must exist (`findBucket` in onCreate and maxSize: 404 `Bucket not
          found`), and Upload-Length may not pass the bucket's `file_size_limit`
          (@tus/server's 413 `Maximum size exceeded`);
        - authorization (Uploader.canUpload, src/storage/uploader.ts) with `x-upsert` of
          this request (index.ts: `isUpsert: req.headers['x-upsert'] === 'true'`);
        - a 0-byte upload is complete at creation: @tus/server's POST handler finishes
          an upload whose length is 0 at once (onUploadFinish), so the object exists
          before any PATCH;
        - Location is built from X-Forwarded-Proto/Host/Port and X-Forwarded-Prefix
          (lifecycle.ts generateUrl; `respectForwardedHeaders: true` in index.ts; the
          prefix only with REQUEST_ALLOW_X_FORWARDED_PATH, on here).
        Errors are text with the real status (lifecycle.ts getTusError)."""
        try:
            role, claims = self._auth(storage=True)
            if self.headers.get("Tus-Resumable") != "1.0.0":
                raise _TusRefused(412, "Unsupported version")
            length = self.headers.get("Upload-Length")
            if length is None or not length.isdigit():
                raise _TusRefused(400, "Upload-Length or Upload-Defer-Length header required")
            meta: dict[str, str] = {}
            for item in (self.headers.get("Upload-Metadata") or "").split(","):
                if item.strip():
                    k, _, v = item.strip().partition(" ")
                    try:
                        meta[k] = base64.b64decode(v).decode() if v else ""
                    except (binascii.Error, UnicodeDecodeError):
                        raise _TusRefused(400, "Upload-Metadata is invalid") from None
            bucket, name = meta.get("bucketName", ""), meta.get("objectName", "")
            if not bucket or not name:
                raise _TusRefused(400, "Metadata header is required")
            if not _safe_name(name):
                raise _TusRefused(400, f"Invalid key: {name}")
            found = self.server.bucket(bucket)
            if found is None:
                raise _TusRefused(404, "Bucket not found")
            if found[1] is not None and int(length) > found[1]:
                raise _TusRefused(413, "Maximum size exceeded")
            upsert = self.headers.get("x-upsert") == "true"
            self._can_insert(role, claims, bucket, name, upsert)
        except _Refused as r:
            raise self._tus_refuse(r) from None
        cache = meta.get("cacheControl") or ""
        stored = {"mimetype": meta.get("contentType"),
                  "cacheControl": f"max-age={cache}" if re.fullmatch(r"-?\d+", cache)
                  else "no-cache"}  # lifecycle.ts onCreate
        upload_id = base64.urlsafe_b64encode(
            f"{bucket}/{name}/{uuid.uuid4()}".encode()).decode().rstrip("=")
        meta_path, data_path = self._tus_paths(upload_id)
        data_path.write_bytes(b"")
        meta_path.write_text(json.dumps({
            "bucket": bucket, "name": name, "length": int(length), "metadata": stored}))
        self._drain()
        if int(length) == 0:
            try:
                self._commit(role, claims, bucket, name, data_path, upsert=upsert,
                             update=False, metadata=stored)
            except _Refused as r:
                raise self._tus_refuse(r) from None
            _tus_done(meta_path)
        self._send(201, None, {**self._tus_headers(), "Location": self._location(upload_id)})

    def _location(self, upload_id: str) -> str:
        """lifecycle.ts generateUrl: proto and host from X-Forwarded-Proto/Host (and a
        port from X-Forwarded-Port other than 80/443), the path after X-Forwarded-Prefix."""
        proto = self.headers.get("X-Forwarded-Proto") or "http"
        host = self.headers.get("X-Forwarded-Host") or self.headers.get("Host") or (
            f"127.0.0.1:{self.server.server_address[1]}")
        port = self.headers.get("X-Forwarded-Port")
        if self.headers.get("X-Forwarded-Host") and port and port not in ("80", "443"):
            host = re.sub(r":\d+$", "", host) + f":{port}"
        prefix = (self.headers.get("X-Forwarded-Prefix") or "").rstrip("/")
        # Storage's own path is /upload/resumable; the stand-in serves it under the
        # gateway's /storage/v1 when no prefix says where the gateway put it.
        path = f"{prefix}/upload/resumable" if prefix else TUS_PATH
        return f"{proto}://{host}{path}/{upload_id}"

    def _head(self) -> None:
        path = urlsplit(self.path).path
        prefix = "/storage/v1/object/authenticated/"
        if path.startswith(prefix):  # src/http/routes/object/getObjectInfo.ts: HEAD route
            role, claims = self._auth(storage=True)
            bucket, _, name = unquote(path[len(prefix):]).partition("/")
            return self._object(role, claims, bucket, name)
        if not path.startswith(TUS_PATH + "/"):
            raise _Refused(404, {"message": "no such route"})
        # lifecycle.ts onIncomingRequest: "Options and HEAD request don't need to be
        # authorized" (the gateway still wants an apikey).
        _, meta, _, data_path = self._tus_load()
        self._send(200, None, {**self._tus_headers(),
                               "Upload-Offset": str(_tus_offset(meta, data_path)),
                               "Upload-Length": str(meta["length"])})

    def _patch(self) -> None:
        """PATCH <Location>: every PATCH is authorized again, with its own `x-upsert`
        (lifecycle.ts onIncomingRequest -> Uploader.canUpload, before the body is read):
        once the object exists (another upload of it finished, or it had 0 bytes) a PATCH
        without upsert is 409 `The resource already exists`. A refusal is answered at
        once, without reading the body, and the connection is closed (Node ends the
        response while the client is still sending)."""
        upload_id, meta, meta_path, data_path = self._tus_load()
        try:
            role, claims = self._auth(storage=True)
            self._can_insert(role, claims, meta["bucket"], meta["name"],
                             self.headers.get("x-upsert") == "true")
        except _Refused as r:
            refused = self._tus_refuse(r)
            self.close_connection = True
            self._send(refused.status, refused.body, {**refused.headers, "Connection": "close"})
            return
        if self.headers.get("Content-Type") != "application/offset+octet-stream":
            raise _TusRefused(415, "Unsupported Media Type")
        offset = _tus_offset(meta, data_path)
        claimed = self.headers.get("Upload-Offset")
        if claimed is None or not claimed.isdigit() or int(claimed) != offset:
            raise _TusRefused(409, "Upload-Offset conflict")
        length = int(self.headers.get("Content-Length") or 0)
        if offset + length > meta["length"]:
            raise _TusRefused(413, "Maximum size exceeded")
        faults = self.server.upload_faults.get(f"{meta['bucket']}/{meta['name']}")
        fault = faults.popleft() if faults else {}
        cut = fault.get("cut_after")
        time.sleep(fault.get("stall_s", 0))  # a slow Storage: the chunk waits
        md5 = self._tus_take(upload_id, data_path, offset,
                             length if cut is None else min(cut, length))
        offset = data_path.stat().st_size
        if cut is not None:
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self._read = length
        if offset == meta["length"]:
            self.server.tus_md5.pop(upload_id, None)
            try:
                self._commit(role, claims, meta["bucket"], meta["name"], data_path,
                             upsert=self.headers.get("x-upsert") == "true", update=False,
                             metadata=meta.get("metadata"), md5=md5)
            except _Refused as r:
                raise self._tus_refuse(r) from None
            _tus_done(meta_path)
        self._send(204, None, {**self._tus_headers(), "Upload-Offset": str(offset)})

    def _tus_take(self, upload_id: str, data_path: Path, offset: int, left: int) -> Any:
        """Append up to `left` body bytes to the upload's data; returns the md5 of the
        data so far, or None when it is not known (then _commit reads the file).

        The ETag's md5 is hashed as the bytes come (the file backend hashes the whole
        file when the upload ends, src/storage/backend/file.ts etag(): the same value,
        without reading the file again); it is lost with the process."""
        hashed = self.server.tus_md5.pop(upload_id, None)
        md5 = hashed[1] if hashed is not None and hashed[0] == offset else None
        if offset == 0 and self.server.etag_algorithm == "md5":
            md5 = hashlib.md5()  # noqa: S324 - Storage's ETag
        fd = os.open(data_path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            self._body_into(fd, left, md5)
            end = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if md5 is not None:
            self.server.tus_md5[upload_id] = (end, md5)
        return md5

    def _body_into(self, fd: int, left: int, md5: Any = None) -> int:
        """Up to `left` bytes of the request body appended to `fd` (and hashed into
        `md5`), through two buffers per connection: while one piece is written here,
        the one before it is hashed on the connection's hashing thread, and readinto,
        os.write and md5 all let go of the GIL, so an upload's hash costs it no time
        of its own and several uploads and downloads of this one process run side by
        side. Returns the bytes taken (fewer when the client went away)."""
        if self._bufs is None:
            self._bufs = (bytearray(_BODY_BUF), bytearray(_BODY_BUF))
        if md5 is not None and self._hashing is None:
            self._hashing = ThreadPoolExecutor(1, thread_name_prefix="supa-md5")
        taken, turn = 0, 0
        hashing: Future[None] | None = None  # of the other buffer's piece
        try:
            while left > 0:
                view = memoryview(self._bufs[turn])
                got = self.rfile.readinto(view[:min(left, _BODY_BUF)])
                if not got:
                    break
                if hashing is not None:
                    hashing.result()
                if md5 is not None and self._hashing is not None:
                    hashing = self._hashing.submit(md5.update, view[:got])
                piece = view[:got]
                while piece:
                    piece = piece[os.write(fd, piece):]
                left -= got
                taken += got
                turn ^= 1
        finally:
            if hashing is not None:
                hashing.result()
        return taken

    def finish(self) -> None:
        super().finish()
        if self._hashing is not None:
            self._hashing.shutdown()
            self._hashing = None

    def _tus_delete(self) -> None:
        """DELETE <Location> (TUS termination; src/http/routes/tus/index.ts registers
        DELETE): authorized like a PATCH (lifecycle.ts onIncomingRequest -> canUpload:
        409 once the object exists), then @tus/server's DeleteHandler: a finished upload
        is not terminated (`disableTerminationForFinishedUploads: true` in index.ts ->
        400 `Cannot terminate an already completed upload`), an unfinished one is
        removed (204); the upload is unknown afterwards (404)."""
        upload_id, meta, meta_path, data_path = self._tus_load()
        try:
            role, claims = self._auth(storage=True)
            self._can_insert(role, claims, meta["bucket"], meta["name"],
                             self.headers.get("x-upsert") == "true")
        except _Refused as r:
            raise self._tus_refuse(r) from None
        if meta.get("done"):
            raise _TusRefused(400, "Cannot terminate an already completed upload")
        self.server.tus_md5.pop(upload_id, None)
        data_path.unlink(missing_ok=True)
        meta_path.unlink(missing_ok=True)
        self._send(204, None, self._tus_headers())

    def _options(self) -> None:
        if not urlsplit(self.path).path.startswith(TUS_PATH):
            raise _Refused(404, {"message": "no such route"})
        self._send(204, None, {"Tus-Resumable": "1.0.0", "Tus-Version": "1.0.0",
                               "Tus-Extension": "creation,creation-with-upload,termination"})


def _tus_done(meta_path: Path) -> None:
    """A finished upload keeps its record (@tus/server's datastore keeps the upload's
    info): a later HEAD says the full length, a later PATCH is authorized again (and
    refused: the object exists)."""
    meta = json.loads(meta_path.read_text())
    meta["done"] = True
    meta_path.write_text(json.dumps(meta))


def _tus_offset(meta: dict[str, Any], data_path: Path) -> int:
    return int(meta["length"]) if meta.get("done") else data_path.stat().st_size


class _TusRefused(_Refused):
    """@tus/server's answer to a refusal: the status, the message as text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message, {"Tus-Resumable": "1.0.0"})


def tus_metadata(**fields: str) -> str:
    """An Upload-Metadata header value (TUS: key base64(value), comma separated)."""
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in fields.items())


