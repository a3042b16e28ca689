"""The CLI's socket path: an agent's `prefetchd path ID` in a few interpreter starts.

When a daemon runs, `path`, `get`, `want`, `unwant`, `forget`, `release`, `ls` and
`status` are one request over its Unix socket. The full CLI loads pydantic, the
config models, httpx and the engine first (about 0.3 s); this module loads json,
socket and the small modules the output needs (errors, records, cli/show.py, redact),
finds the socket as the full CLI would (options, PREFETCHD_CONFIG/ROOT/STATE_DIR,
the config file's `state_dir` and `[api] socket`, read with tomllib), speaks
HTTP/1.1 itself (http.client alone costs more than the whole call: it loads the
email package) and prints what the full CLI prints.

`run()` answers None whenever it is in doubt, and the full CLI runs instead: an
option it does not know, a value it cannot convert exactly as the CLI would, `-h`,
`-v`, another PREFETCHD_* variable, no config file where one is named, a config
it cannot read, no daemon answering, progress on a terminal, a lost connection
before an answer. So the output and exit codes never differ; only the cost does.
Request bodies are built from the options given (`--holder NAME` -> "holder"), so
an option the local API takes flows through once it is listed here.
"""

from __future__ import annotations

# _socket, not socket: socket.py turns its constants into enums at import (~2 ms, measured)
import _socket
import json
import os
import sys

from .. import API_VERSION
from ..errors import DaemonUnavailable, NotReadyError, PrefetchError, from_json
from ..redact import RedactingWriter
from .show import done_line, get_error, ls_lines, print_json, print_json_rows, status_lines

TYPE_CHECKING = False
if TYPE_CHECKING:  # none of these loads at run time (typing, dataclasses: ~10 ms)
    from collections.abc import Callable, Iterable, Iterator, Sequence
    from typing import Any

    from ..records import Removal

PROG = "prefetchd"
SIGPIPE_EXIT = 141
DEFAULT_CONFIG = "/etc/prefetchd/config.toml"
DEFAULT_STATE_DIR = "/var/lib/prefetchd"
CONNECT_TIMEOUT = 5.0
_GLOBAL = {"--config": "config", "--root": "root", "--state-dir": "state_dir"}
_ENV = {"PREFETCHD_CONFIG": "config", "PREFETCHD_ROOT": "root",
        "PREFETCHD_STATE_DIR": "state_dir"}
