"""The routes of the local API (/v1/...): each one validates through prefetchd.requests
and calls one operation on the daemon's own handles.

Quick operations (want, unwant, forget, release, path) run on the event loop with the
daemon's manifest; those that walk the store or hash files (status, ls, stats, gc,
verify, push) run on the daemon's job threads. Every request logs one `api_request`
line with the peer's uid, gid and pid; no traceback ever reaches a client.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from aiohttp import web

from .. import API_VERSION, __version__
from ..api.backends import LocalBackend
from ..errors import PrefetchError, UsageError
from ..log import get_logger
from ..manifest import STATES, Manifest
from ..ops import gc as gc_op
from ..ops import status as status_op
from ..ops import verify as verify_op
from ..records import Entry
from ..redact import display_id, redact_text, redact_value
from ..shapes import LsRow
from .bodies import (
    MAX_BODY,
    ApiError,
    ClaimIds,
    GcBody,
    GetBody,
    Ids,
    VerifyBody,
    WantBody,
    error_response,
    json_response,
    parse,
)
from .host import Host
from .peer import Access, Peer, peer_of
from .stream import GetStream
from .waits import GetWait, Waits

log = get_logger("prefetchd.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LOGGED_IDS = 20  # file_ids named in one log line at most (the count says the rest)


class Api:
    """The application: routes over the daemon's handles (`host`)."""

    def __init__(self, host: Host, waits: Waits) -> None:
        self.host = host
        self.waits = waits
        self._access: tuple[object, Access] | None = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_BODY)
        r = app.router
        r.add_get("/v1/version", self.version)
        r.add_post("/v1/want", self.want)
        r.add_post("/v1/unwant", self.unwant)
        r.add_post("/v1/forget", self.forget)
        r.add_post("/v1/get", self.get)
        r.add_get("/v1/path", self.path)
        r.add_get("/v1/ls", self.ls)
        r.add_get("/v1/status", self.status)
        r.add_post("/v1/release", self.release)
        r.add_post("/v1/gc", self.gc)
        r.add_post("/v1/verify", self.verify)
        r.add_get("/v1/stats", self.stats)
        r.add_post("/v1/stats/push", self.stats_push)
        return app

    # -- every request ------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.monotonic()
        peer = _peer(request)
        request["peer"] = peer
        request["file_ids"] = []
        status = 499  # the client went away (or the daemon stopped) mid-request
        try:
            resp = await _answer(request, handler)
            status = resp.status
            return resp
        finally:
            ids: list[str] = request["file_ids"]
            log.info("api_request", method=request.method, path=request.path, status=status,
                     uid=peer.uid if peer else None, gid=peer.gid if peer else None,
                     pid=peer.pid if peer else None,
                     file_ids=[display_id(f) for f in ids[:LOGGED_IDS]], ids=len(ids),
                     duration_ms=int((time.monotonic() - started) * 1000))

    def _admin(self, request: web.Request, what: str) -> None:
        """Refuse (403) unless the peer is root, the daemon's user or an admin."""
        access = self._access_rule()
        if not access.admin(request["peer"]):
            raise ApiError(403, access.refusal(what))

    def _access_rule(self) -> Access:
        settings = self.host.handles.settings
        if self._access is None or self._access[0] is not settings:
            self._access = (settings, Access.of(settings))
        return self._access[1]

    # -- the routes ---------------------------------------------------------------------

    async def version(self, _request: web.Request) -> web.StreamResponse:
        return json_response({"version": __version__, "api": API_VERSION})

    async def want(self, request: web.Request) -> web.StreamResponse:
        body = await parse(request, WantBody)
        ids = _ids(request, body)
        wanted = self._local(request).want(ids, body.options(), body.holder)
        self._changed(ids)
        return json_response({"wanted": wanted})

    async def get(self, request: web.Request) -> web.StreamResponse:
        body = await parse(request, GetBody)
        ids = _ids(request, body)
        timeout = body.timeout_seconds()
        h = self.host.handles
        local = self._local(request)
        holder = local.holder(body.holder)
        local.want(ids, body.options(), holder)
        self.host.wake()
        unique = list(dict.fromkeys(ids))
        wait = GetWait.of(unique, h.store.root, h.settings.download.get_patience, timeout,
                          holder)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        return await GetStream(self.waits, wait, ids, deadline).serve(request)

    async def unwant(self, request: web.Request) -> web.StreamResponse:
        body = await parse(request, Ids)
        ids = _ids(request, body)
        _known(self.host.handles.manifest, ids)
        self._local(request).unwant(ids, body.holder)
        self._changed(ids)
        return json_response({"unwanted": ids})

    async def forget(self, request: web.Request) -> web.StreamResponse:
        body = await parse(request, ClaimIds)
        ids = _ids(request, body)
        _known(self.host.handles.manifest, ids)
        removed = self._local(request).forget(ids, body.holder, body.all)
        self._changed(ids)
        return json_response({"forgotten": ids, "removed": removed, "kept": removed.kept})

    async def release(self, request: web.Request) -> web.StreamResponse:
        body = await parse(request, ClaimIds)
        ids = _ids(request, body)
        _known(self.host.handles.manifest, ids)
        removed = self._local(request).release(ids, body.holder, body.all)
        self._changed(ids)
        await self.host.cancel_unwanted()
        return json_response({"released": ids, "removed": removed, "kept": removed.kept})

    async def path(self, request: web.Request) -> web.StreamResponse:
        fid = request.query.get("file_id")
        if not fid:
            raise UsageError("file_id: missing (GET /v1/path?file_id=ID)")
        request["file_ids"] = [fid]
        found = self._local(request).locate(fid, request.query.get("holder"))
        return json_response({"path": str(found)})

    async def ls(self, request: web.Request) -> web.StreamResponse:
        """A JSON array streamed a row per line (shapes.array_text), a page of files at
        a time from a job thread: neither the daemon nor the client ever holds the
        whole listing."""
        state = request.query.get("state") or None
        if state is not None and state not in STATES:  # the API's field, not the CLI's --state
            raise UsageError(f"state: {state!r} is not one of {', '.join(STATES)}")
        mine = request.query.get("mine") not in (None, "", "0", "false")
        uid = request["peer"].uid if mine else None
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            await self._ls_pages(resp, state, uid)
        except ConnectionResetError:
            pass  # the client went away mid-listing (`prefetchd ls | head`)
        return resp

    async def _ls_pages(self, resp: web.StreamResponse, state: str | None,
                        uid: int | None) -> None:
        root = self.host.handles.store.root
        after = ""
        await resp.write(b"[\n")
        sep = ""  # the shape shapes.array_rows reads: a row per line, each sent whole
        while True:
            page_of: Callable[[Manifest], tuple[list[LsRow], str | None]] = partial(
                _ls_page, root=root, state=state, uid=uid, after=after)
            rows, more = await self._job(page_of)
            page: list[str] = []
            for r in rows:
                page.append(sep + json.dumps(redact_value(r)) + "\n")
                sep = ","
            if page:
                await resp.write("".join(page).encode())
            if more is None:
                break
            after = more
        await resp.write(b"]\n")
        await resp.write_eof()

    async def status(self, _request: web.Request) -> web.StreamResponse:
        h = self.host.handles
        return json_response(await self._job(
            lambda m: status_op.status(h.settings, m, h.store)))

    async def stats(self, _request: web.Request) -> web.StreamResponse:
        return json_response(await self._job(status_op.stats))

    async def stats_push(self, request: web.Request) -> web.StreamResponse:
        self._admin(request, "stats push")
        return json_response({"pushed": await self._job(self.host.push_stats)})

    async def gc(self, request: web.Request) -> web.StreamResponse:
        self._admin(request, "gc")
        body = await parse(request, GcBody)
        h = self.host.handles
        result = await self._job(lambda m: gc_op.gc(h.settings, m, h.store,
                                                   dry_run=body.dry_run))
        self.host.wake()
        return json_response(result)

    async def verify(self, request: web.Request) -> web.StreamResponse:
        self._admin(request, "verify")
        body = await parse(request, VerifyBody)
        request["file_ids"] = body.file_ids
        store = self.host.handles.store
        report, _requeued = await self._job(
            lambda m: verify_op.verify(m, store, body.file_ids or None))
        self.host.wake()  # the daemon's workers fetch again what was bad
        return json_response(report)

    # -- helpers ------------------------------------------------------------------------

    def _local(self, request: web.Request) -> LocalBackend:
        """The operations on the daemon's own handles, for the peer: its own claims,
        and others' only when it is an admin (LocalBackend.holder checks; a refusal
        names the admin group)."""
        h, access = self.host.handles, self._access_rule()
        peer: Peer = request["peer"]
        return LocalBackend(h.settings, h.manifest, h.store, uid=peer.uid,
                            admin=access.admin(peer), refusal=access.refusal, in_daemon=True)

    def _changed(self, ids: Sequence[str]) -> None:
        """The API changed entries on the daemon's own connection (no data_version
        change for it): wake the loop and the gets waiting on them."""
        for fid in ids:
            self.waits.touch(fid)
        self.host.wake()

    async def _job(self, fn: Callable[[Manifest], Any]) -> Any:
        return await self.host.jobs.run(fn)


