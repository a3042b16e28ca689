"""`prefetchd mcp`: the MCP server on stdio, so a model's host can ask for files.

A thin front over the `prefetchd.api.Prefetch` facade, like the CLI: each tool is
one facade call, made in a thread of its own so that the event loop keeps
answering (progress notifications while a `prefetch_get` waits, other calls beside
it). Each call opens its own facade, as each CLI command does: it finds the daemon
afresh (one started or stopped since is noticed), no SQLite handle is shared between
threads, and a read-only tool creates no state.

Errors come back as tool errors (`isError`) carrying the line the CLI prints after
`prefetchd: error: ` (or after `prefetchd: ` for an id `get` could not bring). The
arguments are strict where a slip would cost the caller silently (an unknown one,
`sha` for `sha256` or `timeout` for `timeout_s`, is refused by name: the schemas say
`additionalProperties: false`) and forgiving where the meaning is plain (`file_ids`
takes one string as one id); a bad value is said in prefetchd's words, never
pydantic's.
Everything that leaves the process goes through redaction, as the CLI's output does:
a URL file_id's password or presigned query never reaches the model. stdout carries
the protocol only: nothing here prints, and the module is named `mcp_server` so
that it never shadows the SDK's own `mcp` package.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import sqlite3
import threading
from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, InputRequiredResult, TextContent, ToolAnnotations
from mcp_types import Tool as ToolInfo
from pydantic import Field, ValidationError
from typing_extensions import TypedDict

from . import __version__
from .api import GetResult, Options, Prefetch
from .config import Settings
from .config.words import did_you_mean, say, say_union
from .errors import PrefetchError, human_size
from .records import State
from .redact import display_id, redact_text, redact_value

T = TypeVar("T")

PROGRESS_INTERVAL = 0.25  # seconds between progress notifications of one call

INSTRUCTIONS = """\
prefetchd keeps verified local copies of remote files (provider file ids, URLs,
bucket/path objects) under one directory. Ask for a file with prefetch_get: it waits
until the file is on disk and returns its absolute path, which you can then read. Use
prefetch_want to queue files you will need later, prefetch_path to look up one that is
already there, and prefetch_release when you are done with files so they are deleted."""


class GetReply(TypedDict):
    """What prefetch_get returns for a file that is ready."""

    path: Annotated[str, Field(description="absolute path of the file, ready to read")]
    sha256: Annotated[str | None, Field(description="SHA-256 of the bytes on disk")]
    size: Annotated[int | None, Field(description="size in bytes")]
    state: Annotated[str, Field(description="the entry's state: ready")]
    cached: Annotated[bool, Field(description="true if the file was already ready before "
                                              "this call (nothing was downloaded)")]


class WantReply(TypedDict):
    wanted: Annotated[list[str], Field(description="the file ids queued, in order")]


class PathReply(TypedDict):
    path: Annotated[str, Field(description="absolute path of the ready file")]


class ReleaseReply(TypedDict):
    released: Annotated[list[str], Field(description="the file ids released")]
    removed: Annotated[list[str], Field(description="paths deleted, relative to the root")]


# -- argument types: the JSON schema and the description a model reads ------------------

FileId = Annotated[str, Field(
    min_length=1,
    description="a file: a provider file id (e.g. file-abc123 or "
                "d40qan21ol7h6f177pt0), an http(s):// URL, or bucket/path in Supabase "
                "Storage")]
FileIds = Annotated[Annotated[list[str], Field(min_length=1)] | Annotated[str, Field(min_length=1)],
                    Field(description="one or more file ids (one string is one id)")]
Sha256 = Annotated[str | None, Field(
    description="expected SHA-256 (64 hex digits); the download fails if the bytes differ")]
Size = Annotated[int | None, Field(ge=0, description="expected size in bytes")]
Dest = Annotated[str | None, Field(
    description="where to put the file, relative to the prefetchd root (e.g. "
                "reports/q3.pdf); default downloads/<id>/<name>. No '..' and no "
                "absolute path")]
Provider = Annotated[str | None, Field(
    description="the configured provider that holds the file; default: guessed from the "
                "id, then the configured default")]
Timeout = Annotated[float | None, Field(
    ge=0, description="give up waiting after this many seconds (the download goes on in "
                      "the daemon); default: wait until ready or failed")]
Pin = Annotated[bool, Field(description="never delete these files by retention")]
Ttl = Annotated[str | None, Field(
    description="keep the files this long after the last request, e.g. 24h or 30m")]

class _StrictServer(MCPServer):
    """The SDK's server, refusing arguments a tool does not name and saying a bad
    value in prefetchd's words.

    The SDK validates arguments with a pydantic model that ignores unknown keys and
    answers a bad value with pydantic's text (and a link to errors.pydantic.dev); its
    published schemas allow any other property. Both ends are overridden here, on the
    server's public methods, so the schema a model reads and what the server accepts
    are the same.
    """

    def __init__(self) -> None:
        super().__init__("prefetchd", version=__version__, instructions=INSTRUCTIONS,
                         log_level="WARNING")
        self.arguments: dict[str, list[str]] = {}  # tool -> the arguments it takes

    def add_strict_tool(self, fn: Callable[..., Any], annotations: ToolAnnotations) -> None:
        self.add_tool(fn, description=inspect.cleandoc(fn.__doc__ or ""), annotations=annotations)
        params = inspect.signature(fn).parameters
        self.arguments[fn.__name__] = [name for name in params if name != "ctx"]  # ctx: the SDK's

    async def list_tools(self) -> list[ToolInfo]:
        tools = await super().list_tools()
        return [t.model_copy(update={"input_schema": {**t.input_schema,
                                                      "additionalProperties": False}})
                for t in tools]

    async def call_tool(self, name: str, arguments: dict[str, Any],
                        context: Context[Any, Any] | None = None,
                        ) -> CallToolResult | InputRequiredResult:
        known = self.arguments.get(name)
        if known is not None:
            unknown = [key for key in arguments if key not in known]
            if unknown:
                return _refusal(_unknown(name, unknown[0], known))
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as e:
            if isinstance(e.__cause__, ValidationError):
                return _refusal(_invalid(e.__cause__))
            raise


def _unknown(tool: str, key: str, known: list[str]) -> str:
    return (f"unknown argument {key!r}{did_you_mean(key, known)}; {tool} takes "
            f"{', '.join(known) or 'no arguments'}")


def _invalid(err: ValidationError) -> str:
    """A rejected argument's line: `size: expected an integer, got '3MB'`."""
    by_argument: dict[str, list[Any]] = {}
    for error in err.errors():
        by_argument.setdefault(str(error["loc"][0]) if error["loc"] else "arguments",
                               []).append(error)
    return "; ".join(f"{key}: {say_union(errors) if len(errors) > 1 else say(errors[0])}"
                     for key, errors in by_argument.items())


