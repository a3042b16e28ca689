"""The store's read side for read-only commands (status, ls, path, stats)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from ..store import META, Store, lock_offset

_RO_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class ReadOnlyStore(Store):
    """The store's read side (objects, object_stat, linked) over whatever of the root
    exists, opened without creating anything and without the write-side files (temps,
    locks), which a user who may only read the root could not open.

    It lives here because store.py has no read-only open yet; it relies on Store's
    read methods using only root_fd and objects_fd.
    """

    def __init__(self, root: Path) -> None:  # not super().__init__: that creates dirs
        self.root = root.resolve()
        self._parallel = None
        self.root_fd = self.objects_fd = -1
        try:
            self.root_fd = os.open(self.root, _RO_DIR)
        except FileNotFoundError:
            return  # no root yet: nothing is stored
        fd = os.dup(self.root_fd)
        try:
            for name in (META, "objects", "sha256"):  # one component at a time, no symlinks
                parent, fd = fd, os.open(name, _RO_DIR, dir_fd=fd)
                os.close(parent)
        except FileNotFoundError:
            os.close(fd)
            return  # no store yet
        self.objects_fd = fd

    def close(self) -> None:
        for fd in (self.objects_fd, self.root_fd):
            if fd >= 0:
                os.close(fd)

    def objects(self) -> Iterator[tuple[str, os.stat_result]]:
        return super().objects() if self.objects_fd >= 0 else iter(())

    def object_stat(self, sha: str) -> os.stat_result | None:
        return super().object_stat(sha) if self.objects_fd >= 0 else None

    def idle(self, key: str) -> bool:
        """Store.idle with a shared lock on a read-only open (an exclusive one, which a
        download holds, refuses it)."""
        if self.root_fd < 0:
            return True
        try:
            fd = os.open(f"{META}/locks", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=self.root_fd)
        except OSError:
            return True  # no lock file: nobody ever downloaded here
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, lock_offset(key), os.SEEK_SET)
        except OSError:
            return False
        finally:
            os.close(fd)  # closing drops the lock
        return True

    def linked(self, sha: str, rel: str) -> bool:
        return self.root_fd >= 0 and self.objects_fd >= 0 and super().linked(sha, rel)
