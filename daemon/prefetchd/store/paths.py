"""Safe paths below the root: names, request `dest`s, and directory fds without symlinks.

Every path operation below the root goes through a directory fd with O_NOFOLLOW, so
a symlink planted inside the root can never redirect a write. Nothing here knows of
objects or temps.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re

from ..errors import UnsafePathError

META = ".prefetchd"
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_COMPONENT = 255
MAX_PATH = 4096
HASH_BLOCK = 1 << 20


def key_of(file_id: str) -> str:
    """A short stable token for a file_id, used in temp names and lock slots."""
    return hashlib.sha256(file_id.encode()).hexdigest()[:24]


def id_component(file_id: str) -> str:
    """The file_id itself when it is one safe path component, else a short hash of it."""
    if _SAFE_ID.match(file_id) and file_id not in (".", ".."):
        return file_id
    return key_of(file_id)[:16]


def safe_name(name: str | None, fallback: str) -> str:
    """A provider-supplied file name reduced to one safe component."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    base = "".join(c for c in base if c.isprintable() and c != "\x00")
    if base in ("", ".", "..") or base.startswith("."):
        base = fallback
    while len(base.encode()) > 200:
        base = base[:-1]
    return base


def default_link(file_id: str, name: str | None) -> str:
    """The shared place of a file whose claim names no dest: downloads/<id>/<name>."""
    comp = id_component(file_id)
    return f"downloads/{comp}/{safe_name(name, comp)}"


def validate_dest(rel: str) -> tuple[str, ...]:
    """Split a request's `dest` into components, refusing anything unsafe."""
    if not isinstance(rel, str) or not rel:
        raise UnsafePathError("dest: empty path")
    if "\x00" in rel:
        raise UnsafePathError("dest: contains a NUL byte")
    if rel.startswith("/"):
        raise UnsafePathError(f"dest: {rel!r} is absolute; give a path relative to the root",
                              path=rel)
    if len(rel.encode()) > MAX_PATH:
        raise UnsafePathError("dest: longer than 4096 bytes")
    parts = tuple(rel.split("/"))
    for p in parts:
        _check_component(rel, p)
    if parts[0] == META:
        raise UnsafePathError(f"dest: {rel!r} is inside {META}/", path=rel)
    return parts


def _check_component(rel: str, p: str) -> None:
    if p in ("", "."):
        raise UnsafePathError(f"dest: {rel!r} has an empty or '.' component", path=rel)
    if p == "..":
        raise UnsafePathError(f"dest: {rel!r} contains '..'", path=rel)
    if len(p.encode()) > MAX_COMPONENT:
        raise UnsafePathError(f"dest: a component of {rel[:60]!r}... is longer than 255 bytes")


def check_sha256(value: str) -> str:
    v = value.lower()
    if not _SHA_RE.match(v):
        raise UnsafePathError(f"sha256: {value[:80]!r} is not 64 hex digits")
    return v


def open_dir(parent_fd: int, name: str, create: bool) -> int:
    """Open a directory below `parent_fd` without following symlinks; with `create`,
    make it first if it is missing (open first: most directories already exist)."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        if not create:
            raise
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePathError(f"{name!r} is a symlink or not a directory; refusing",
                                  path=name) from None
        raise
    try:
        os.mkdir(name, 0o755, dir_fd=parent_fd)
    except FileExistsError:
        pass  # made by a concurrent caller meanwhile
    return open_dir(parent_fd, name, False)


def walk(root_fd: int, parts: tuple[str, ...], create: bool,
         made: list[str] | None = None) -> int:
    """An fd of the directory `parts` below `root_fd` (a dup of it for no parts),
    each step opened without following symlinks; the caller closes it. With `made`,
    the directories this call created are appended to it (relative paths)."""
    fd = -1
    try:
        for i, p in enumerate(parts):
            parent = root_fd if fd < 0 else fd
            if made is not None and create:
                nfd, created = _open_or_make(parent, p)
                if created:
                    made.append("/".join(parts[:i + 1]))
            else:
                nfd = open_dir(parent, p, create)
            if fd >= 0:
                os.close(fd)
            fd = nfd
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise
    return os.dup(root_fd) if fd < 0 else fd


def _open_or_make(parent_fd: int, name: str) -> tuple[int, bool]:
    """open_dir with create, and whether this call made the directory."""
    try:
        return open_dir(parent_fd, name, False), False
    except FileNotFoundError:
        pass
    try:
        os.mkdir(name, 0o755, dir_fd=parent_fd)
        created = True
    except FileExistsError:
        created = False  # made by a concurrent caller meanwhile
    return open_dir(parent_fd, name, False), created


def listdir_at(dir_fd: int) -> list[str]:
    """List a directory given by fd, safely from several threads at once.

    os.listdir(fd) reads through a dup of the fd, which shares its file offset, so two
    threads listing one fd at once see each other's position and miss entries. A fresh
    open of "." gives each call its own offset.
    """
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        return os.listdir(fd)
    finally:
        os.close(fd)


def fsync_dir(fd: int) -> None:
    os.fsync(fd)


def hash_fd(fd: int) -> str:
    h = hashlib.sha256()
    while block := os.read(fd, HASH_BLOCK):
        h.update(block)
    return h.hexdigest()


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)
