"""Content-addressed objects, temp files, atomic publish and safe paths under the root.

Every path operation below the root goes through a directory fd with O_NOFOLLOW, so
a symlink planted inside the root can never redirect a write (`paths`). Objects live
at `.prefetchd/objects/sha256/ab/cdef...` with mode 0444 (`objects`); every
materialized path is a hard link to its object, so the link count is the reference
count (`links`); partial downloads live in tmp/ (`temps`). `Store` opens the
directories once, owns the cross-process locks, and publishes: temp -> object -> link.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import sys
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cached_property
from pathlib import Path

from ..errors import NoSpaceError, PrefetchError
from .links import Links, OpenDirs
from .objects import Objects
from .paths import (
    META,
    check_sha256,
    default_link,
    id_component,
    key_of,
    listdir_at,
    open_dir,
    safe_name,
    validate_dest,
)
from .readonly import idle_shared, open_existing
from .temps import Meta, Partial, Temps

__all__ = ["META", "OpenDirs", "Partial", "Store", "check_sha256", "default_link", "id_component",
           "key_of", "listdir_at", "lock_offset", "safe_name", "validate_dest"]

_syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)  # Linux; not in `os`


class _Flock(ctypes.Structure):
    """struct flock on 64-bit Linux (off_t of 64 bits)."""

    _fields_ = (("l_type", ctypes.c_short), ("l_whence", ctypes.c_short),
                ("l_start", ctypes.c_int64), ("l_len", ctypes.c_int64),
                ("l_pid", ctypes.c_int32))


# fcntl(F_SETLK) through a ctypes.PyDLL function: called with the GIL held. F_SETLK
# never blocks, and Python's own fcntl.lockf releases the GIL around it: on the
# event loop (twice a download), taking the GIL back from the committer's thread
# costs more than the call. Only on 64-bit Linux, where struct flock is the one above.
_fcntl_gil = (getattr(ctypes.PyDLL(None, use_errno=True), "fcntl", None)
              if sys.platform.startswith("linux") and ctypes.sizeof(ctypes.c_void_p) == 8
              else None)


def _call_syncfs(fd: int) -> None:
    if _syncfs(fd) != 0:  # type: ignore[misc]
        err = ctypes.get_errno()
        raise OSError(err, f"syncfs: {os.strerror(err)}")


def lock_offset(key: str) -> int:
    return zlib.crc32(key.encode()) & 0x3FFFFFFF


class Store:
    """The root directory: objects, temps, locks and materialized paths."""

    def __init__(self, root: Path, *, read_only: bool = False) -> None:
        """Open the root for the daemon and writers, creating what is missing; with
        `read_only` (use `open_read_only`), open only what exists and create nothing."""
        self.read_only = read_only
        self._parallel: ThreadPoolExecutor | None = None
        if read_only:
            self.root = root.resolve()
            self.root_fd, self.objects_fd = open_existing(self.root)
            self.meta_fd = self.tmp_fd = self.quarantine_fd = self._lock_fd = -1
            return
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()
        self.root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.meta_fd = open_dir(self.root_fd, META, True)
        objects = open_dir(self.meta_fd, "objects", True)
        self.objects_fd = open_dir(objects, "sha256", True)
        os.close(objects)
        self.tmp_fd = open_dir(self.meta_fd, "tmp", True)
        self.quarantine_fd = open_dir(self.meta_fd, "quarantine", True)
        self._lock_fd = os.open(
            "locks", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
            dir_fd=self.meta_fd,
        )

    @classmethod
    def open_read_only(cls, root: Path) -> Store:
        """The read side (objects, object_stat, linked, idle) over whatever of the root
        exists; the write side (temps, locks, publish) is not opened."""
        return cls(root, read_only=True)

    # The parts, made on first use from the fds (a read-only store has only root_fd and
    # objects_fd, and uses only the methods that need those).

    @cached_property
    def _objects(self) -> Objects:
        return Objects(self.objects_fd)

    @cached_property
    def _links(self) -> Links:
        return Links(self.root, self.root_fd, self._objects)

    @cached_property
    def _temps(self) -> Temps:
        return Temps(self.tmp_fd, lock=self.lock_key, unlock=self.unlock_key,
                     in_parallel=self.in_parallel)

    def in_parallel(self, fn: Callable[..., object], *args: object) -> Future[object]:
        """Run `fn` on the store's helper threads (hashing beside writing)."""
        if self._parallel is None:
            self._parallel = ThreadPoolExecutor(max_workers=os.cpu_count() or 2,
                                                thread_name_prefix="prefetchd-hash")
        return self._parallel.submit(fn, *args)

    def close(self) -> None:
        if self._parallel is not None:
            self._parallel.shutdown(wait=True)
            self._parallel = None
        for fd in (self._lock_fd, self.quarantine_fd, self.tmp_fd, self.objects_fd,
                   self.meta_fd, self.root_fd):
            if fd >= 0:
                os.close(fd)

    # -- cross-process single flight ------------------------------------------------

    def lock_key(self, key: str) -> bool:
        """Try to take the lock that says "this process downloads `key`" (a byte-range
        lock on .prefetchd/locks, freed by the kernel on kill -9); False if another
        process holds it. Never blocks, so a waiting caller stays cancellable.
        In-process single flight is the caller's job: POSIX record locks are per process.
        """
        if _fcntl_gil is not None:
            return self._setlk(fcntl.F_WRLCK, key, may_fail=True)
        try:
            fcntl.lockf(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, lock_offset(key),
                        os.SEEK_SET)
        except OSError:
            return False
        return True

    def _setlk(self, kind: int, key: str, may_fail: bool) -> bool:
        """fcntl(F_SETLK) of `key`'s byte with the GIL held (see _fcntl_gil)."""
        assert _fcntl_gil is not None
        lock = _Flock(kind, os.SEEK_SET, lock_offset(key), 1, 0)
        if _fcntl_gil(self._lock_fd, fcntl.F_SETLK, ctypes.byref(lock)) == 0:
            return True
        err = ctypes.get_errno()
        if may_fail and err in (errno.EACCES, errno.EAGAIN):
            return False
        raise OSError(err, os.strerror(err))

    def idle(self, key: str) -> bool:
        """Whether no other process holds `key`'s lock (nobody downloads it there)."""
        if self.read_only:
            return idle_shared(self.root_fd, lock_offset(key))
        if not self.lock_key(key):
            return False
        self.unlock_key(key)
        return True

    def unlock_key(self, key: str) -> None:
        if _fcntl_gil is not None:
            self._setlk(fcntl.F_UNLCK, key, may_fail=False)
            return
        fcntl.lockf(self._lock_fd, fcntl.LOCK_UN, 1, lock_offset(key), os.SEEK_SET)

    # -- objects (see objects.py) -----------------------------------------------------

    def object_stat(self, sha: str) -> os.stat_result | None:
        return self._objects.stat(sha) if self.objects_fd >= 0 else None

    def object_path(self, sha: str) -> Path:
        return self.root / META / "objects" / "sha256" / sha[:2] / sha[2:]

    def objects(self) -> Iterator[tuple[str, os.stat_result]]:
        return self._objects.all() if self.objects_fd >= 0 else iter(())

    def hash_object(self, sha: str) -> str:
        return self._objects.hash(sha)

    def quarantine(self, sha: str) -> None:
        """Move a bad object aside (kept for inspection, never served again)."""
        self._objects.move_to(sha, self.quarantine_fd)

    def unreferenced(self, min_age: float = 600.0) -> list[str]:
        return self._objects.unreferenced(min_age)

    def remove_object(self, sha: str) -> bool:
        return self._objects.remove(sha)

    # -- materialized paths (see links.py) --------------------------------------------

    def link(self, sha: str, rel: str, sync: bool = True) -> Path:
        return self._links.link(sha, rel, sync)

    def linked(self, sha: str, rel: str) -> bool:
        return self.root_fd >= 0 and self.objects_fd >= 0 and self._links.linked(sha, rel)

    def unlink(self, rel: str, sha: str | None) -> bool:
        return self._links.unlink(rel, sha)

    def take_made_dirs(self) -> list[str]:
        """The directories made for links since the last call (for the manifest)."""
        made, self._links.made[:] = list(self._links.made), []
        return made

    def remove_empty_dirs(self, rel: str, made: set[str]) -> list[str]:
        return self._links.remove_empty_dirs(rel, made)

    def stray_links(self, accounted: dict[str, set[str]], dirs: set[str],
                    min_age: float = 600.0, now: float | None = None) -> list[tuple[str, str]]:
        return self._links.stray_links(accounted, dirs, min_age, now)

    # -- temps (see temps.py) ---------------------------------------------------------

    def partial_keys(self) -> set[str]:
        return self._temps.partial_keys()

    def new_partial(self, key: str) -> Partial:
        return self._temps.new_partial(key)

    def open_partial(self, key: str) -> Partial:
        return self._temps.open_partial(key)

    def partial_meta(self, key: str) -> Meta:
        return self._temps.partial_meta(key)

    def discard_temp(self, part_name: str, with_meta: bool = True) -> None:
        self._temps.discard_temp(part_name, with_meta)

    def discard_partials(self, key: str) -> int:
        return self._temps.discard_partials(key)

    def reap_temps(self, keep_keys: set[str], max_age: float, now: float | None = None) -> int:
        return self._temps.reap(keep_keys, max_age, now)

    # -- publish ----------------------------------------------------------------------

    def publish(self, part: Partial, sha: str, sync: bool = True) -> None:
        """Move a finished temp into objects/ (atomic, no replace); dedupe if it exists.
        `sync=False` leaves the directory's fsync to the caller (see sync_then_link)."""
        self._objects.add(self.tmp_fd, part.name, sha, sync)
        self.discard_temp(part.name, part.meta_saved)

    def _publish_and_link(self, part: Partial, sha: str, rel: str,
                          dirs: OpenDirs | None = None) -> None:
        """publish + link without directory fsyncs (sync_then_link makes them durable):
        the destination is linked from the temp while it is still there when the temp
        became the object, so the object's directory is opened once (with `dirs`: once
        for the run of group commits)."""
        added = None
        if dirs is not None:
            try:
                added = self._objects.add_at(dirs.object_dir(sha), self.tmp_fd, part.name,
                                             sha)
            except FileNotFoundError:  # its directory went away during the run (or the
                dirs.reset()           # temp did: then add() below says so again)
        if added is None:
            added = self._objects.add(self.tmp_fd, part.name, sha, False)
        if added:
            self._links.link_new(self.tmp_fd, part.name, sha, rel, dirs)
        else:  # the same bytes were stored already: link that object, not this temp
            self.link(sha, rel, sync=False)
        self.discard_temp(part.name, part.meta_saved)

    @property
    def batches(self) -> bool:
        """Whether sync_then_link can make many files durable with one flush (syncfs)."""
        return _syncfs is not None

    def link_dirs(self) -> OpenDirs:
        """Directories for a run of sync_then_link calls to keep open (close() it)."""
        return OpenDirs(self.root_fd, self.objects_fd)

    def sync_then_link(self, items: list[tuple[Partial, str, str]],
                       dirs: OpenDirs | None = None) -> list[BaseException | None]:
        """Write the bodies held in memory (Partial.hold) to their temps, one syncfs,
        then publish and link finished temps (closed unsynced, see
        Partial.finish(sync=False)); returns per item None or the error that stopped it
        (its temp is then removed). `dirs`: the directories kept open across calls.

        The syncfs makes every temp's bytes durable before any is linked, and makes
        the directories linked by the previous call durable: the group commit records
        a batch ready after the next call's syncfs. So n batches cost n+1 disk flushes,
        where one file at a time costs three flushes a file.
        """
        errors: list[BaseException | None] = [None] * len(items)
        for i, (part, _sha, _rel) in enumerate(items):
            if part.held is not None:
                try:
                    part.write_held()
                except (OSError, PrefetchError) as e:  # this file only; the batch goes on
                    errors[i] = self._unpublished(part, e)
        _call_syncfs(self.root_fd)
        with dirs if dirs is not None else contextlib.nullcontext():
            for i, (part, sha, rel) in enumerate(items):
                if errors[i] is not None:
                    continue
                try:
                    self._publish_and_link(part, sha, rel, dirs)
                except (OSError, PrefetchError) as e:  # this file only; the batch goes on
                    errors[i] = self._unpublished(part, e)
        return errors

    def _unpublished(self, part: Partial, e: OSError | PrefetchError) -> BaseException:
        """Remove a temp that could not be published; the error its waiter gets."""
        self.discard_temp(part.name)
        if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            return NoSpaceError("no space left on the root's filesystem")
        return e