def build(settings: Settings) -> MCPServer:
    """The MCP server with prefetchd's tools over these settings."""
    app = _StrictServer()
    tools = _Tools(settings)
    fetches = ToolAnnotations(idempotent_hint=True, open_world_hint=True,
                              destructive_hint=False)
    reads = ToolAnnotations(read_only_hint=True, open_world_hint=False)
    deletes = ToolAnnotations(destructive_hint=True, idempotent_hint=True,
                              open_world_hint=False)
    for fn, hints in ((tools.prefetch_get, fetches), (tools.prefetch_want, fetches),
                      (tools.prefetch_path, reads), (tools.prefetch_status, reads),
                      (tools.prefetch_release, deletes)):
        app.add_strict_tool(fn, hints)
    return app


def run(settings: Settings) -> None:
    """Serve MCP on stdin/stdout until stdin closes (the host ends the session)."""
    build(settings).run("stdio")


class _Tools:
    """The tools; their docstrings are the descriptions a model reads."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def prefetch_get(  # noqa: PLR0913 - one keyword per request field
        self, file_id: FileId, ctx: Context, sha256: Sha256 = None, size: Size = None,
        dest: Dest = None, provider: Provider = None, timeout_s: Timeout = None,
    ) -> Annotated[CallToolResult, GetReply]:
        """Fetch one file and wait until it is on local disk; returns its absolute path.

        Use this before reading a remote file: the bytes are downloaded once, checked
        (sha256, size) and published atomically, so the path returned always holds the
        complete file. A file already there returns at once (cached: true). Long
        downloads report progress (bytes done of total). Fails with one line saying why
        (not found, hash mismatch, timeout, bad dest...).

        The options are your own claim's: one you give replaces your claim's earlier
        value (one you leave out keeps it), and no other requester's options on the same
        file apply to you. An unknown argument is an error, not ignored."""
        relay = _Relay()
        opts = Options(provider=provider, sha256=sha256, size=size, dest=dest)

        def get() -> GetReply:
            with Prefetch(self.settings) as p:
                cached = p.path(file_id) is not None
                (result,) = p.get_many([file_id], timeout=timeout_s, progress=relay,
                                       options=opts)
            return _reply(result, cached)

        async with anyio.create_task_group() as tg:
            tg.start_soon(relay.pump, ctx, file_id)
            try:
                reply = await _answer(get)
            finally:
                tg.cancel_scope.cancel()
        await relay.flush(ctx, file_id)
        return reply

    async def prefetch_want(  # noqa: PLR0913 - one keyword per request field
        self, file_ids: FileIds, provider: Provider = None, sha256: Sha256 = None,
        size: Size = None, dest: Dest = None, pin: Pin = False, ttl: Ttl = None,
    ) -> Annotated[CallToolResult, WantReply]:
        """Queue files to be fetched in the background, without waiting.

        Use it for files you will need later; call prefetch_get when you need one (it
        returns at once if the file has arrived). `file_ids` is a list, or one string for
        one id. The options are your own claim's: one you give replaces your claim's
        earlier value (one you leave out keeps it); other requesters keep theirs."""
        opts = Options(provider=provider, sha256=sha256, size=size, dest=dest, pin=pin,
                       ttl=ttl)
        ids = _ids(file_ids)

        def want() -> WantReply:
            with Prefetch(self.settings) as p:
                return {"wanted": p.want(ids, options=opts)}

        return await _answer(want)

    async def prefetch_path(self, file_id: FileId) -> Annotated[CallToolResult, PathReply]:
        """The absolute path of a file that is already ready; an error if it is not
        (then call prefetch_get). Never downloads anything."""

        def path() -> PathReply:
            with Prefetch(self.settings, read_only=True) as p:
                return {"path": str(p.locate(file_id))}

        return await _answer(path)

    async def prefetch_status(self) -> Annotated[CallToolResult, dict[str, Any]]:
        """The state of prefetchd: daemon running?, queue length, how many files are in
        each state, bytes stored, the last errors. The same object as
        `prefetchd status --json`."""

        def status() -> dict[str, Any]:
            with Prefetch(self.settings, read_only=True) as p:
                return dict(p.status())

        return await _answer(status)

    async def prefetch_release(self, file_ids: FileIds) -> Annotated[CallToolResult, ReleaseReply]:
        """Done with these files: drop your claim on each and its link now. A file is
        deleted from disk only when no other claim holds it (another requester may still
        need it); a later prefetch_get asks for it again. `file_ids` is a list, or one
        string for one id."""

        ids = _ids(file_ids)

        def release() -> ReleaseReply:
            with Prefetch(self.settings) as p:
                return {"released": ids, "removed": p.release(ids)}

        return await _answer(release)


def _ids(file_ids: str | list[str]) -> list[str]:
    """One string is one id (as in the Python API), never a list of its characters."""
    return [file_ids] if isinstance(file_ids, str) else list(file_ids)


def _reply(result: GetResult, cached: bool) -> GetReply:
    """prefetch_get's answer for one result: the file's facts, or the CLI's error line."""
    if result.error is not None or result.path is None:
        raise PrefetchError(_get_error(result))
    # The facts come with the result, from wherever the get ran (no manifest here).
    size = result.size if result.size is not None else result.path.stat().st_size
    return {"path": str(result.path), "sha256": result.sha256, "size": size,
            "state": result.state or State.READY, "cached": cached}


