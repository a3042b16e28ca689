"""Opening the root read-only, for read-only commands (status, ls, path, stats): what
exists is opened one component at a time with no symlinks followed, and nothing is
created; a user who may only read the root can use it."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .paths import META

_RO_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_existing(root: Path) -> tuple[int, int]:
    """(root_fd, objects_fd) of what exists, -1 for each part that does not."""
    try:
        root_fd = os.open(root, _RO_DIR)
    except FileNotFoundError:
        return -1, -1  # no root yet: nothing is stored
    fd = os.dup(root_fd)
    try:
        for name in (META, "objects", "sha256"):
            parent, fd = fd, os.open(name, _RO_DIR, dir_fd=fd)
            os.close(parent)
    except FileNotFoundError:
        os.close(fd)
        return root_fd, -1  # no store yet
    return root_fd, fd


def idle_shared(root_fd: int, offset: int) -> bool:
    """Whether no process holds the download lock at `offset`, tested with a shared
    lock on a read-only open (an exclusive one, which a download holds, refuses it)."""
    if root_fd < 0:
        return True
    try:
        fd = os.open(f"{META}/locks", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=root_fd)
    except OSError:
        return True  # no lock file: nobody ever downloaded here
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, offset, os.SEEK_SET)
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops the lock
    return True
