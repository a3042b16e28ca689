"""Content-addressed objects, temp files, atomic publish and safe paths under the root.

Every path operation below the root goes through a directory fd with O_NOFOLLOW, so
a symlink planted inside the root can never redirect a write (`paths`). Objects live
at `.prefetchd/objects/sha256/ab/cdef...` with mode 0444 (`objects`); every
materialized path is a hard link to its object, so the link count is the reference
count (`links`); partial downloads live in tmp/ (`temps`). `Store` opens the
directories once, owns the cross-process locks, and publishes: temp -> object -> link.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from ..errors import NoSpaceError, PrefetchError
from .links import Links
from .objects import Objects
from .paths import (
    META,
    check_sha256,
    id_component,
    key_of,
    listdir_at,
    open_dir,
    safe_name,
    validate_dest,
)
from .temps import Meta, Partial, Temps

__all__ = ["META", "Partial", "Store", "check_sha256", "id_component", "key_of", "listdir_at",
           "safe_name", "validate_dest"]

_syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)  # Linux; not in `os`


def _call_syncfs(fd: int) -> None:
    if _syncfs(fd) != 0:  # type: ignore[misc]
        err = ctypes.get_errno()
        raise OSError(err, f"syncfs: {os.strerror(err)}")


def _lock_offset(key: str) -> int:
    return zlib.crc32(key.encode()) & 0x3FFFFFFF


class Store:
    """The root directory: objects, temps, locks and materialized paths."""

    def __init__(self, root: Path) -> None:
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
        self._parallel: ThreadPoolExecutor | None = None
        self._objects = Objects(self.objects_fd, self.quarantine_fd)
        self._links = Links(self.root, self.root_fd, self._objects)
        self._temps = Temps(self.tmp_fd, lock=self.lock_key, unlock=self.unlock_key,
                            in_parallel=self.in_parallel)
        # The parts' operations, under the names every room uses.
        self.object_stat = self._objects.stat
        self.hash_object = self._objects.hash
        self.quarantine = self._objects.quarantine
        self.objects = self._objects.all
        self.unreferenced = self._objects.unreferenced
        self.remove_object = self._objects.remove
        self.make_parents = self._links.make_parents
        self.link = self._links.link
        self.linked = self._links.linked
        self.unlink = self._links.unlink
        self.stray_links = self._links.stray_links
        self.partial_keys = self._temps.partial_keys
        self.new_partial = self._temps.new_partial
        self.open_partial = self._temps.open_partial
        self.discard_temp = self._temps.discard_temp
        self.partial_meta = self._temps.partial_meta
        self.discard_partials = self._temps.discard_partials
        self.reap_temps = self._temps.reap

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
            os.close(fd)

    # -- cross-process single flight ------------------------------------------------

    def lock_key(self, key: str) -> bool:
        """Try to take the lock that says "this process downloads `key`" (a byte-range
        lock on .prefetchd/locks, freed by the kernel on kill -9); False if another
        process holds it. Never blocks, so a waiting caller stays cancellable.
        In-process single flight is the caller's job: POSIX record locks are per process.
        """
        try:
            fcntl.lockf(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _lock_offset(key),
                        os.SEEK_SET)
        except OSError:
            return False
        return True

    def unlock_key(self, key: str) -> None:
        fcntl.lockf(self._lock_fd, fcntl.LOCK_UN, 1, _lock_offset(key), os.SEEK_SET)

    def _write_meta(self, part_name: str, meta: Meta) -> None:
        self._temps.write_meta(part_name, meta)

    # -- publish ----------------------------------------------------------------------

    def object_path(self, sha: str) -> Path:
        return self.root / META / "objects" / "sha256" / sha[:2] / sha[2:]

    def publish(self, part: Partial, sha: str, sync: bool = True) -> None:
        """Move a finished temp into objects/ (atomic, no replace); dedupe if it exists.
        `sync=False` leaves the directory's fsync to the caller (see sync_then_link)."""
        self._objects.add(self.tmp_fd, part.name, sha, sync)
        self.discard_temp(part.name, part.meta_saved)

    @property
    def batches(self) -> bool:
        """Whether sync_then_link can make many files durable with one flush (syncfs)."""
        return _syncfs is not None

    def sync_then_link(self, items: list[tuple[Partial, str, str]]) -> list[BaseException | None]:
        """One syncfs, then publish and link finished temps (closed unsynced, see
        Partial.finish(sync=False)); returns per item None or the error that stopped it
        (its temp is then removed).

        The syncfs makes every temp's bytes durable before any is linked, and makes
        the directories linked by the previous call durable: the group commit records
        a batch ready after the next call's syncfs. So n batches cost n+1 disk flushes,
        where one file at a time costs three flushes a file.
        """
        _call_syncfs(self.root_fd)
        errors: list[BaseException | None] = []
        for part, sha, rel in items:
            try:
                self.publish(part, sha, sync=False)
                self.link(sha, rel, sync=False)
                errors.append(None)
            except (OSError, PrefetchError) as e:  # this file only; the batch goes on
                self.discard_temp(part.name)
                errors.append(NoSpaceError("no space left on the root's filesystem")
                              if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
                              else e)
        return errors
