"""Transport failures told in words, never a Python class name or repr: what a user
reads in `status`, `get` and the log when a server misbehaves."""

from __future__ import annotations

import asyncio
import json
import re
import socket

import pytest

from prefetchd.errors import PrefetchError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CLASS_NAME = re.compile(r"\b[A-Z][a-z]+(?:[A-Z][a-z]*)+\b|bytearray\(|b'|Error\b")


async def _serve_once(reply: bytes, wait_head: bool = True) -> asyncio.Server:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if wait_head:
            await r.readuntil(b"\r\n\r\n")
        else:
            await r.read(10)
        w.write(reply)
        await w.drain()
        w.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def failure(kind: str, reply: bytes, *, tls: bool = False) -> str:
    from prefetchd.providers.http import HttpProvider
    from prefetchd.providers.openai import OpenAIProvider

    async def go() -> str:
        srv = await _serve_once(reply, wait_head=not tls)
        port = srv.sockets[0].getsockname()[1]
        provider: HttpProvider | OpenAIProvider
        if kind == "http":
            provider = HttpProvider("web", connect_timeout=5, stall_timeout=5,
                                    allow_private_networks=True)
            file_id = f"{'https' if tls else 'http'}://127.0.0.1:{port}/x"
        else:
            provider = OpenAIProvider("files", base_url=f"http://127.0.0.1:{port}/v1",
                                      api_key="k", connect_timeout=5, stall_timeout=5)
            file_id = "file-abc"
        try:
            async with provider.open(file_id) as body:
                async for _ in body.chunks:
                    pass
        except PrefetchError as e:
            return str(e)
        finally:
            await provider.aclose()
            srv.close()
        raise AssertionError("no failure")

    return asyncio.run(go())


@pytest.mark.parametrize("kind", ["http", "openai"])
@pytest.mark.parametrize(("reply", "words"), [
    (b"", "the server closed the connection without answering"),
    (b"HELLO WORLD\r\n\r\n", "illegal status line: 'HELLO WORLD'"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nab\r\n",
     "illegal chunk header"),
])
def test_transport_failures_in_words(kind, reply, words):
    message = failure(kind, reply)
    assert words in message
    assert not CLASS_NAME.search(message), message


def test_tls_to_a_plain_port_in_words():
    message = failure("http", b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
                      tls=True)
    assert "TLS with 127.0.0.1:" in message
    assert message.endswith("failed: wrong version number (does that port speak plain http?)")


def test_an_answer_that_is_not_json_in_words():
    body = b"{not json"
    message = failure("openai", b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    assert message == "files file file-abc: files.retrieve answered something that is not a " \
                      "file object"


def test_supabase_transport_errors_in_words():
    import httpx

    from prefetchd.supa import api_error

    def refused() -> Exception:
        try:
            httpx.get(f"http://127.0.0.1:{free_port()}/rest/v1/x", timeout=5)
        except httpx.HTTPError as e:
            return e
        raise AssertionError("connected")

    assert str(api_error(refused(), "lookup")) == (
        "supabase lookup: connection refused by the server")
    assert str(api_error(httpx.ReadTimeout(""), "prefetchd_record_downloads")) == (
        "supabase prefetchd_record_downloads: no bytes from the server within "
        "supabase.timeout")
    assert str(api_error(json.JSONDecodeError("x", "", 0), "lookup")) == (
        "supabase lookup: the answer is not JSON")
