"""Partial downloads in `.prefetchd/tmp/`: one uniquely named temp per attempt, its
`.meta` (where the bytes come from, for a resume), and their removal.

A temp is `<key>.<unique>.part` (key: see paths.key_of), so every file of one
file_id is found by its key prefix, and a byte-range lock on the key (the store's)
says which process owns them.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import random
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from ..errors import NoSpaceError
from .paths import HASH_BLOCK, listdir_at

WRITEBACK_STEP = 32 << 20
DIRECT_ALIGN = 4096  # O_DIRECT's alignment of buffers, lengths and offsets (any disk's)
PARALLEL_HASH_MIN = 256 << 10  # smaller buffers: a thread hand-off costs more than it saves
GIL_HASH_SLICE = 2047  # hashlib keeps the GIL for updates shorter than 2 KiB (CPython)

Meta = dict[str, Any]


def unique_tag(digits: int = 12) -> str:
    """A random hex tag for a temp name in tmp/ (no agent writes there; the key's lock
    and O_EXCL stand behind it). From Python's own generator (seeded from the OS at
    start, reseeded in a forked child), not uuid4: os.urandom is a system call, and on
    the event loop each one may cost a wait for the GIL while worker threads run."""
    return f"{random.getrandbits(digits * 4):0{digits}x}"


@dataclass
class Partial:
    """A temp file being written while hashed; `size` counts bytes in it."""

    temps: Temps
    name: str
    fd: int
    size: int
    hasher: Any  # hashlib's sha256 object
    meta: Meta
    flushed: int = 0
    meta_saved: bool = True  # whether a .meta file may exist beside the temp
    # A whole small body kept in memory, hashed, not yet on disk (see hold): the group
    # commit writes it (write_held) right before the flush that makes it durable.
    held: bytes | None = None
    direct: bool = False  # the fd writes past the page cache now (append_direct)

    def _create(self) -> None:
        """Create the temp file on first need: a download that fails before any byte
        arrives leaves nothing behind, and a small file costs one worker call."""
        self.fd = os.open(self.name,
                          os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                          0o600, dir_fd=self.temps.tmp_fd)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append `data` and hash it. A large buffer is hashed on another thread while
        it is written (hashlib and os.write both release the GIL), so a big file costs
        the longer of the two, not their sum. The hash is done when this returns, so
        buffers are hashed in order. After a failed write the hasher may be ahead of
        the file: nothing uses it then (a resume re-hashes the temp from disk)."""
        if self.fd < 0:
            self._create()
        self._buffered()
        hashing = (self.temps.in_parallel(self.hasher.update, data)
                   if len(data) >= PARALLEL_HASH_MIN else None)
        try:
            self._write_all(data)
        finally:
            if hashing is not None:
                hashing.result()
        if hashing is None:
            self.hasher.update(data)
        self._written(len(data))

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Append `data` without hashing it: the caller feeds `hasher` the same bytes in
        the same order (on a thread of its own, see fetch.pump) before `finish`."""
        if self.fd < 0:
            self._create()
        self._buffered()
        self._write_all(data)
        self._written(len(data))

    def append_direct(self, data: memoryview) -> bool:
        """`append` past the page cache (O_DIRECT): `data` is page-aligned and its length
        and the file's size are multiples of DIRECT_ALIGN. No page-cache copy and no
        writeback left for the final fsync. False, with nothing written, where the
        filesystem refuses it (the caller appends normally)."""
        if self.fd < 0:
            self._create()
        try:
            if not self.direct:
                fcntl.fcntl(self.fd, fcntl.F_SETFL,
                            fcntl.fcntl(self.fd, fcntl.F_GETFL) | os.O_DIRECT)
                self.direct = True
            n = os.write(self.fd, data)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise self._no_space(e, len(data)) from None
            self._buffered()
            return False
        if n < len(data):  # the rest as any write (a short write: the disk is full)
            self._buffered()
            self._write_all(data[n:])
        self.size += len(data)
        self.flushed = self.size
        return True

    def _buffered(self) -> None:
        if self.direct:
            fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            self.direct = False

    def _written(self, n: int) -> None:
        self.size += n
        if self.size - self.flushed >= WRITEBACK_STEP:
            # Start writeback of what is written so far (FADV_DONTNEED on dirty pages
            # queues them for writeback without waiting), so the final fsync finds little
            # left to do and the disk works while the network does.
            os.posix_fadvise(self.fd, self.flushed, self.size - self.flushed,
                             os.POSIX_FADV_DONTNEED)
            self.flushed = self.size

    def _write_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        try:
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
        except OSError as e:
            raise self._no_space(e, len(data)) from None

    def _no_space(self, e: OSError, n: int) -> OSError | NoSpaceError:
        """ENOSPC/EDQUOT while writing `n` bytes as NoSpaceError; any other error as is."""
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            reached = self.size + n
            return NoSpaceError(
                f"no space left on the root's filesystem after {self.size} bytes "
                f"(needs more than {reached})", need_bytes=reached + 1, at_least=True)
        return e

    def truncate(self) -> None:
        """Start over (a server answered 200 to a Range request)."""
        if self.fd >= 0:
            os.ftruncate(self.fd, 0)
            os.lseek(self.fd, 0, os.SEEK_SET)
        self.size = self.flushed = 0
        self.hasher = hashlib.sha256()

    def save_meta(self, meta: Meta) -> None:
        """Save where the bytes come from beside the temp, which exists first: a crash
        between the two leaves a temp without a .meta (resumed from scratch), never a
        .meta that no listing of partials would find."""
        if self.fd < 0:
            self._create()
        self.meta = meta
        self.meta_saved = True
        self.temps.write_meta(self.name, meta)

    def hold(self, data: bytes | bytearray) -> str:
        """Take a whole body that arrived in one buffer, hashed, without writing it:
        no file is created here (the event loop makes no system call for it and never
        waits on tmp/ while the group commit links there); write_held writes it, on
        the committer's thread, before the flush that makes it durable. Returns the
        hex digest. Only for a partial with nothing in it yet."""
        assert self.fd < 0 and self.size == 0 and self.held is None
        self.held = bytes(data)
        view = memoryview(self.held)
        # In slices hashlib hashes without releasing the GIL (it does from 2 KiB): on
        # the loop, taking the GIL back from the committer's thread costs more than
        # the few microseconds the slices add.
        for i in range(0, len(view), GIL_HASH_SLICE):
            self.hasher.update(view[i:i + GIL_HASH_SLICE])
        self.size = len(self.held)
        return str(self.hasher.hexdigest())

    def write_held(self) -> None:
        """Write the held body into a new temp, read-only from its creation (no
        fchmod), closed without fsync (Store.sync_then_link flushes the group). A temp
        a crash leaves is reaped like any other."""
        data, self.held = self.held, None
        assert data is not None and self.fd < 0
        self.fd = os.open(self.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                          | os.O_CLOEXEC, 0o444, dir_fd=self.temps.tmp_fd)
        written, self.size = self.size, 0
        try:
            self._write_all(data)
        finally:
            self.size = written
            self.close()

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
        return str(self.hasher.hexdigest())

    def close(self) -> None:
        """Close without publishing; the bytes stay for a later resume."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def discard(self) -> None:
        self.held = None
        self.close()
        self.temps.discard_temp(self.name)


