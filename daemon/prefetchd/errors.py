"""Error classes: each carries what a user needs to act, and maps to an exit code.

What an error is about travels as attributes (`file_id`, `status`, `expected`,
`actual`, `limit`, `path`), so a caller acts on them without parsing the message.
Classes whose message follows one pattern build it from those attributes when no
message is given; the others take the message their raise site words. Messages
never contain secrets: providers build them from status codes, file_ids and paths
only.
"""

from __future__ import annotations


def human_size(n: int) -> str:
    """Bytes for an error line: `100 MiB`, `1.5 GiB`, `512 bytes`."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"


class PrefetchError(Exception):
    """Base of every error prefetchd reports to a user. Exit code 1.

    `file_id` and `path` name what the error is about, when one is known.
    """

    exit_code = 1

    def __init__(self, message: str = "", *, file_id: str | None = None,
                 path: str | None = None) -> None:
        super().__init__(message)
        self.file_id = file_id
        self.path = path


class ConfigError(PrefetchError):
    """Bad config file, environment or credential. Exit code 2."""

    exit_code = 2


class UsageError(PrefetchError):
    """Bad arguments or request values (a bad dest, a bad hash). Exit code 2."""

    exit_code = 2


class BadRequest(UsageError, ValueError):
    """A request refused before anything changed (a bad sha256, `pin="no"`, a bad
    timeout): exit code 2, and a ValueError, as a Python caller expects of a bad
    argument. The API raises it in-process and through the daemon's socket alike."""


class NotReadyError(PrefetchError):
    """`path` of an id that is not ready, or not in the manifest. Exit code 1."""


class UnsafePathError(UsageError):
    """A path that would escape the root, follow a symlink or touch .prefetchd/."""


class DownloadError(PrefetchError):
    """A download failed; `transient` says whether retrying can help.

    `status` is the HTTP status that said so, if one did; `retry_after` the seconds
    the server asked to wait. `recorded` is set once the engine has written the
    failure on the entry, so no outer layer records it twice.
    """

    transient = False

    def __init__(self, message: str = "", *, retry_after: float | None = None,
                 status: int | None = None, file_id: str | None = None,
                 path: str | None = None) -> None:
        super().__init__(message, file_id=file_id, path=path)
        self.retry_after = retry_after
        self.status = status
        self.recorded = False


class TransientError(DownloadError):
    """Connection reset, timeout, stall, 408, 429, 5xx: try again later."""

    transient = True


class PermanentError(DownloadError):
    """401, 403, 404, 410, glm, a broken limit: retrying will not help."""


class NotFoundError(PermanentError):
    """The provider says the file does not exist (404, 410): a fallback may have it."""


class HashMismatchError(DownloadError):
    """The bytes do not hash to what was expected. Transient once, permanent if it repeats."""

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

    def __init__(self, *, file_id: str, expected: int, actual: int, announced: bool) -> None:
        self.expected = expected
        self.actual = actual
        what = f"the provider announces {actual} bytes" if announced else f"got {actual} bytes"
        super().__init__(f"{file_id}: {what}, the request says {expected}", file_id=file_id)


class LimitError(PermanentError):
    """A size or type limit from [limits] was broken (`limit`, and `actual` when a size)."""

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

    def __init__(self, message: str | None = None, *, need_bytes: int, capacity: int,
                 file_id: str | None = None, limit: int = 0, at_least: bool = False) -> None:
        self.need_bytes = need_bytes
        self.capacity = capacity
        self.limit = limit
        if message is None:
            shown = need_bytes - 1 if at_least else need_bytes
            message = (f"{file_id}: needs {'more than ' if at_least else ''}{human_size(shown)}"
                       f", the filesystem holds {human_size(capacity + limit)}"
                       + (f" and min_free_bytes keeps {human_size(limit)} free" if limit else ""))
        super().__init__(message, file_id=file_id)


class StoreError(PrefetchError):
    """The store refused an operation (dest taken by a foreign file, corrupt object)."""


class TimeoutExpired(PrefetchError):
    """`get --timeout` ran out before the files were ready."""


class Deferred(PrefetchError):
    """Another host of the fleet is downloading this file: the entry stays queued and
    is looked at again later (not a failure, no event)."""
