"""The client of the daemon's local API: HTTP/1.1 + JSON over its Unix socket.

What the Python API (and through it the CLI and the MCP server) uses when a daemon
runs: each method is one route under /v1 and returns the JSON shape that route
answers (shapes.py, exactly what the matching `--json` prints). An error answer
(`{"error", "exit_code", "file_id"}`) becomes the PrefetchError the same call raises
in-process, with the same message and exit code. httpx speaks HTTP over the socket
(`HTTPTransport(uds=...)`); the host in the URL is ignored.
"""

from __future__ import annotations

import errno
import json
import socket
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, cast

import httpx

from .errors import BadRequest, NotReadyError, PrefetchError
from .records import Removal, WantSource
from .shapes import GcResult, GetRow, LsRow, StatsRow, Status, VerifyRow

API_VERSION = 1
BASE_URL = "http://prefetchd"
CONNECT_TIMEOUT = 5.0  # seconds; the daemon's answers themselves may take long (get, verify)


class DaemonUnavailable(PrefetchError):
    """No daemon answers at the socket and this process cannot work without one (the
    state dir is not writable), or the daemon went away during a call. Exit code 1."""


class Forbidden(PrefetchError):
    """The daemon refused the call to this user (403); the message names the group
    that may make it. Exit code 1."""


@dataclass(frozen=True)
class Transfer:
    """One file a `get` waits on, as it downloads: its progress line.

    `done` counts every byte of the file on disk, `resumed_from` those that were
    there when this `get` started watching (a resume's offset, or what arrived before
    it joined; None when not known, in-process): bytes that are not speed.
    """

    file_id: str
    name: str | None
    done: int
    total: int | None
    resumed_from: int | None = None


Watch = Callable[[Transfer], None]
Notice = Callable[[str], None]


class WantBody(TypedDict, total=False):
    """The body of POST /v1/want (and of /v1/get, with `timeout`)."""

    file_ids: list[str]
    provider: str
    sha256: str
    size: int
    dest: str
    pin: bool
    ttl: str | float
    timeout: float | None
    holder: str


def listening(path: Path) -> bool:
    """Whether something accepts connections at `path`: False for no socket there or
    a stale one (a daemon killed with -9). A socket this user may not connect to is
    an error that says so, not a missing daemon."""
    try:
        if not stat.S_ISSOCK(path.stat().st_mode):
            return False
    except OSError:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(CONNECT_TIMEOUT)
        try:
            s.connect(str(path))
        except PermissionError:
            raise Forbidden(f"a daemon listens at {path}, but this user may not connect "
                            "(the socket's group, [api] group, may)") from None
        except OSError as e:
            if e.errno in (errno.ECONNREFUSED, errno.ENOENT):
                return False
            raise
    return True


def error_of(response: httpx.Response,
             missing: type[PrefetchError] = PrefetchError) -> PrefetchError:
    """The PrefetchError an error answer stands for: any exit code 2 a BadRequest,
    403 Forbidden, 404 `missing` (NotReadyError for a path), the rest a PrefetchError."""
    try:
        body = response.json()
        message = str(body["error"])
        exit_code = int(body.get("exit_code") or 1)
        file_id = body.get("file_id")
    except (ValueError, KeyError, TypeError, AttributeError):
        message = f"the daemon answered HTTP {response.status_code} {response.reason_phrase}"
        exit_code, file_id = (2 if response.status_code == 400 else 1), None
    cls: type[PrefetchError] = PrefetchError
    if exit_code == 2:
        cls = BadRequest
    elif response.status_code == 403:
        cls = Forbidden
    elif response.status_code == 404:
        cls = missing
    return cls(message, file_id=file_id)


