"""Error classes: each carries what a user needs to act, and maps to an exit code.

Messages never contain secrets: providers build them from status codes, file_ids
and paths only.
"""

from __future__ import annotations


class PrefetchError(Exception):
    """Base of every error prefetchd reports to a user. Exit code 1."""

    exit_code = 1


class ConfigError(PrefetchError):
    """Bad config file, environment or credential. Exit code 2."""

    exit_code = 2


class UsageError(PrefetchError):
    """Bad arguments or request values (a bad dest, a bad hash). Exit code 2."""

    exit_code = 2


class UnsafePathError(UsageError):
    """A path that would escape the root, follow a symlink or touch .prefetchd/."""


class DownloadError(PrefetchError):
    """A download failed; `transient` says whether retrying can help."""

    transient = False

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


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


class LimitError(PermanentError):
    """A size or type limit from [limits] was broken."""


class NoSpaceError(TransientError):
    """The filesystem is full (ENOSPC) or the min_free_bytes reserve would be crossed.

    `need_bytes` is what the download needs; with `at_least` it is only a lower bound
    (ENOSPC while the total was unknown), which never justifies evicting other files:
    nobody knows whether the download would fit once they are gone.
    """

    def __init__(self, message: str, *, need_bytes: int = 0, at_least: bool = False) -> None:
        super().__init__(message)
        self.need_bytes = need_bytes
        self.at_least = at_least


class TooLargeError(PermanentError):
    """The file cannot fit on the root's filesystem even with the store empty."""

    def __init__(self, message: str, *, need_bytes: int, capacity: int) -> None:
        super().__init__(message)
        self.need_bytes = need_bytes
        self.capacity = capacity


class StoreError(PrefetchError):
    """The store refused an operation (dest taken by a foreign file, corrupt object)."""


class TimeoutExpired(PrefetchError):
    """`get --timeout` ran out before the files were ready."""
