"""Content-addressed objects, temp files, atomic publish and safe paths under the root.

Every path operation below the root goes through a directory fd with O_NOFOLLOW, so
a symlink planted inside the root can never redirect a write. Objects live at
`.prefetchd/objects/sha256/ab/cdef...` with mode 0444; every materialized path is a
hard link to its object, so the link count is the reference count.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import json
import os
import re
import stat
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import NoSpaceError, PrefetchError, StoreError, UnsafePathError

META = ".prefetchd"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_COMPONENT = 255
MAX_PATH = 4096
HASH_BLOCK = 1 << 20
WRITEBACK_STEP = 32 << 20
PARALLEL_HASH_MIN = 256 << 10  # smaller buffers: a thread hand-off costs more than it saves


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


def validate_dest(rel: str) -> tuple[str, ...]:
    """Split a request's `dest` into components, refusing anything unsafe."""
    if not isinstance(rel, str) or not rel:
        raise UnsafePathError("dest: empty path")
    if "\x00" in rel:
        raise UnsafePathError("dest: contains a NUL byte")
    if rel.startswith("/"):
        raise UnsafePathError(f"dest: {rel!r} is absolute; give a path relative to the root")
    if len(rel.encode()) > MAX_PATH:
        raise UnsafePathError("dest: longer than 4096 bytes")
    parts = tuple(rel.split("/"))
    for p in parts:
        if p in ("", "."):
            raise UnsafePathError(f"dest: {rel!r} has an empty or '.' component")
        if p == "..":
            raise UnsafePathError(f"dest: {rel!r} contains '..'")
        if len(p.encode()) > MAX_COMPONENT:
            raise UnsafePathError(f"dest: a component of {rel[:60]!r}... is longer than 255 bytes")
    if parts[0] == META:
        raise UnsafePathError(f"dest: {rel!r} is inside {META}/")
    return parts


def check_sha256(value: str) -> str:
    v = value.lower()
    if not _SHA_RE.match(v):
        raise UnsafePathError(f"sha256: {value[:80]!r} is not 64 hex digits")
    return v