def _get_error(result: GetResult) -> str:
    """The line `prefetchd get` prints (after `prefetchd: `) for an id not ready: the
    error's message, naming the id once (as cli/show.py's get_error words it)."""
    error = result.error
    message = str(error) if error is not None else f"{result.file_id}: not ready"
    about = getattr(error, "file_id", None)
    if about is None and result.file_id in message:
        about = result.file_id
    return message if about == result.file_id else f"{result.file_id}: {message}"


async def _answer(call: Callable[[], Mapping[str, Any]]) -> CallToolResult:
    """Run a blocking facade call in a thread and make its tool result.

    The reply goes out redacted, as structured content and as JSON text for hosts that
    read only text. An error becomes a tool error carrying the CLI's line as it is
    (raising ToolError would prefix it with "Error executing tool ..."); anything else
    is a bug, which the SDK reports as a crash without its text.
    """
    try:
        reply = await _in_thread(call)
    except PrefetchError as e:
        return _refusal(str(e))
    except OSError as e:
        return _refusal(_os_error(e))
    except sqlite3.Error as e:
        return _refusal(str(e) or type(e).__name__)
    shown = redact_value(dict(reply))
    return CallToolResult(content=[TextContent(type="text", text=json.dumps(shown, indent=2))],
                          structured_content=shown)