class Temps:
    """The tmp/ directory: partials of every key, found by their key prefix.

    `lock`/`unlock` are the store's per-key locks (reaping skips a key another
    process downloads); `in_parallel` runs hashing beside writing.
    """

    def __init__(self, tmp_fd: int, *, lock: Callable[[str], bool],
                 unlock: Callable[[str], None],
                 in_parallel: Callable[..., Future[object]]) -> None:
        self.tmp_fd = tmp_fd
        self._lock = lock
        self._unlock = unlock
        self.in_parallel = in_parallel

    def write_meta(self, part_name: str, meta: Meta) -> None:
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

    def read_meta(self, part_name: str) -> Meta:
        name = part_name[: -len(".part")] + ".meta"
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.tmp_fd)
        except FileNotFoundError:
            return {}
        try:
            meta = json.loads(os.read(fd, 65536) or b"{}")
        except ValueError:
            return {}
        finally:
            os.close(fd)
        return meta if isinstance(meta, dict) else {}

    def of_key(self, key: str) -> list[str]:
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
        return Partial(self, f"{key}.{unique_tag()}.part", -1, 0, hashlib.sha256(), {},
                       meta_saved=False)

    def open_partial(self, key: str) -> Partial:
        """A fresh uniquely named temp for this attempt, seeded with the best earlier partial.

        The earlier partial is renamed to the new name (so one attempt owns it) and
        re-hashed from disk, so a resumed file is always verified whole.
        """
        new = f"{key}.{unique_tag()}.part"
        names = self.of_key(key)
        olds = self._largest_first(names)
        meta: Meta = {}
        kept = None
        if olds:
            kept = olds[0]
            meta = self.read_meta(kept)
            os.rename(kept, new, src_dir_fd=self.tmp_fd, dst_dir_fd=self.tmp_fd)
        for name in names:  # other partials, every old .meta, stray .meta.new files
            if name != kept:
                self.discard_temp(name, with_meta=False)
        part = (self._rehash(new, meta) if kept is not None
                else Partial(self, new, -1, 0, hashlib.sha256(), meta, 0))  # created on write
        if meta:
            self.write_meta(new, meta)
        return part

    def _rehash(self, name: str, meta: Meta) -> Partial:
        fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.tmp_fd)
        hasher = hashlib.sha256()
        size = 0
        while block := os.read(fd, HASH_BLOCK):
            hasher.update(block)
            size += len(block)
        return Partial(self, name, fd, size, hasher, meta, size)

    def _largest_first(self, names: list[str]) -> list[str]:
        return sorted((n for n in names if n.endswith(".part")), key=self._size, reverse=True)

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

    def partial_meta(self, key: str) -> Meta:
        """The .meta of `key`'s largest partial (where its bytes come from, and the
        name the provider gave them), or {} when there is none."""
        parts = self._largest_first(self.of_key(key))
        return self.read_meta(parts[0]) if parts else {}

    def discard_partials(self, key: str) -> int:
        """Remove every temp of `key` (its entry is ready: no resume will want them);
        returns how many files went. The caller holds the key's lock."""
        removed = 0
        for name in self.of_key(key):
            try:
                os.unlink(name, dir_fd=self.tmp_fd)
                removed += 1
            except FileNotFoundError:
                pass
        return removed

    def reap(self, keep_keys: set[str], max_age: float, now: float | None = None) -> int:
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
            removed += self._remove_unlocked(key, name)
        return removed

    def _remove_unlocked(self, key: str, name: str) -> int:
        if not self._lock(key):
            return 0  # another process is downloading it right now
        try:
            os.unlink(name, dir_fd=self.tmp_fd)
            return 1
        except FileNotFoundError:
            return 0
        finally:
            self._unlock(key)
