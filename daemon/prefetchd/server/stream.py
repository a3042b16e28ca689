"""The body of `POST /v1/get`: NDJSON lines while the daemon's workers fetch, then one
result line.

    {"type": "notice", "message": "..."}                    what get waits for
    {"type": "progress", "file_id", "name", "done", "total", "resumed_from"}
    {"type": "result", "results": [GetLine, ...]}           last line, ids in order

Progress is sent at most every PROGRESS_EVERY seconds per file (and when a file is
complete). `resumed_from` is the byte count that was there when this client started
watching the download (a resume's offset, or what arrived before the get joined),
so a client does not count those bytes as speed. A client that goes away ends its
wait, never the download. A stream that ends without a result line means the
daemon stopped; the client may carry on by itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from aiohttp import web

from ..ops.results import GetResult
from ..shapes import GetLine
from .bodies import NDJSON, ndjson_line
from .waits import GetWait, Waits

PROGRESS_EVERY = 0.25  # seconds: at most ~4 progress lines a second per file


def get_row(r: GetResult) -> GetLine:
    """One element of `get --json` (the same shape), and the error's code and
    attributes (`detail`), so that the client rebuilds its class."""
    return {"file_id": r.file_id, "state": r.state,
            "path": str(r.path) if r.path is not None else None,
            "error": str(r.error) if r.error is not None else None,
            "detail": r.error.to_json() if r.error is not None else None,
            "sha256": r.sha256, "size": r.size}


class GetStream:
    """One `get`'s response: what it has sent and when."""

    def __init__(self, waits: Waits, wait: GetWait, file_ids: Sequence[str],
                 deadline: float | None) -> None:
        self.waits = waits
        self.wait = wait
        self.file_ids = list(file_ids)  # as given: duplicates and order kept
        self.deadline = deadline
        self.sent_at: dict[str, float] = {}

    async def serve(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": NDJSON})
        await resp.prepare(request)
        wait = self.wait
        self.waits.add(wait)
        try:
            return await self._serve(request, resp)
        except ConnectionError:
            return resp  # the client went away mid-write; the downloads go on
        finally:
            self.waits.remove(wait)

    async def _serve(self, request: web.Request,
                     resp: web.StreamResponse) -> web.StreamResponse:
        """Lines until every id settled (or the timeout), then the result line."""
        wait, loop = self.wait, asyncio.get_running_loop()
        self.waits.check(set(wait.ids), loop.time())  # what is ready already
        told = False
        while not wait.done and not wait.aborted:
            await self._changed(loop.time())
            if not wait.done and not told and not wait.aborted:
                wait.tell(f"waiting for the daemon to fetch "
                          f"{len(wait.ids) - len(wait.results)} file(s)")
                told = True
            await self._send(resp, self._lines(loop.time()))
            if self.deadline is not None and loop.time() >= self.deadline:
                self._time_out()
            if request.transport is None or request.transport.is_closing():
                return resp  # the client went away; the downloads go on
        if wait.aborted and not wait.done:
            return resp
        results = [wait.results[f] for f in self.file_ids]
        await self._send(resp, [ndjson_line(
            {"type": "result", "results": [get_row(r) for r in results]})])
        await resp.write_eof()
        return resp

    async def _changed(self, now: float) -> None:
        timeout = PROGRESS_EVERY
        if self.deadline is not None:
            timeout = max(0.0, min(timeout, self.deadline - now))
        try:
            await asyncio.wait_for(self.wait.changed.wait(), timeout)
        except TimeoutError:
            pass
        self.wait.changed.clear()

    @staticmethod
    async def _send(resp: web.StreamResponse, lines: list[bytes]) -> None:
        if lines:
            await resp.write(b"".join(lines))

    def _lines(self, now: float) -> list[bytes]:
        wait = self.wait
        lines = [ndjson_line({"type": "notice", "message": m}) for m in wait.notices]
        wait.notices.clear()
        for fid, (done, total) in list(wait.moved.items()):
            complete = total is not None and done >= total
            if now - self.sent_at.get(fid, float("-inf")) < PROGRESS_EVERY and not complete:
                continue  # kept in `moved`: sent on a later tick
            del wait.moved[fid]
            self.sent_at[fid] = now
            lines.append(ndjson_line(self._progress(fid, done, total)))
        return lines

    def _progress(self, fid: str, done: int, total: int | None) -> dict[str, Any]:
        stream = self.waits.streams.get(fid)
        return {"type": "progress", "file_id": fid, "name": stream.name if stream else None,
                "done": done, "total": total,
                "resumed_from": self.wait.bases.get(fid, 0)}

    def _time_out(self) -> None:
        """The timeout ran out: every id not settled gets its timed-out result."""
        wait = self.wait
        missing = [f for f in wait.ids if f not in wait.results]
        entries = self.waits.manifest.rows_for(missing)
        for fid in missing:
            e = entries.get(fid)
            wait.results[fid] = replace(wait.settle.timed_out(fid, e),
                                        state=e.state if e else None)