def _open_dir(parent_fd: int, name: str, create: bool) -> int:
    """Open a directory below `parent_fd` without following symlinks; with `create`,
    make it first if it is missing (open first: most directories already exist)."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        if not create:
            raise
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePathError(f"{name!r} is a symlink or not a directory; refusing") from None
        raise
    try:
        os.mkdir(name, 0o755, dir_fd=parent_fd)
    except FileExistsError:
        pass  # made by a concurrent caller meanwhile
    return _open_dir(parent_fd, name, False)


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


def _fsync_dir(fd: int) -> None:
    os.fsync(fd)


_syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)  # Linux; not in `os`


def _call_syncfs(fd: int) -> None:
    if _syncfs(fd) != 0:  # type: ignore[misc]
        err = ctypes.get_errno()
        raise OSError(err, f"syncfs: {os.strerror(err)}")


@dataclass
class Partial:
    """A temp file being written while hashed; `size` counts bytes in it."""

    store: Store
    name: str
    fd: int
    size: int
    hasher: hashlib._Hash
    meta: dict
    flushed: int = 0
    meta_saved: bool = True  # whether a .meta file may exist beside the temp


    def _create(self) -> None:
        """Create the temp file on first need: a download that fails before any byte
        arrives leaves nothing behind, and a small file costs one worker call."""
        self.fd = os.open(self.name,
                          os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                          0o600, dir_fd=self.store.tmp_fd)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append `data` and hash it. A large buffer is hashed on another thread while
        it is written (hashlib and os.write both release the GIL), so a big file costs
        the longer of the two, not their sum. The hash is done when this returns, so
        buffers are hashed in order. After a failed write the hasher may be ahead of
        the file: nothing uses it then (a resume re-hashes the temp from disk)."""
        if self.fd < 0:
            self._create()
        hashing = (self.store.in_parallel(self.hasher.update, data)
                   if len(data) >= PARALLEL_HASH_MIN else None)
        view = memoryview(data)
        try:
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                reached = self.size + len(data)
                raise NoSpaceError(
                    f"no space left on the root's filesystem after {self.size} bytes "
                    f"(needs more than {reached})", need_bytes=reached + 1, at_least=True,
                ) from None
            raise
        finally:
            if hashing is not None:
                hashing.result()
        if hashing is None:
            self.hasher.update(data)
        self.size += len(data)
        if self.size - self.flushed >= WRITEBACK_STEP:
            # Start writeback of what is written so far (FADV_DONTNEED on dirty pages
            # queues them for writeback without waiting), so the final fsync finds little
            # left to do and the disk works while the network does.
            os.posix_fadvise(self.fd, self.flushed, self.size - self.flushed,
                             os.POSIX_FADV_DONTNEED)
            self.flushed = self.size

    def truncate(self) -> None:
        """Start over (a server answered 200 to a Range request)."""
        if self.fd >= 0:
            os.ftruncate(self.fd, 0)
            os.lseek(self.fd, 0, os.SEEK_SET)
        self.size = self.flushed = 0
        self.hasher = hashlib.sha256()

    def save_meta(self, meta: dict) -> None:
        """Save where the bytes come from beside the temp, which exists first: a crash
        between the two leaves a temp without a .meta (resumed from scratch), never a
        .meta that no listing of partials would find."""
        if self.fd < 0:
            self._create()
        self.meta = meta
        self.meta_saved = True
        self.store._write_meta(self.name, meta)

    def finish(self, sync: bool = True) -> str:
        """fsync (unless the caller syncs many files at once), make read-only, close;
        return the hex digest."""
        if self.fd < 0:
            self._create()  # an empty file
        if sync:
            os.fsync(self.fd)
        os.fchmod(self.fd, 0o444)
        os.close(self.fd)
        self.fd = -1
        return self.hasher.hexdigest()

    def close(self) -> None:
        """Close without publishing; the bytes stay for a later resume."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def discard(self) -> None:
        self.close()
        self.store.discard_temp(self.name)


class Store:
    """The root directory: objects, temps, locks and materialized paths."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()
        self.root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.meta_fd = _open_dir(self.root_fd, META, True)
        objects = _open_dir(self.meta_fd, "objects", True)
        self.objects_fd = _open_dir(objects, "sha256", True)
        os.close(objects)
        self.tmp_fd = _open_dir(self.meta_fd, "tmp", True)
        self.quarantine_fd = _open_dir(self.meta_fd, "quarantine", True)
        self._lock_fd = os.open(
            "locks", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
            dir_fd=self.meta_fd,
        )
        self._parallel: ThreadPoolExecutor | None = None

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

    # -- temps ----------------------------------------------------------------------

    def _write_meta(self, part_name: str, meta: dict) -> None:
        name = part_name[: -len(".part")] + ".meta"
        data = json.dumps(meta).encode()
        tmp = name + ".new"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=self.tmp_fd)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=self.tmp_fd, dst_dir_fd=self.tmp_fd)

    def _read_meta(self, part_name: str) -> dict:
        name = part_name[: -len(".part")] + ".meta"
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.tmp_fd)
        except FileNotFoundError:
            return {}
        try:
            return json.loads(os.read(fd, 65536) or b"{}")
        except ValueError:
            return {}
        finally:
            os.close(fd)

    def _temps(self, key: str) -> list[str]:
        """Every file of `key` in tmp/: partials, their .meta, an unfinished .meta.new."""
        prefix = key + "."
        return [n for n in listdir_at(self.tmp_fd) if n.startswith(prefix)]

    def partial_keys(self) -> set[str]:
        """Keys that have anything in tmp/ (one directory listing): their next attempt
        goes through open_partial, which resumes or clears what is there."""
        return {n.split(".", 1)[0] for n in listdir_at(self.tmp_fd)}

    def new_partial(self, key: str) -> Partial:
        """A new temp for an attempt with nothing to resume: no I/O at all, the file is
        created on first write (open_partial is the one that looks for earlier bytes)."""
        return Partial(self, f"{key}.{uuid.uuid4().hex[:12]}.part", -1, 0, hashlib.sha256(), {},
                       meta_saved=False)

    def open_partial(self, key: str, resume: bool = True) -> Partial:
        """A fresh uniquely named temp for this attempt, seeded with the best earlier partial.

        The earlier partial is renamed to the new name (so one attempt owns it) and
        re-hashed from disk, so a resumed file is always verified whole.
        """
        new = f"{key}.{uuid.uuid4().hex[:12]}.part"
        names = self._temps(key)
        olds = sorted((n for n in names if n.endswith(".part")), key=self._size, reverse=True)
        meta: dict = {}
        kept = None
        if resume and olds:
            kept = olds[0]
            meta = self._read_meta(kept)
            os.rename(kept, new, src_dir_fd=self.tmp_fd, dst_dir_fd=self.tmp_fd)
        for name in names:  # other partials, every old .meta, stray .meta.new files
            if name != kept:
                self.discard_temp(name, with_meta=False)
        if kept is not None:
            fd = os.open(new, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.tmp_fd)
            hasher = hashlib.sha256()
            size = 0
            while block := os.read(fd, HASH_BLOCK):
                hasher.update(block)
                size += len(block)
        else:
            fd, hasher, size = -1, hashlib.sha256(), 0  # created on first write
        part = Partial(self, new, fd, size, hasher, meta, size)
        if meta:
            self._write_meta(new, meta)
        return part

    def _size(self, name: str) -> int:
        try:
            return os.stat(name, dir_fd=self.tmp_fd, follow_symlinks=False).st_size
        except FileNotFoundError:
            return -1

    def discard_temp(self, part_name: str, with_meta: bool = True) -> None:
        base = part_name.removesuffix(".part")
        for n in (part_name, base + ".meta") if with_meta else (part_name,):
            try:
                os.unlink(n, dir_fd=self.tmp_fd)
            except FileNotFoundError:
                pass

    def partial_meta(self, key: str) -> dict:
        """The .meta of `key`'s largest partial (where its bytes come from, and the
        name the provider gave them), or {} when there is none."""
        parts = sorted((n for n in self._temps(key) if n.endswith(".part")),
                       key=self._size, reverse=True)
        return self._read_meta(parts[0]) if parts else {}

    def discard_partials(self, key: str) -> int:
        """Remove every temp of `key` (its entry is ready: no resume will want them);
        returns how many files went. The caller holds the key's lock."""
        removed = 0
        for name in self._temps(key):
            try:
                os.unlink(name, dir_fd=self.tmp_fd)
                removed += 1
            except FileNotFoundError:
                pass
        return removed

    def reap_temps(self, keep_keys: set[str], max_age: float, now: float | None = None) -> int:
        """Remove temps no wanted file needs, or older than max_age; skip locked keys."""
        now = time.time() if now is None else now
        removed = 0
        for name in listdir_at(self.tmp_fd):
            key = name.split(".", 1)[0]
            try:
                st = os.stat(name, dir_fd=self.tmp_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if key in keep_keys and now - st.st_mtime < max_age:
                continue
            if not self.lock_key(key):
                continue  # another process is downloading it right now
            try:
                os.unlink(name, dir_fd=self.tmp_fd)
                removed += 1
            except FileNotFoundError:
                pass
            finally:
                self.unlock_key(key)
        return removed

    # -- objects --------------------------------------------------------------------

    def _object_dir(self, sha: str, create: bool) -> int:
        return _open_dir(self.objects_fd, sha[:2], create)

    def object_path(self, sha: str) -> Path:
        return self.root / META / "objects" / "sha256" / sha[:2] / sha[2:]

    @contextmanager
    def _object_entry(self, sha: str) -> Iterator[tuple[int, os.stat_result] | None]:
        """The open objects/ab/ directory and the object's lstat there, or None if the
        object (or its directory) is absent; the directory is closed on exit."""
        try:
            d = self._object_dir(sha, False)
        except FileNotFoundError:
            yield None
            return
        try:
            try:
                st = os.stat(sha[2:], dir_fd=d, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            yield None if st is None else (d, st)
        finally:
            os.close(d)

    def object_stat(self, sha: str) -> os.stat_result | None:
        with self._object_entry(sha) as entry:
            return entry[1] if entry is not None and stat.S_ISREG(entry[1].st_mode) else None

    def publish(self, part: Partial, sha: str, sync: bool = True) -> None:
        """Move a finished temp into objects/ (atomic, no replace); dedupe if it exists.
        `sync=False` leaves the directory's fsync to the caller (see sync_then_link)."""
        d = self._object_dir(sha, True)
        try:
            try:
                os.link(part.name, sha[2:], src_dir_fd=self.tmp_fd, dst_dir_fd=d,
                        follow_symlinks=False)
            except FileExistsError:
                pass  # same bytes already stored: the temp is simply dropped
            if sync:
                _fsync_dir(d)
            self.discard_temp(part.name, part.meta_saved)
        finally:
            os.close(d)

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

    def hash_object(self, sha: str) -> str:
        d = self._object_dir(sha, False)
        try:
            fd = os.open(sha[2:], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d)
        finally:
            os.close(d)
        try:
            return _hash_fd(fd)
        finally:
            os.close(fd)

    def quarantine(self, sha: str) -> None:
        """Move a bad object aside (kept for inspection, never served again)."""
        d = self._object_dir(sha, False)
        try:
            os.rename(sha[2:], f"{sha}.{int(time.time())}", src_dir_fd=d,
                      dst_dir_fd=self.quarantine_fd)
            _fsync_dir(d)
        finally:
            os.close(d)

    def objects(self) -> Iterator[tuple[str, os.stat_result]]:
        for prefix in listdir_at(self.objects_fd):
            try:
                d = _open_dir(self.objects_fd, prefix, False)
            except (UnsafePathError, FileNotFoundError):
                continue
            try:
                for rest in os.listdir(d):
                    try:
                        st = os.stat(rest, dir_fd=d, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if stat.S_ISREG(st.st_mode):
                        yield prefix + rest, st
            finally:
                os.close(d)

    def unreferenced(self, min_age: float = 600.0) -> list[str]:
        """Objects no path links to (link count 1) and older than min_age.

        The age guard keeps an object that a concurrent fetch published but has not
        linked yet.
        """
        now = time.time()
        return [sha for sha, st in self.objects()
                if st.st_nlink == 1 and now - st.st_ctime >= min_age]

    def remove_object(self, sha: str) -> bool:
        """Delete one object if nothing links to it any more; True if it went."""
        with self._object_entry(sha) as entry:
            if entry is None or entry[1].st_nlink != 1:
                return False
            try:
                os.unlink(sha[2:], dir_fd=entry[0])
            except FileNotFoundError:
                return False
            return True

    def stray_links(self, accounted: dict[str, set[str]], dirs: set[str],
                    min_age: float = 600.0, now: float | None = None) -> list[tuple[str, str]]:
        """Links to objects that no entry accounts for, as (path, sha256).

        An object's link count says how many paths link to it; `accounted` says which
        paths entries know of. Only objects with more links than that (and whose link
        count last changed `min_age` ago: a download in flight links first and records
        after) are searched for: first in downloads/<id>/ and in `dirs` (where entries'
        paths and dests live), and only if links remain unexplained, in the whole tree.
        A crash between link and record, or between a move's record and the unlink of
        the old place, leaves such a link; it would keep its object alive for ever.
        """
        now = time.time() if now is None else now
        extra: dict[tuple[int, int], list] = {}
        for sha, st in self.objects():
            known = accounted.get(sha, set())
            if st.st_nlink - 1 > len(known) and now - st.st_ctime >= min_age:
                extra[(st.st_dev, st.st_ino)] = [sha, st.st_nlink - 1 - len(known)]
        if not extra:
            return []
        found: list[tuple[str, str]] = []
        seen: set[str] = set()

        def look(rel_dir: str, names: list[str], dfd: int) -> None:
            for name in names:
                rel = f"{rel_dir}/{name}" if rel_dir else name
                if rel in seen:
                    continue
                seen.add(rel)
                try:
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                hit = extra.get((st.st_dev, st.st_ino)) if stat.S_ISREG(st.st_mode) else None
                if hit is None or hit[1] <= 0 or rel in accounted.get(hit[0], ()):
                    continue
                found.append((rel, hit[0]))
                hit[1] -= 1

        search = set(dirs)
        try:
            dl = _open_dir(self.root_fd, "downloads", False)
        except (FileNotFoundError, UnsafePathError):
            dl = -1
        if dl >= 0:
            try:
                search.update(f"downloads/{n}" for n in listdir_at(dl))
            finally:
                os.close(dl)
        for rel_dir in sorted(search):
            if rel_dir.split("/", 1)[0] == META:
                continue
            try:
                d = self._walk(tuple(rel_dir.split("/")) if rel_dir else (), False)
            except (FileNotFoundError, NotADirectoryError, UnsafePathError):
                continue
            try:
                look(rel_dir, listdir_at(d), d)
            finally:
                os.close(d)
        if any(left > 0 for _, left in extra.values()):
            for top, _dirs, files, dfd in os.fwalk(".", dir_fd=self.root_fd,
                                                   follow_symlinks=False):
                if top == ".":
                    _dirs[:] = [x for x in _dirs if x != META]
                look(top[2:] if top.startswith("./") else "", files, dfd)
        return found

    # -- materialized paths ---------------------------------------------------------

    def _walk(self, parts: tuple[str, ...], create: bool) -> int:
        fd = -1
        try:
            for p in parts:
                nfd = _open_dir(self.root_fd if fd < 0 else fd, p, create)
                if fd >= 0:
                    os.close(fd)
                fd = nfd
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        return os.dup(self.root_fd) if fd < 0 else fd

    def make_parents(self, rel: str) -> None:
        """Create the directories `rel` will live in (before its bytes are durable: an
        empty directory is harmless, and sync_then_link then only links)."""
        os.close(self._walk(validate_dest(rel)[:-1], True))

    def link(self, sha: str, rel: str, sync: bool = True) -> Path:
        """Make `rel` a hard link to object `sha`, atomically (temp name + rename).
        `sync=False` leaves the directory's fsync to the caller (see sync_then_link)."""
        parts = validate_dest(rel)
        obj = self.object_stat(sha)
        if obj is None:
            raise StoreError(f"object {sha[:12]}... is missing")
        d = self._walk(parts[:-1], True)
        name = parts[-1]
        try:
            try:
                st = os.stat(name, dir_fd=d, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None:
                if (st.st_ino, st.st_dev) == (obj.st_ino, obj.st_dev):
                    return self.root.joinpath(*parts)
                if not stat.S_ISREG(st.st_mode) or not self._is_managed(d, name, st):
                    raise StoreError(
                        f"{rel} already exists and is not a file prefetchd placed; "
                        "move it away or choose another dest"
                    )
            tmp = f".{name[:180]}.prefetchd-{uuid.uuid4().hex[:8]}"
            od = self._object_dir(sha, False)
            try:
                os.link(sha[2:], tmp, src_dir_fd=od, dst_dir_fd=d, follow_symlinks=False)
            finally:
                os.close(od)
            try:
                os.rename(tmp, name, src_dir_fd=d, dst_dir_fd=d)
            except OSError:
                os.unlink(tmp, dir_fd=d)
                raise
            if sync:
                _fsync_dir(d)
        finally:
            os.close(d)
        return self.root.joinpath(*parts)

    def _is_managed(self, dir_fd: int, name: str, st: os.stat_result) -> bool:
        """A regular file that is a hard link to one of our objects (so replacing loses nothing)."""
        if st.st_nlink < 2:
            return False
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            sha = _hash_fd(fd)
        finally:
            os.close(fd)
        obj = self.object_stat(sha)
        return obj is not None and (obj.st_ino, obj.st_dev) == (st.st_ino, st.st_dev)

    def linked(self, sha: str, rel: str) -> bool:
        """Whether `rel` is currently a hard link to object `sha`."""
        obj = self.object_stat(sha)
        st = self._stat_rel(rel)
        return obj is not None and st is not None and (st.st_ino, st.st_dev) == (
            obj.st_ino, obj.st_dev)

    def _stat_rel(self, rel: str) -> os.stat_result | None:
        parts = validate_dest(rel)
        try:
            d = self._walk(parts[:-1], False)
        except (FileNotFoundError, UnsafePathError):
            return None
        try:
            return os.stat(parts[-1], dir_fd=d, follow_symlinks=False)
        except FileNotFoundError:
            return None
        finally:
            os.close(d)

    def unlink(self, rel: str, sha: str | None) -> bool:
        """Remove `rel` if it is our link (to `sha`, when given); prune empty download dirs."""
        parts = validate_dest(rel)
        try:
            d = self._walk(parts[:-1], False)
        except (FileNotFoundError, UnsafePathError):
            return False
        try:
            try:
                st = os.stat(parts[-1], dir_fd=d, follow_symlinks=False)
            except FileNotFoundError:
                return False
            obj = self.object_stat(sha) if sha else None
            if obj is None or (st.st_ino, st.st_dev) != (obj.st_ino, obj.st_dev):
                return False
            os.unlink(parts[-1], dir_fd=d)
            _fsync_dir(d)
        finally:
            os.close(d)
        if parts[0] == "downloads" and len(parts) == 3:
            try:
                dl = _open_dir(self.root_fd, "downloads", False)
                try:
                    os.rmdir(parts[1], dir_fd=dl)
                finally:
                    os.close(dl)
            except OSError:
                pass  # not empty or gone: nothing to prune
        return True


def _lock_offset(key: str) -> int:
    return zlib.crc32(key.encode()) & 0x3FFFFFFF


def _hash_fd(fd: int) -> str:
    h = hashlib.sha256()
    while block := os.read(fd, HASH_BLOCK):
        h.update(block)
    return h.hexdigest()
