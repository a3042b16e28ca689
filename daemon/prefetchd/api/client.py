"""The client of the daemon's local API: HTTP/1.1 + JSON over its Unix socket.

What the Python API (and through it the CLI and the MCP server) uses when a daemon
runs: each method is one route under /v1 and returns the JSON shape that route
answers (shapes.py, exactly what the matching `--json` prints). An error answer
(`{"error", "code", "exit_code", "file_id", ...attributes}`, errors.py) becomes the
error the daemon raised: the class of its code, with its attributes. httpx speaks
HTTP over the socket (`HTTPTransport(uds=...)`); the host in the URL is ignored.
"""

from __future__ import annotations

import errno
import grp
import json
import socket
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, cast

import httpx

from .. import API_VERSION
from ..errors import DaemonUnavailable, Forbidden, PrefetchError, from_json
from ..records import Removal
from ..shapes import GcResult, GetLine, LsRow, StatsRow, Status, VerifyRow, array_rows

BASE_URL = "http://prefetchd"
CONNECT_TIMEOUT = 5.0  # seconds; the daemon's answers themselves may take long (get, verify)


__all__ = ["API_VERSION", "Client", "DaemonUnavailable", "Forbidden", "Transfer", "WantBody",
           "listening"]


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
    an error that says so, naming the group to join, not a missing daemon."""
    try:
        st = path.stat()
    except OSError:
        return False
    if not stat.S_ISSOCK(st.st_mode):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(CONNECT_TIMEOUT)
        try:
            s.connect(str(path))
        except PermissionError:
            raise Forbidden(f"a daemon listens at {path}, but this user may not connect: "
                            f"join group {group_name(st.st_gid)}", path=str(path)) from None
        except OSError as e:
            if e.errno in (errno.ECONNREFUSED, errno.ENOENT):
                return False
            raise
    return True


def group_name(gid: int) -> str:
    """A group's name, or its number when the group database has none."""
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def error_of(response: httpx.Response) -> PrefetchError:
    """The error an error answer carries (errors.from_json); an answer that is not the
    daemon's JSON error (a proxy, a crash) says its HTTP status."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or "code" not in body:
        return PrefetchError(f"the daemon answered HTTP {response.status_code} "
                             f"{response.reason_phrase}")
    return from_json(body)


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
              params: dict[str, str] | None = None) -> Any:
        try:
            response = self.http.request(method, url, json=body, params=params)
        except httpx.TransportError as e:
            raise self._lost(e) from None
        if response.status_code >= 400:
            raise error_of(response)
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
        return Removal.of_json(self._call("POST", "/v1/forget",
                                   body=_claim_body(file_ids, holder, every)))

    def get(self, body: WantBody, watch: Watch | None = None,
            notice: Notice | None = None) -> list[GetLine]:
        """Want and wait: progress lines go to `watch` and notices (what the wait is
        for) to `notice` as they come; the result line ends the stream (one GetLine
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
        return cast(str, self._call("GET", "/v1/path", params=params)["path"])

    def ls(self, state: str | None = None, mine: bool = False) -> Iterator[LsRow]:
        """The rows as the daemon streams them (shapes.array_rows), read a line at a
        time: the listing is never held whole. A refusal raises here, before the first
        row; a listing cut short raises DaemonUnavailable."""
        params = ({"state": state} if state is not None else {}) | (
            {"mine": "1"} if mine else {})
        request = self.http.build_request("GET", "/v1/ls", params=params or None)
        try:
            response = self.http.send(request, stream=True)
        except httpx.TransportError as e:
            raise self._lost(e) from None
        if response.status_code >= 400:
            try:
                response.read()
            finally:
                response.close()
            raise error_of(response)
        return self._rows(response)

    def _rows(self, response: httpx.Response) -> Iterator[LsRow]:
        try:
            yield from cast(Iterator[LsRow], array_rows(response.iter_lines()))
        except httpx.TransportError as e:
            raise self._lost(e) from None
        except ValueError as e:
            raise DaemonUnavailable(f"the daemon at {self.socket} ended the answer early: "
                                    f"{e}") from None
        finally:
            response.close()

    def status(self) -> Status:
        return cast(Status, self._call("GET", "/v1/status"))

    def release(self, file_ids: Sequence[str], holder: str | None = None,
                every: bool = False) -> Removal:
        """Release the caller's claims; returns the paths removed (and the files kept)."""
        return Removal.of_json(self._call("POST", "/v1/release",
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
                 ) -> list[GetLine] | None:
    """One NDJSON line of a get: progress (to `watch`), a notice (to `notice`), or
    the result's rows; a kind of line this client does not know is skipped."""
    if not line.strip():
        return None
    msg = json.loads(line)
    kind = msg.get("type")
    if kind == "result":
        return cast(list[GetLine], msg["results"])
    if kind == "progress" and watch is not None:
        watch(Transfer(msg["file_id"], msg.get("name"), int(msg["done"]), msg.get("total"),
                       msg.get("resumed_from")))
    elif kind == "notice" and notice is not None:
        notice(str(msg["message"]))
    return None