_REQUEST = frozenset({"--provider", "--sha256", "--size", "--dest", "--ttl", "--holder"})
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE_UNITS = {"kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


class Spec:
    """What a command takes on this path: ids (at least, at most), valued options
    and flags, and its route."""

    def __init__(self, ids: tuple[int, int | None], method: str, route: str,  # noqa: PLR0913
                 values: frozenset[str] = frozenset(),
                 flags: frozenset[str] = frozenset()) -> None:
        self.ids, self.method, self.route = ids, method, route
        self.values, self.flags = values, flags


COMMANDS = {
    "path": Spec((1, 1), "GET", "/v1/path"),
    "get": Spec((1, None), "POST", "/v1/get", _REQUEST | {"--timeout"},
                frozenset({"--pin", "--json"})),
    "want": Spec((1, None), "POST", "/v1/want", _REQUEST, frozenset({"--pin"})),
    "unwant": Spec((1, None), "POST", "/v1/unwant", frozenset({"--holder"})),
    "forget": Spec((1, None), "POST", "/v1/forget", frozenset({"--holder"}),
                   frozenset({"--all"})),
    "release": Spec((1, None), "POST", "/v1/release", frozenset({"--holder"}),
                    frozenset({"--all"})),
    "ls": Spec((0, 0), "GET", "/v1/ls", frozenset({"--state"}), frozenset({"--json", "--mine"})),
    "status": Spec((0, 0), "GET", "/v1/status", flags=frozenset({"--json"})),
}


class Doubt(Exception):
    """This path cannot be sure to do what the full CLI would: let it run."""


class Call:
    """One command line: the command, its ids, the options given by the local API's
    names ("holder", "pin"...) and the global ones (config, root, state_dir)."""

    def __init__(self, command: str, spec: Spec) -> None:
        self.command, self.spec = command, spec
        self.ids: list[str] = []
        self.given: dict[str, Any] = {}
        self.places: dict[str, str] = {}


def run(argv: Sequence[str]) -> int | None:
    """The exit code of the command done over the daemon's socket, or None: run the
    full CLI (no daemon, or anything this path is not sure of)."""
    try:
        call = parse(argv)
        if call.command == "get" and sys.stderr.isatty():
            raise Doubt("progress bars")
        sock = connect(socket_path(call.places))
    except Doubt:
        return None
    try:
        return _answer(call, Http(sock))
    finally:
        sock.close()


class Fallback(Exception):
    """The daemon went away before answering: the full CLI carries on (a get then
    works in this process, as the API does when its daemon stops)."""


# -- arguments ------------------------------------------------------------------------


def parse(argv: Sequence[str]) -> Call:
    """The command line as the full CLI's parser reads it, for what this path knows:
    global options before or after the command, its options after it."""
    args, i = list(argv), 0
    call: Call | None = None
    places: dict[str, str] = {}
    while i < len(args):
        a, i = args[i], i + 1
        if a.startswith("-"):
            i = _option(call, places, args, i)
        elif call is None:
            if a not in COMMANDS:
                raise Doubt(a)
            call = Call(a, COMMANDS[a])
        else:
            call.ids.append(a)
    if call is None:
        raise Doubt("no command")
    call.places = places
    low, high = call.spec.ids
    if len(call.ids) < low or (high is not None and len(call.ids) > high):
        raise Doubt("ids")
    return call


def _option(call: Call | None, places: dict[str, str], args: list[str], i: int) -> int:
    """Take the option at args[i - 1] (and its value); returns where to go on."""
    name, eq, value = args[i - 1].partition("=")
    flags = call.spec.flags if call else frozenset()
    values = call.spec.values if call else frozenset()
    if name in flags and not eq and call is not None:
        _put(call.given, name, True)
        return i
    if name not in _GLOBAL and name not in values:
        raise Doubt(name)
    if not eq:
        if i >= len(args) or args[i].startswith("-"):
            raise Doubt("missing value")
        value, i = args[i], i + 1
    if name in _GLOBAL:
        _put(places, _GLOBAL[name], value)
    elif call is not None:
        _put(call.given, name, _convert(name, value))
    return i


def _put(into: dict[str, Any], name: str, value: Any) -> None:
    key = name.removeprefix("--").replace("-", "_")
    if key in into:
        raise Doubt(f"{name} twice")
    into[key] = value


def _convert(name: str, value: str) -> Any:
    convert: dict[str, Callable[[str], Any]] = {
        "--size": size, "--ttl": duration, "--timeout": duration, "--state": state}
    return convert[name](value) if name in convert else value


def duration(text: str) -> float:
    """A duration exactly as config.parse_duration reads it, or Doubt."""
    t = text.strip().lower()
    if not t:
        raise Doubt(text)
    total, number = 0.0, ""
    i = 0
    while i < len(t):
        c = t[i]
        if c.isdigit() or (c == "." and number and "." not in number):
            number += c
            i += 1
            continue
        unit = "ms" if t.startswith("ms", i) else c
        if not number or number.endswith(".") or unit not in _DURATION_UNITS:
            raise Doubt(text)
        total += float(number) * _DURATION_UNITS[unit]
        number, i = "", i + len(unit)
    if number:
        if total or number.endswith("."):
            raise Doubt(text)  # '1h30': the full parser's words say what is wrong
        return float(number)
    return total


def size(text: str) -> int:
    """A size as config.parse_size reads it, for the plain forms (bytes, kB..TB,
    KiB..TiB), or Doubt."""
    t = text.strip().lower()
    digits = t.rstrip("abcdefghijklmnopqrstuvwxyz").strip()
    unit = t[len(digits):].strip() if digits else ""
    if not digits.isdigit():
        raise Doubt(text)
    if not unit:
        return int(digits)
    if unit not in _SIZE_UNITS:
        raise Doubt(text)
    return int(digits) * _SIZE_UNITS[unit]


# records.State's values (a test keeps them equal): records loads dataclasses and typing
STATES = frozenset({"queued", "downloading", "ready", "failed", "retrying", "waiting_space",
                    "evicted", "quarantined"})


def state(text: str) -> str:
    if text not in STATES:
        raise Doubt(text)
    return text


# -- where the socket is ----------------------------------------------------------------


def socket_path(options: dict[str, str]) -> str:
    """The socket the full CLI would connect to: Settings.api_socket of the settings
    load_settings makes from the same options, environment and file."""
    env = os.environ
    if any(k.startswith("PREFETCHD_") and k not in _ENV for k in env):
        raise Doubt("another PREFETCHD_ variable")
    given = dict(options)
    for var, key in _ENV.items():
        if key not in given and var in env:
            given[key] = env[var]
    if any(not v.strip() for v in given.values()):
        raise Doubt("an empty option")
    config = given.get("config")
    if config is None and os.path.isfile(DEFAULT_CONFIG):
        config = DEFAULT_CONFIG
    if config is not None:
        state_dir, sock = _from_config(config)
    else:
        state_dir, sock = _user_state_dir(env), None
    if "state_dir" in given:
        state_dir = os.path.abspath(given["state_dir"])
    return sock or os.path.join(state_dir, "api.sock")


def _from_config(config: str) -> tuple[str, str | None]:
    """The config file's state_dir and [api] socket, relative ones to its folder."""
    try:
        with open(config, "rb") as f:
            raw = f.read()
        found = _scan(raw.decode())
    except (OSError, UnicodeDecodeError) as e:
        raise Doubt(str(e)) from None
    if found is None:
        found = _toml(raw)
    state_dir, sock = found
    base = os.path.dirname(os.path.realpath(config))
    return (os.path.join(base, state_dir or DEFAULT_STATE_DIR),
            os.path.join(base, sock) if sock is not None else None)


def _toml(raw: bytes) -> tuple[str | None, str | None]:
    """The two keys by tomllib (which costs 8 ms of imports, measured: half the
    interpreter's start), for a file _scan is not sure of."""
    import tomllib

    try:
        data = tomllib.loads(raw.decode())
    except ValueError as e:
        raise Doubt(str(e)) from None
    state_dir = data.get("state_dir")
    api = data.get("api", {})
    sock = api.get("socket") if isinstance(api, dict) else None
    if not isinstance(state_dir, str | None) or not isinstance(sock, str | None):
        raise Doubt("config types")
    return state_dir, sock


_RELEVANT = {("", "state_dir"), ("api", "socket")}


def _scan(text: str) -> tuple[str | None, str | None] | None:
    """`state_dir` and `[api] socket` of a config written the plain way (bare keys,
    `[table]` headers, one-line quoted strings without escapes), as tomllib would read
    them; None when the file holds anything else that could bear on them (a quoted or
    dotted key, a multi-line string, an array of tables...): then tomllib reads it."""
    if '"""' in text or "'''" in text:
        return None
    table, found = "", {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            header = line.partition("#")[0].strip()
            parts = [part.strip() for part in header[1:-1].split(".")]
            if line.startswith("[[") or not header.endswith("]") or not all(map(_bare, parts)):
                return None
            table = ".".join(parts)
            continue
        key, eq, value = line.partition("=")
        key = key.strip()
        if not eq or not _bare(key) or (table == "" and key == "api"):
            return None
        if (table, key) in _RELEVANT:
            string = _string(value.strip())
            if string is None or (table, key) in found:
                return None
            found[table, key] = string
    return found.get(("", "state_dir")), found.get(("api", "socket"))


def _bare(key: str) -> bool:
    return bool(key) and all(c.isascii() and (c.isalnum() or c in "_-") for c in key)


def _string(value: str) -> str | None:
    """A one-line "basic" (no escapes) or 'literal' string and an optional comment."""
    if not value or value[0] not in "\"'":
        return None
    q = value[0]
    end = value.find(q, 1)
    rest = value[end + 1:].strip() if end > 0 else "x"
    body = value[1:end]
    if end < 0 or (rest and not rest.startswith("#")) or (q == '"' and "\\" in body):
        return None
    return body


def _user_state_dir(env: os._Environ[str]) -> str:
    """Without a config file: /var/lib/prefetchd for root, else the XDG state home."""
    if os.geteuid() == 0:
        return DEFAULT_STATE_DIR
    xdg = env.get("XDG_STATE_HOME", "")
    if os.path.isabs(xdg):
        return os.path.join(xdg, "prefetchd")
    home = env.get("HOME")
    if not home:
        raise Doubt("no HOME")
    return os.path.join(home, ".local/state/prefetchd")


def connect(path: str) -> _socket.socket:
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise Doubt("no daemon") from None
    sock.settimeout(None)
    return sock


# -- HTTP/1.1 over the socket ---------------------------------------------------------


class Http:
    """Requests on one kept-alive connection; an answer read whole (Content-Length or
    chunked), or streamed (`ls`)."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()  # taken from the front in place: reading stays linear

    def request(self, method: str, target: str, body: Any = None) -> tuple[int, bytes]:
        status, chunks = self.stream(method, target, body)
        return status, b"".join(chunks)

    def stream(self, method: str, target: str,
               body: Any = None) -> tuple[int, Iterator[bytes]]:
        """The status, and the body's pieces as they arrive (read them all before the
        next request)."""
        data = b"" if body is None else json.dumps(body).encode()
        head = (f"{method} {target} HTTP/1.1\r\nHost: prefetchd\r\n"
                f"Content-Length: {len(data)}\r\n")
        if body is not None:
            head += "Content-Type: application/json\r\n"
        self.sock.sendall(head.encode() + b"\r\n" + data)
        status, headers = self._head()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return status, self._chunked()
        if "content-length" in headers:
            return status, iter([self._exactly(int(headers["content-length"]))])
        return status, self._until_eof()

    def _fill(self) -> None:
        more = self.sock.recv(65536)
        if not more:
            raise ConnectionError("the daemon closed the connection")
        self.buf += more

    def _line(self) -> bytes:
        while (end := self.buf.find(b"\r\n")) < 0:
            self._fill()
        line = bytes(self.buf[:end])
        del self.buf[:end + 2]
        return line

    def _head(self) -> tuple[int, dict[str, str]]:
        status = int(self._line().split()[1])
        headers = {}
        while line := self._line():
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def _chunked(self) -> Iterator[bytes]:
        while n := int(self._line().split(b";")[0], 16):
            yield self._exactly(n)
            self._line()
        while self._line():  # trailers, then the blank line
            pass

    def _until_eof(self) -> Iterator[bytes]:
        if self.buf:
            yield bytes(self.buf)
            self.buf.clear()
        while chunk := self.sock.recv(65536):
            yield chunk


def lines_of(chunks: Iterable[bytes]) -> Iterator[str]:
    """The text lines of a body that arrives in pieces."""
    rest = b""
    for chunk in chunks:
        *whole, rest = (rest + chunk).split(b"\n")
        for line in whole:
            yield line.decode()
    if rest:
        yield rest.decode()


def array_rows(lines: Iterable[str]) -> Iterator[Any]:
    """The rows of the array `GET /v1/ls` streams (shapes.array_rows, without loading
    typing): a row per line between `[` and `]`, the comma before each row after the
    first; cut short, a ValueError."""
    for raw in lines:
        line = raw.strip()
        if line in ("", "["):
            continue
        if line in ("]", "[]"):
            return
        yield json.loads(line[1:] if line.startswith(",") else line)
    raise ValueError("the listing ended before its `]`")


# -- the call and its output ------------------------------------------------------------


def _answer(call: Call, http: Http) -> int | None:
    """Make the call and print its answer as the full CLI does, through redaction."""
    out, err = RedactingWriter(sys.stdout), RedactingWriter(sys.stderr)
    try:
        try:
            return _call(call, http, out, err)
        except Fallback:
            return None
        finally:
            try:
                out.close()
            finally:
                err.close()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return SIGPIPE_EXIT


def _version(http: Http) -> None:
    """The daemon speaks this local API, as Client.connect checks."""
    try:
        status, raw = http.request("GET", "/v1/version")
        version = json.loads(raw).get("api") if status == 200 else None
    except (OSError, ValueError):
        raise Fallback from None
    if version != API_VERSION:
        raise PrefetchError(f"the daemon at {http.sock.getpeername()} speaks local API "
                            f"{version}, this prefetchd {API_VERSION}: run the same version")


def _call(call: Call, http: Http, out: RedactingWriter, err: RedactingWriter) -> int:
    try:
        _version(http)
        if call.command == "ls":
            _ls(call, http, out)
            return 0
        raw = _send(call, http)
        _show(call, raw, out, err)
    except PrefetchError as e:
        if isinstance(e, NotReadyError) and call.command == "path":
            print(f"{PROG}: {e}", file=err, flush=True)
            return 1
        print(f"{PROG}: error: {e}", file=err)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; the daemon carries on with the download "
              "(prefetchd status shows it)", file=err)
        return 130
    return _exit(call, raw)


def _send(call: Call, http: Http) -> bytes:
    """The answer's body; its error as the class the daemon raised."""
    try:
        status, raw = http.request(*_request(call))
    except (OSError, ValueError) as e:
        if call.command == "get":
            raise Fallback from None
        raise DaemonUnavailable(f"lost the daemon at {http.sock.getpeername()}: "
                                f"{e or type(e).__name__}") from None
    if status >= 400:
        raise _error(status, raw)
    return raw


def _ls(call: Call, http: Http, out: RedactingWriter) -> None:
    """`ls` prints the rows as the daemon streams them: a million files are never held
    whole, here or there."""
    lost = f"lost the daemon at {http.sock.getpeername()}"
    try:
        status, chunks = http.stream(*_request(call))
        if status >= 400:
            raise _error(status, b"".join(chunks))
        rows = array_rows(lines_of(chunks))
        if call.given.get("json", False):
            print_json_rows(rows, out)
        else:
            for r in rows:
                for line in ls_lines(r):
                    print(line, file=out)
    except (OSError, ValueError) as e:
        if isinstance(e, BrokenPipeError):
            raise
        raise DaemonUnavailable(f"{lost}: {e or type(e).__name__}") from None


def _request(call: Call) -> tuple[str, str, Any]:
    """Method, target and body: the ids and every option given, by the API's names."""
    spec = call.spec
    given = {k: v for k, v in call.given.items() if k != "json"}  # how to print, not what
    if spec.method == "POST":
        return "POST", spec.route, {"file_ids": call.ids, **given}
    params = given
    if call.ids:
        params["file_id"] = call.ids[0]
    query = "&".join(f"{_quote(k)}={_quote('1' if v is True else str(v))}"
                     for k, v in params.items())
    return "GET", spec.route + (f"?{query}" if query else ""), None


def _quote(text: str) -> str:
    safe = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~"
    return "".join(c if c in safe else "".join(f"%{b:02X}" for b in c.encode())
                   for c in text)


def _error(status: int, raw: bytes) -> PrefetchError:
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict) or "code" not in body:
        return PrefetchError(f"the daemon answered HTTP {status}")
    return from_json(body)