async def _in_thread(call: Callable[[], T]) -> T:
    """`call()` in a thread of its own, awaited without blocking the loop.

    Not anyio's worker pool: its threads are joined at exit, so a `prefetch_get` still
    waiting (or downloading in-process) when the host closes stdin would keep the
    server alive until the host kills it. A daemon thread is left behind instead, and
    what it leaves is what a kill leaves (a partial kept for resume). A cancelled call
    is abandoned the same way; the daemon, if one runs, carries on with the download.
    """
    token = anyio.lowlevel.current_token()
    done = anyio.Event()
    outcome: list[Any] = []

    def work() -> None:
        try:
            outcome.append(("value", call()))
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting task as it is
            outcome.append(("error", e))
        with contextlib.suppress(anyio.RunFinishedError):  # the server has stopped
            anyio.from_thread.run_sync(done.set, token=token)

    threading.Thread(target=work, name="prefetchd-mcp-call", daemon=True).start()
    await done.wait()
    kind, value = outcome[0]
    if kind == "error":
        raise value
    result: T = value
    return result


def _refusal(message: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=redact_text(message))],
                          is_error=True)


def _os_error(e: OSError) -> str:
    return f"{e.filename}: {e.strerror or e}" if e.filename else (str(e) or type(e).__name__)


class _Relay:
    """Carries download progress from the facade's thread to the tool's task.

    The facade calls it for every buffer, from whatever thread downloads; it keeps the
    latest count under a lock and never blocks on the protocol. The pump sends what
    changed every PROGRESS_INTERVAL, so a fast download costs a few notifications and a
    host that asked for none costs nothing (report_progress is then a no-op).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: tuple[int, int | None] | None = None

    def __call__(self, _file_id: str, done: int, total: int | None) -> None:
        with self._lock:
            self._latest = (done, total)

    def _take(self) -> tuple[int, int | None] | None:
        with self._lock:
            latest, self._latest = self._latest, None
        return latest

    async def pump(self, ctx: Context, file_id: str) -> None:
        while True:
            await anyio.sleep(PROGRESS_INTERVAL)
            await self.flush(ctx, file_id)

    async def flush(self, ctx: Context, file_id: str) -> None:
        latest = self._take()
        if latest is None:
            return
        done, total = latest
        of = f" of {human_size(total)}" if total is not None else ""
        await ctx.report_progress(done, total, f"{display_id(file_id)}: {human_size(done)}{of}")