def _ls_page(m: Manifest, *, root: Path, state: str | None, uid: int | None,
             after: str) -> tuple[list[LsRow], str | None]:
    return status_op.ls_page(m, root, state, uid, after)


def _peer(request: web.Request) -> Peer | None:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    try:
        return peer_of(sock) if sock is not None else None
    except OSError:
        return None


def _ids(request: web.Request, body: Ids) -> list[str]:
    ids = body.given()
    request["file_ids"] = ids
    return ids


def _known(manifest: Manifest, ids: Sequence[str]) -> list[Entry]:
    """The entries of these ids, or 404 naming every id the manifest lacks (nothing
    changes then)."""
    found = manifest.rows_for(set(ids))
    unknown = [fid for fid in dict.fromkeys(ids) if fid not in found]
    if unknown:
        raise ApiError(404, f"not in the manifest: {', '.join(unknown)}",
                       file_id=unknown[0] if len(unknown) == 1 else None)
    return list(found.values())


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The handler's response, or its failure as a JSON error (never a traceback)."""
    if request["peer"] is None:
        return error_response(ApiError(403, "the peer's credentials cannot be read"))
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(e)
    except PrefetchError as e:
        return error_response(ApiError.of(e))
    except web.HTTPException as e:
        return error_response(_http_error(request, e))
    except (OSError, sqlite3.Error) as e:
        log.error("api_failed", path=request.path, error=redact_text(str(e)))
        return error_response(ApiError(500, str(e) or type(e).__name__))
    except Exception as e:  # a bug: logged in full, the client gets one line
        log.exception("api_crashed", path=request.path)
        return error_response(ApiError(500, f"internal error ({type(e).__name__}); see "
                                            "the daemon's log"))


def _http_error(request: web.Request, e: web.HTTPException) -> ApiError:
    """aiohttp's own refusals (no such route, wrong method) as JSON errors."""
    if e.status == 404:
        message = f"no route {request.method} {request.path} (see GET /v1/version)"
    elif e.status == 405:
        message = f"{request.method} is not allowed on {request.path}"
    else:
        message = e.reason
    return ApiError(e.status, message, exit_code=2 if e.status < 500 else 1)
