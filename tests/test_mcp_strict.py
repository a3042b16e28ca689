"""The MCP tools are strict where a slip would cost silently and forgiving where the
meaning is plain, driven through the SDK's own stdio client (tests/test_mcp.py).

An unknown argument (`sha` for `sha256`, `timeout` for `timeout_s`) is a tool error
naming it, and nothing is done; the schemas say `additionalProperties: false`;
`file_ids` takes one string as one id; a bad value is one line in prefetchd's words,
never pydantic's.
"""

from __future__ import annotations

import anyio

from tests.test_mcp import TOOLS, call, connect, error, ok, run, text_of

PYDANTIC_WORDS = ("pydantic", "validation error", "Input should", "Error executing tool",
                  "For further information")


def assert_our_words(message: str) -> None:
    assert "\n" not in message, message
    for words in PYDANTIC_WORDS:
        assert words not in message, message


def test_schemas_forbid_other_properties_and_file_ids_take_a_string(env):
    async def scenario() -> None:
        async with connect(env) as s:
            tools = {t.name: t for t in (await s.list_tools()).tools}
            assert set(tools) == TOOLS
            for t in tools.values():
                assert t.input_schema.get("additionalProperties") is False, t.name
            for name in ("prefetch_want", "prefetch_release"):
                ids = tools[name].input_schema["properties"]["file_ids"]
                kinds = {member["type"] for member in ids["anyOf"]}
                assert kinds == {"array", "string"}, ids
            for name in ("prefetch_get", "prefetch_want"):
                description = tools[name].description or ""
                assert "your own claim" in description, description
            release = tools["prefetch_release"].description or ""
            assert "no other claim" in release, release

    run(scenario)


def test_an_unknown_argument_is_refused_by_name_and_nothing_happens(env, server):
    server.add("file-a", b"A" * 100, "a.txt")

    async def scenario() -> tuple[str, str, str]:
        async with connect(env) as s:
            sha = await error(s, "prefetch_get", file_id="file-a", sha="0" * 64)
            timeout = await error(s, "prefetch_get", file_id="file-a", timeout=1)
            want = await error(s, "prefetch_want", file_ids=["file-a"], pinned=True)
            return sha, timeout, want

    sha, timeout, want = anyio.run(scenario)
    assert sha == ("unknown argument 'sha' (did you mean sha256?); prefetch_get takes "
                   "file_id, sha256, size, dest, provider, timeout_s")
    assert timeout.startswith("unknown argument 'timeout' (did you mean timeout_s?); ")
    assert want.startswith("unknown argument 'pinned' (did you mean pin?); prefetch_want takes")
    assert not (env.root / "downloads/file-a").exists()
    assert not (env.state / "prefetchd.db").exists()  # nothing was wanted, nothing made


def test_file_ids_takes_one_string_as_one_id(env, server):
    server.add("file-b", b"B" * 10, "b.txt")

    async def scenario() -> None:
        async with connect(env) as s:
            assert await ok(s, "prefetch_want", file_ids="file-b") == {"wanted": ["file-b"]}
            await ok(s, "prefetch_get", file_id="file-b")
            released = await ok(s, "prefetch_release", file_ids="file-b")
            assert released == {"released": ["file-b"], "removed": ["downloads/file-b/b.txt"]}

    run(scenario)


def test_bad_values_are_one_line_in_our_words(env):
    async def scenario() -> list[str]:
        async with connect(env) as s:
            return [
                await error(s, "prefetch_get", file_id="file-a", size="3MB"),
                await error(s, "prefetch_get", file_id="file-a", size=-1),
                await error(s, "prefetch_want", file_ids=[]),
                await error(s, "prefetch_want", file_ids=5),
                await error(s, "prefetch_get"),
                await error(s, "prefetch_get", file_id="file-a", timeout_s="soon"),
            ]

    messages = anyio.run(scenario)
    for message in messages:
        assert_our_words(message)
    assert messages == [
        "size: expected an integer, got '3MB'",
        "size: must be at least 0, got -1",
        "file_ids: must not be empty",
        "file_ids: expected a list or a string, got 5",
        "file_id: missing (required)",
        "timeout_s: expected a number, got 'soon'",
    ]


def test_an_unknown_tool_is_still_an_error(env):
    async def scenario() -> None:
        async with connect(env) as s:
            result = await call(s, "prefetch_nothing")
            assert result.is_error and "prefetch_nothing" in text_of(result)

    run(scenario)
