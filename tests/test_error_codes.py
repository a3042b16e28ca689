"""Errors keep their type across the local API: every public error class, with its
attributes, through the daemon's own error path on a real Unix socket, and the errors
a running daemon raises on its own."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from prefetchd import errors
from prefetchd.api import Prefetch
from prefetchd.api.client import Client
from prefetchd.errors import (
    BadRequest,
    NotReadyError,
    PrefetchError,
    TimeoutExpired,
    error_classes,
    from_json,
)
from prefetchd.server import routes
from prefetchd.server.peer import peer_of

# One instance of every public error class, its attributes set (a new class fails the
# test below until it has one here).
SAMPLES: dict[str, Callable[[], PrefetchError]] = {
    "error": lambda: PrefetchError("something failed", file_id="f1", path="a/b"),
    "config": lambda: errors.ConfigError("download.concurrency: must be > 0"),
    "usage": lambda: errors.UsageError("dest: '..' is not allowed", path="../x"),
    "bad_request": lambda: BadRequest("sha256: 'x' is not 64 hex digits", file_id="f1"),
    "not_ready": lambda: NotReadyError("f1 is not ready (state queued)", file_id="f1"),
    "no_state": lambda: errors.NoStateError("no prefetchd state at /s"),
    "daemon_unavailable": lambda: errors.DaemonUnavailable("lost the daemon at /s/api.sock"),
    "forbidden": lambda: errors.Forbidden("gc needs uid 0", path="/s/api.sock"),
    "unsafe_path": lambda: errors.UnsafePathError("escapes the root", path="a/../../b"),
    "download": lambda: errors.DownloadError("HTTP 418", status=418, retry_after=3.5,
                                             file_id="f1"),
    "transient": lambda: errors.TransientError("HTTP 503", status=503, retry_after=2.0),
    "permanent": lambda: errors.PermanentError("HTTP 401", status=401, file_id="f1"),
    "not_found": lambda: errors.NotFoundError("f1: HTTP 404 (not found at the provider)",
                                              status=404, file_id="f1"),
    "hash_mismatch": lambda: errors.HashMismatchError(file_id="f1", expected="a" * 64,
                                                      actual="b" * 64),
    "size_mismatch": lambda: errors.SizeMismatchError(file_id="f1", expected=10, actual=12,
                                                      announced=True),
    "limit": lambda: errors.LimitError("f1: 2 GiB is over limits.max_file_size 1 GiB",
                                       file_id="f1", limit=1 << 30, actual=2 << 30),
    "no_space": lambda: errors.NoSpaceError(need_bytes=5000, at_least=True, file_id="f1",
                                            free=100, limit=1000),
    "too_large": lambda: errors.TooLargeError(need_bytes=9 << 30, capacity=1 << 30,
                                              file_id="f1", limit=10, at_least=True),
    "store": lambda: errors.StoreError("object abc... is missing", path="x"),
    "timeout": lambda: TimeoutExpired("f1: not ready within 1s", file_id="f1"),
    "gave_up": lambda: errors.GaveUpError("f1: still retrying after 2m", file_id="f1",
                                          patience=120.0),
    "deferred": lambda: errors.Deferred("another host downloads f1", file_id="f1"),
}


def attributes(e: PrefetchError) -> dict[str, object]:
    return {name: getattr(e, name) for name in ("file_id", "path", *e.all_fields())}


@pytest.fixture
def error_socket(tmp_path: Path) -> Iterator[Path]:
    """The daemon's error path (routes._answer, bodies.error_response) on a Unix socket:
    GET /raise?code=C answers the sample error of code C."""
    path = tmp_path / "api.sock"

    async def raise_it(request: web.Request) -> web.StreamResponse:
        raise SAMPLES[request.query["code"]]()

    @web.middleware
    async def as_the_daemon(request: web.Request, handler):  # type: ignore[no-untyped-def]
        request["peer"] = peer_of(request.transport.get_extra_info("socket"))
        return await routes._answer(request, handler)

    loop = asyncio.new_event_loop()
    app = web.Application(middlewares=[as_the_daemon])
    app.router.add_get("/raise", raise_it)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.UnixSite(runner, str(path)).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield path
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def test_every_public_error_class_has_a_sample():
    assert set(SAMPLES) == set(error_classes())
    for code, make in SAMPLES.items():
        assert type(make()).code == code


@pytest.mark.parametrize("code", sorted(SAMPLES))
def test_every_error_crosses_the_socket_as_itself(error_socket, code):
    sent = SAMPLES[code]()
    with Client(error_socket) as client, pytest.raises(PrefetchError) as got:
        client._call("GET", "/raise", params={"code": code})
    e = got.value
    assert type(e) is type(sent)
    assert (str(e), e.exit_code, attributes(e)) == (str(sent), sent.exit_code, attributes(sent))


def test_an_unknown_code_keeps_its_message_and_exit_code():
    e = from_json({"error": "from a newer daemon", "code": "brand_new", "exit_code": 2,
                   "file_id": "x"})
    assert (type(e), str(e), e.exit_code, e.file_id) == (
        PrefetchError, "from a newer daemon", 2, "x")


def test_a_public_error_class_must_name_its_code():
    with pytest.raises(TypeError, match="stable `code`"):
        type("Nameless", (PrefetchError,), {})
    with pytest.raises(TypeError, match="taken by NotReadyError"):
        type("Twin", (PrefetchError,), {"code": "not_ready"})


def test_errors_of_a_running_daemon_keep_their_class(env, daemon, server):
    server.add("file-a", b"A", "a.txt")
    daemon()
    with Prefetch(env.settings()) as p:
        assert p.client is not None
        with pytest.raises(NotReadyError) as e:
            p.locate("file-zzz")
        assert e.value.file_id == "file-zzz"
        with pytest.raises(BadRequest) as bad:
            p.want("file-a", sha256="xyz")
        assert bad.value.exit_code == 2
        with pytest.raises(PrefetchError, match="not in the manifest: file-zzz") as gone:
            p.release("file-zzz")
        assert type(gone.value) is PrefetchError and gone.value.file_id == "file-zzz"
        with pytest.raises(BadRequest) as unsafe:  # as in-process: bad_request()
            p.want("file-a", dest="../x")
        assert isinstance(unsafe.value, ValueError)