def removal_of(body: dict[str, Any]) -> Removal:
    """A forget's or release's answer as the Removal the API returns."""
    from ..records import Removal

    return Removal.of_json(body)


def _show(call: Call, raw: bytes, out: RedactingWriter, err: RedactingWriter) -> None:
    command, as_json = call.command, call.given.get("json", False)
    if command == "get":
        _show_get(call, raw, out, err)
        return
    body: Any = json.loads(raw)
    if command == "path":
        print(body["path"], file=out)
    elif command in ("forget", "release"):
        for rel in body["removed"]:
            print(f"removed {rel}", file=out)
        for line in removal_of(body).kept_lines() if body.get("kept") else ():
            print(line, file=out)
    elif as_json:
        print_json(body, out)
    elif command == "status":
        for line in status_lines(body):
            print(line, file=out)
    _say_done(call, body, err)


def _say_done(call: Call, body: Any, err: RedactingWriter) -> None:
    """`wanted 3 files` for a person at a terminal; a script reads the exit code."""
    if err.isatty() and call.command in ("want", "forget"):
        count = len(body["wanted"]) if call.command == "want" else len(dict.fromkeys(call.ids))
        print(done_line(call.command, count), file=err)


def _get_rows(call: Call, raw: bytes) -> list[dict[str, Any]]:
    """The result line of a get's NDJSON stream (progress and notices are for a
    terminal, which takes the full CLI)."""
    for line in reversed(raw.splitlines()):
        if line.strip():
            msg = json.loads(line)
            if msg.get("type") == "result":
                rows: list[dict[str, Any]] = msg["results"]
                if len(rows) == len(call.ids):
                    return rows
    raise ConnectionError("the daemon stopped before the get had its result")


def _show_get(call: Call, raw: bytes, out: RedactingWriter, err: RedactingWriter) -> None:
    try:
        rows = _get_rows(call, raw)
    except ConnectionError:
        raise Fallback from None
    if call.given.get("json"):
        print_json([{"file_id": fid, "state": r["state"], "path": r["path"],
                     "error": r["error"]} for r, fid in zip(rows, call.ids, strict=True)], out)
    for r, fid in zip(rows, call.ids, strict=True):
        if r["error"] is not None:
            detail = r.get("detail")
            error = from_json(detail) if isinstance(detail, dict) else PrefetchError(r["error"])
            if error.file_id is not None:
                error.file_id = fid
            print(f"{PROG}: {get_error(fid, error)}", file=err, flush=True)
        elif not call.given.get("json"):
            print(r["path"], file=out)


def _exit(call: Call, raw: bytes) -> int:
    if call.command == "get":
        return 1 if any(r["error"] is not None for r in _get_rows(call, raw)) else 0
    return 0