class Client:
    """One connection pool to the daemon; cheap calls after the first. close() it."""

    def __init__(self, path: Path) -> None:
        self.socket = path
        # verify=False: nothing on a Unix socket speaks TLS, and the default loads the
        # CA bundle into an SSL context for every client (~75 ms per CLI call, measured).
        self.http = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(path), verify=False), base_url=BASE_URL,
            timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT))

    @classmethod
    def connect(cls, path: Path) -> Client | None:
        """A client of the daemon listening at `path`, or None when none does."""
        if not listening(path):
            return None
        client = cls(path)
        try:
            version = client.version()
        except BaseException:
            client.close()
            raise
        if version.get("api") != API_VERSION:
            client.close()
            raise PrefetchError(f"the daemon at {path} speaks local API {version.get('api')}"
                                f", this prefetchd {API_VERSION}: run the same version")
        return client

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, url: str, *, body: Any = None,
              params: dict[str, str] | None = None,
              missing: type[PrefetchError] = PrefetchError) -> Any:
        try:
            response = self.http.request(method, url, json=body, params=params)
        except httpx.TransportError as e:
            raise self._lost(e) from None
        if response.status_code >= 400:
            raise error_of(response, missing)
        return response.json()

    def _lost(self, e: httpx.TransportError) -> DaemonUnavailable:
        return DaemonUnavailable(f"lost the daemon at {self.socket}: {e or type(e).__name__}")

    # -- the routes, in the order of the contract ------------------------------------

    def version(self) -> dict[str, Any]:
        return cast(dict[str, Any], self._call("GET", "/v1/version"))

    def want(self, body: WantBody) -> list[str]:
        return cast(list[str], self._call("POST", "/v1/want", body=body)["wanted"])

    def unwant(self, file_ids: Sequence[str], holder: str | None = None) -> list[str]:
        body = _claim_body(file_ids, holder, False)
        return cast(list[str], self._call("POST", "/v1/unwant", body=body)["unwanted"])

    def forget(self, file_ids: Sequence[str], holder: str | None = None,
               every: bool = False) -> Removal:
        """Forget the caller's claims; returns the paths removed (files whose last
        claim went), and the files kept because other claims hold them."""
        return _removal(self._call("POST", "/v1/forget",
                                   body=_claim_body(file_ids, holder, every)))

    def get(self, body: WantBody, watch: Watch | None = None,
            notice: Notice | None = None) -> list[GetRow]:
        """Want and wait: progress lines go to `watch` and notices (what the wait is
        for) to `notice` as they come; the result line ends the stream (one GetRow
        per id given, in order). A stream cut before it is DaemonUnavailable."""
        try:
            with self.http.stream("POST", "/v1/get", json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_of(response)
                for line in response.iter_lines():
                    rows = _stream_line(line, watch, notice)
                    if rows is not None:
                        return rows
        except httpx.TransportError as e:
            raise self._lost(e) from None
        raise DaemonUnavailable(f"the daemon at {self.socket} stopped before the get "
                                "had its result")

    def path(self, file_id: str, holder: str | None = None) -> str:
        """The absolute path of the caller's claim on a ready file; NotReadyError (404)
        otherwise."""
        params = {"file_id": file_id} | ({"holder": holder} if holder else {})
        return cast(str, self._call("GET", "/v1/path", params=params,
                                    missing=NotReadyError)["path"])

    def ls(self, state: str | None = None, mine: bool = False) -> list[LsRow]:
        params = ({"state": state} if state is not None else {}) | (
            {"mine": "1"} if mine else {})
        return cast(list[LsRow], self._call("GET", "/v1/ls", params=params or None))

    def status(self) -> Status:
        return cast(Status, self._call("GET", "/v1/status"))

    def release(self, file_ids: Sequence[str], holder: str | None = None,
                every: bool = False) -> Removal:
        """Release the caller's claims; returns the paths removed (and the files kept)."""
        return _removal(self._call("POST", "/v1/release",
                                   body=_claim_body(file_ids, holder, every)))

    def gc(self, dry_run: bool = False) -> GcResult:
        return cast(GcResult, self._call("POST", "/v1/gc", body={"dry_run": dry_run}))

    def verify(self, file_ids: Sequence[str] = ()) -> list[VerifyRow]:
        body = {"file_ids": list(file_ids)}
        return cast(list[VerifyRow], self._call("POST", "/v1/verify", body=body))

    def stats(self) -> list[StatsRow]:
        return cast(list[StatsRow], self._call("GET", "/v1/stats"))

    def push_stats(self) -> int:
        return int(self._call("POST", "/v1/stats/push", body={})["pushed"])


def _claim_body(file_ids: Sequence[str], holder: str | None, every: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"file_ids": list(file_ids)}
    if holder:
        body["holder"] = holder
    if every:
        body["all"] = True
    return body


def _stream_line(line: str, watch: Watch | None, notice: Notice | None
                 ) -> list[GetRow] | None:
    """One NDJSON line of a get: progress (to `watch`), a notice (to `notice`), or
    the result's rows; a kind of line this client does not know is skipped."""
    if not line.strip():
        return None
    msg = json.loads(line)
    kind = msg.get("type")
    if kind == "result":
        return cast(list[GetRow], msg["results"])
    if kind == "progress" and watch is not None:
        watch(Transfer(msg["file_id"], msg.get("name"), int(msg["done"]), msg.get("total"),
                       msg.get("resumed_from")))
    elif kind == "notice" and notice is not None:
        notice(str(msg["message"]))
    return None


def _removal(body: dict[str, Any]) -> Removal:
    return Removal(body["removed"], {fid: WantSource(src)
                                     for fid, src in (body.get("kept") or {}).items()})
