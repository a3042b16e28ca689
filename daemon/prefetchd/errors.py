"""Every public error: a stable `code`, an exit code, and its attributes, to and from JSON.

What an error is about travels as attributes (`file_id`, `status`, `expected`,
`actual`, `limit`, `path`), so a caller acts on them without parsing the message.
Classes whose message follows one pattern build it from those attributes when no
message is given; the others take the message their raise site words. Messages
never contain secrets: providers build them from status codes, file_ids and paths
only.

Each class names its `code` (stable: scripts and the local API's clients match on
it) and the `fields` it carries beyond `file_id` and `path`. The local API answers
an error with `to_json()`: `{"error", "code", "exit_code", "file_id", "path",
...fields}`; a client rebuilds the same class with the same attributes by
`from_json()`. This module imports nothing of prefetchd, so that the CLI's socket
path can rebuild errors without loading the engine.

    PrefetchError                   error           exit 1
    ├── ConfigError                 config          exit 2
    ├── UsageError                  usage           exit 2
    │   ├── BadRequest              bad_request     exit 2 (also a ValueError)
    │   └── UnsafePathError         unsafe_path     exit 2
    ├── NotReadyError               not_ready
    ├── NoStateError                no_state
    ├── DaemonUnavailable           daemon_unavailable
    ├── Forbidden                   forbidden
    ├── DownloadError               download        status, retry_after
    │   ├── TransientError          transient
    │   │   └── NoSpaceError        no_space        need_bytes, at_least, free, limit
    │   ├── PermanentError          permanent
    │   │   ├── NotFoundError       not_found
    │   │   ├── SizeMismatchError   size_mismatch   expected, actual, announced
    │   │   ├── LimitError          limit           limit, actual
    │   │   └── TooLargeError       too_large       need_bytes, capacity, limit, at_least
    │   └── HashMismatchError       hash_mismatch   expected, actual
    ├── StoreError                  store
    ├── TimeoutExpired              timeout
    └── GaveUpError                 gave_up         patience
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is not loaded at run time: the CLI's socket path imports this
    from typing import Any, ClassVar

_CLASSES: dict[str, type[PrefetchError]] = {}


def human_size(n: float, *, column: bool = False) -> str:
    """Bytes with a binary unit, the one formatter of every size a person reads. In a
    line (errors, MCP progress): `100 MiB`, `1.5 GiB`, `512 bytes`; for a column or a
    rate (`column`: ls, stats, status, fleet status, get's progress): always one
    decimal, `100.0 MiB`, `1.5 GiB`, `512 B`, so that figures line up."""
    if abs(n) < 1024:
        return f"{n:.0f} B" if column else f"{n} bytes"
    value, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB", "TiB"):
        if abs(value) < 1024:
            break
        value, unit = value / 1024, bigger
    figure = f"{value:.1f}"
    return f"{figure if column else figure.removesuffix('.0')} {unit}"


class PrefetchError(Exception):
    """Base of every error prefetchd reports to a user. Exit code 1.

    `file_id` and `path` name what the error is about, when one is known.
    """

    code: ClassVar[str] = "error"
    exit_code: ClassVar[int] = 1
    fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, message: str = "", *, file_id: str | None = None,
                 path: str | None = None) -> None:
        super().__init__(message)
        self.file_id = file_id
        self.path = path

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "code" not in cls.__dict__:
            raise TypeError(f"{cls.__name__}: a public error names its own stable `code`")
        if cls.code in _CLASSES:
            raise TypeError(f"{cls.__name__}: code {cls.code!r} is taken by "
                            f"{_CLASSES[cls.code].__name__}")
        _CLASSES[cls.code] = cls

    @classmethod
    def all_fields(cls) -> tuple[str, ...]:
        """Every attribute this class carries beyond file_id and path, base first."""
        seen: dict[str, None] = {}
        for klass in reversed(cls.__mro__):
            for name in klass.__dict__.get("fields", ()):
                seen[name] = None
        return tuple(seen)

    def to_json(self) -> dict[str, Any]:
        """The error as the local API sends it."""
        body: dict[str, Any] = {"error": str(self), "code": self.code,
                                "exit_code": self.exit_code, "file_id": self.file_id,
                                "path": None if self.path is None else str(self.path)}
        for name in self.all_fields():
            body[name] = getattr(self, name, None)
        return body


_CLASSES[PrefetchError.code] = PrefetchError


def error_classes() -> dict[str, type[PrefetchError]]:
    """Every public error class by its code."""
    return dict(_CLASSES)


def from_json(body: dict[str, Any]) -> PrefetchError:
    """The error `to_json()` made: the class of its `code` (PrefetchError for a code
    this version does not know, keeping the message and exit code), with its
    attributes, without running the class's constructor (its message is given)."""
    cls = _CLASSES.get(str(body.get("code")), PrefetchError)
    error = cls.__new__(cls)
    Exception.__init__(error, str(body.get("error", "")))
    error.file_id = body.get("file_id")
    error.path = body.get("path")
    for name in cls.all_fields():
        setattr(error, name, body.get(name))
    if cls is PrefetchError and body.get("exit_code") not in (None, 1):
        error.exit_code = int(body["exit_code"])  # type: ignore[misc] # an unknown code's
    return error


class ConfigError(PrefetchError):
    """Bad config file, environment or credential. Exit code 2."""

    code = "config"
    exit_code = 2


class UsageError(PrefetchError):
    """Bad arguments or request values (a bad dest, a bad hash). Exit code 2."""

    code = "usage"
    exit_code = 2


class BadRequest(UsageError, ValueError):
    """A request refused before anything changed (a bad sha256, `pin="no"`, a bad
    timeout): exit code 2, and a ValueError, as a Python caller expects of a bad
    argument. The API raises it in-process and through the daemon's socket alike."""

    code = "bad_request"


class NotReadyError(PrefetchError):
    """`path` of an id that is not ready, or not in the manifest. Exit code 1."""

    code = "not_ready"


class NoStateError(PrefetchError):
    """A read-only command found no manifest to read (nothing created it yet)."""

    code = "no_state"


class DaemonUnavailable(PrefetchError):
    """No daemon answers at the socket and this process cannot work without one (the
    state dir is not writable), or the daemon went away during a call. Exit code 1."""

    code = "daemon_unavailable"


class Forbidden(PrefetchError):
    """The daemon refused the call to this user (403); the message names the group
    that may make it. Exit code 1."""

    code = "forbidden"


class UnsafePathError(UsageError):
    """A path that would escape the root, follow a symlink or touch .prefetchd/."""

    code = "unsafe_path"


class DownloadError(PrefetchError):
    """A download failed; `transient` says whether retrying can help.

    `status` is the HTTP status that said so, if one did; `retry_after` the seconds
    the server asked to wait. `recorded` is set once the engine has written the
    failure on the entry, so no outer layer records it twice.
    """

    code = "download"
    fields: ClassVar[tuple[str, ...]] = ("status", "retry_after")
    transient = False
    recorded = False

    def __init__(self, message: str = "", *, retry_after: float | None = None,
                 status: int | None = None, file_id: str | None = None,
                 path: str | None = None) -> None:
        super().__init__(message, file_id=file_id, path=path)
        self.retry_after = retry_after
        self.status = status
        self.recorded = False


class TransientError(DownloadError):
    """Connection reset, timeout, stall, 408, 429, 5xx: try again later."""

    code = "transient"
    transient = True


class PermanentError(DownloadError):
    """401, 403, 404, 410, glm, a broken limit: retrying will not help."""

    code = "permanent"


class NotFoundError(PermanentError):
    """The provider says the file does not exist (404, 410): a fallback may have it."""

    code = "not_found"


class HashMismatchError(DownloadError):
    """The bytes do not hash to what was expected. Transient once, permanent if it repeats."""

    code = "hash_mismatch"
    fields = ("expected", "actual")
    transient = True

    def __init__(self, message: str | None = None, *, file_id: str | None = None,
                 expected: str | None = None, actual: str | None = None) -> None:
        self.expected = expected
        self.actual = actual
        if message is None:
            message = (f"{file_id}: sha256 {(actual or '')[:16]}... does not match the "
                       f"expected {(expected or '')[:16]}...")
        super().__init__(message, file_id=file_id)


class SizeMismatchError(PermanentError):
    """The size the provider announced (`announced`) or the bytes received differ
    from the size the request gave (`expected`)."""

    code = "size_mismatch"
    fields = ("expected", "actual", "announced")

    def __init__(self, *, file_id: str, expected: int, actual: int, announced: bool) -> None:
        self.expected = expected
        self.actual = actual
        self.announced = announced
        what = f"the provider announces {actual} bytes" if announced else f"got {actual} bytes"
        super().__init__(f"{file_id}: {what}, the request says {expected}", file_id=file_id)


class LimitError(PermanentError):
    """A size or type limit from [limits] was broken (`limit`, and `actual` when a size)."""

    code = "limit"
    fields = ("limit", "actual")

    def __init__(self, message: str = "", *, file_id: str | None = None,
                 limit: int | None = None, actual: int | None = None) -> None:
        super().__init__(message, file_id=file_id)
        self.limit = limit
        self.actual = actual


class NoSpaceError(TransientError):
    """The filesystem is full (ENOSPC) or the min_free_bytes reserve would be crossed.

    `need_bytes` is what the download needs; with `at_least` it is only a lower bound
    (ENOSPC while the total was unknown), which never justifies evicting other files:
    nobody knows whether the download would fit once they are gone. With `free` (the
    bytes free when the check refused) the message is built from the attributes;
    `limit` is the min_free_bytes reserve.
    """

    code = "no_space"
    fields = ("need_bytes", "at_least", "free", "limit")

    def __init__(self, message: str | None = None, *, need_bytes: int = 0,
                 at_least: bool = False, file_id: str | None = None,
                 free: int | None = None, limit: int = 0) -> None:
        self.need_bytes = need_bytes
        self.at_least = at_least
        self.free = free
        self.limit = limit
        if message is None:
            message = self._describe(file_id)
        super().__init__(message, file_id=file_id)

    def _describe(self, file_id: str | None) -> str:
        free = max(self.free or 0, 0)
        if self.at_least:
            text = (f"{file_id}: filled the disk at {human_size(self.need_bytes - 1)} before; "
                    f"needs more than that, {human_size(free)} free")
        else:
            text = f"{file_id}: needs {human_size(self.need_bytes)}, {human_size(free)} free"
        return text + (f", reserve min_free_bytes {human_size(self.limit)}" if self.limit else "")


class TooLargeError(PermanentError):
    """The file cannot fit on the root's filesystem even with the store empty.

    `capacity` is the filesystem's size less the min_free_bytes reserve (`limit`);
    `need_bytes` is a lower bound with `at_least`.
    """

    code = "too_large"
    fields = ("need_bytes", "capacity", "limit", "at_least")

    def __init__(self, message: str | None = None, *, need_bytes: int, capacity: int,
                 file_id: str | None = None, limit: int = 0, at_least: bool = False) -> None:
        self.need_bytes = need_bytes
        self.capacity = capacity
        self.limit = limit
        self.at_least = at_least
        if message is None:
            shown = need_bytes - 1 if at_least else need_bytes
            message = (f"{file_id}: needs {'more than ' if at_least else ''}{human_size(shown)}"
                       f", the filesystem holds {human_size(capacity + limit)}"
                       + (f" and min_free_bytes keeps {human_size(limit)} free" if limit else ""))
        super().__init__(message, file_id=file_id)


class StoreError(PrefetchError):
    """The store refused an operation (dest taken by a foreign file, corrupt object)."""

    code = "store"


class TimeoutExpired(PrefetchError):
    """`get --timeout` ran out before the files were ready."""

    code = "timeout"


class GaveUpError(PrefetchError):
    """`get` stopped waiting on an entry that kept failing transiently for longer than
    download.get_patience (the daemon, if one runs, keeps trying)."""

    code = "gave_up"
    fields = ("patience",)

    def __init__(self, message: str, *, file_id: str, patience: float) -> None:
        super().__init__(message, file_id=file_id)
        self.patience = patience
