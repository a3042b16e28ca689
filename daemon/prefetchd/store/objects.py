"""Content-addressed objects: `.prefetchd/objects/sha256/ab/cdef...`, mode 0444.

Every materialized path is a hard link to its object, so an object's link count
minus one is how many paths use it; an object with one link is unreferenced.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import UnsafePathError
from .paths import fsync_dir, hash_fd, listdir_at, open_dir


class Objects:
    """The objects/sha256/ directory, given by an open fd."""

    def __init__(self, objects_fd: int) -> None:
        self.objects_fd = objects_fd

    def dir_of(self, sha: str, create: bool) -> int:
        """An fd of the `ab/` directory of object `sha`; the caller closes it."""
        return open_dir(self.objects_fd, sha[:2], create)

    @contextmanager
    def entry(self, sha: str) -> Iterator[tuple[int, os.stat_result] | None]:
        """The open objects/ab/ directory and the object's lstat there, or None if the
        object (or its directory) is absent; the directory is closed on exit."""
        try:
            d = self.dir_of(sha, False)
        except FileNotFoundError:
            yield None
            return
        try:
            try:
                st: os.stat_result | None = os.stat(sha[2:], dir_fd=d, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            yield None if st is None else (d, st)
        finally:
            os.close(d)

    def stat(self, sha: str) -> os.stat_result | None:
        with self.entry(sha) as entry:
            return entry[1] if entry is not None and stat.S_ISREG(entry[1].st_mode) else None

    def add(self, tmp_fd: int, name: str, sha: str, sync: bool) -> bool:
        """Link temp `name` in as object `sha` (atomic, no replace); the same bytes
        already stored are kept. `sync=False` leaves the directory's fsync to the caller.
        Returns whether the temp became the object (False: it was already stored)."""
        d = self.dir_of(sha, True)
        try:
            try:
                os.link(name, sha[2:], src_dir_fd=tmp_fd, dst_dir_fd=d, follow_symlinks=False)
                added = True
            except FileExistsError:
                added = False  # same bytes already stored: the temp is simply dropped
            if sync:
                fsync_dir(d)
        finally:
            os.close(d)
        return added

    @staticmethod
    def add_at(d: int, tmp_fd: int, name: str, sha: str) -> bool:
        """add() into `d`, the object's open `ab/` directory (see OpenDirs), unsynced."""
        try:
            os.link(name, sha[2:], src_dir_fd=tmp_fd, dst_dir_fd=d, follow_symlinks=False)
        except FileExistsError:
            return False  # same bytes already stored: the temp is simply dropped
        return True

    def hash(self, sha: str) -> str:
        d = self.dir_of(sha, False)
        try:
            fd = os.open(sha[2:], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d)
        finally:
            os.close(d)
        try:
            return hash_fd(fd)
        finally:
            os.close(fd)

    def move_to(self, sha: str, dir_fd: int) -> None:
        """Move object `sha` into directory `dir_fd`, named `<sha>.<unix time>`."""
        d = self.dir_of(sha, False)
        try:
            os.rename(sha[2:], f"{sha}.{int(time.time())}", src_dir_fd=d, dst_dir_fd=dir_fd)
            fsync_dir(d)
        finally:
            os.close(d)

    def all(self) -> Iterator[tuple[str, os.stat_result]]:
        for prefix in listdir_at(self.objects_fd):
            try:
                d = open_dir(self.objects_fd, prefix, False)
            except (UnsafePathError, FileNotFoundError):
                continue
            try:
                yield from _regular_files(d, prefix)
            finally:
                os.close(d)

    def unreferenced(self, min_age: float = 600.0) -> list[str]:
        """Objects no path links to (link count 1) and older than min_age.

        The age guard keeps an object that a concurrent fetch published but has not
        linked yet.
        """
        now = time.time()
        return [sha for sha, st in self.all()
                if st.st_nlink == 1 and now - st.st_ctime >= min_age]

    def remove(self, sha: str) -> bool:
        """Delete one object if nothing links to it any more; True if it went."""
        with self.entry(sha) as entry:
            if entry is None or entry[1].st_nlink != 1:
                return False
            try:
                os.unlink(sha[2:], dir_fd=entry[0])
            except FileNotFoundError:
                return False
            return True


def _regular_files(d: int, prefix: str) -> Iterator[tuple[str, os.stat_result]]:
    for rest in os.listdir(d):
        try:
            st = os.stat(rest, dir_fd=d, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode):
            yield prefix + rest, st
