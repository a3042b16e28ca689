"""Materialized paths: hard links from a request's `dest` (or downloads/<id>/<name>) to
objects, made atomically (temp name + rename), removed only when they are ours, and
found when no entry accounts for them.
"""

from __future__ import annotations

import os
import stat
import threading
import time
import uuid
from pathlib import Path

from ..errors import StoreError, UnsafePathError
from .objects import Objects
from .paths import META, fsync_dir, hash_fd, listdir_at, open_dir, same_file, validate_dest, walk


class Links:
    """Paths below the root that link to objects."""

    def __init__(self, root: Path, root_fd: int, objects: Objects) -> None:
        self.root = root
        self.root_fd = root_fd
        self.objects = objects
        # Directories made for links outside downloads/ (those prune themselves), until
        # the manifest takes them (Store.take_made_dirs): only a directory prefetchd
        # made is ever removed when it is left empty.
        self.made: list[str] = []

    def _walk_making(self, parts: tuple[str, ...]) -> int:
        made: list[str] = []
        d = walk(self.root_fd, parts, True, made)
        self.made.extend(m for m in made if m.split("/", 1)[0] != "downloads")
        return d

    def remove_empty_dirs(self, rel: str, made: set[str]) -> list[str]:
        """Remove the directories `rel` lived in, deepest first, while they are empty
        and in `made` (made by prefetchd); never the root. Returns those removed."""
        parts = validate_dest(rel)[:-1]
        removed: list[str] = []
        for n in range(len(parts), 0, -1):
            here = "/".join(parts[:n])
            if here not in made:
                break
            try:
                d = walk(self.root_fd, parts[:n - 1], False)
            except (FileNotFoundError, UnsafePathError):
                break
            try:
                os.rmdir(parts[n - 1], dir_fd=d)
            except FileNotFoundError:
                pass  # gone already: its parent may be empty now
            except OSError:
                break  # not empty (or not ours to remove): its parents stay too
            finally:
                os.close(d)
            removed.append(here)
        return removed

    def link(self, sha: str, rel: str, sync: bool = True) -> Path:
        """Make `rel` a hard link to object `sha`, atomically (temp name + rename).
        `sync=False` leaves the directory's fsync to the caller (see sync_then_link)."""
        parts = validate_dest(rel)
        obj = self.objects.stat(sha)
        if obj is None:
            raise StoreError(f"object {sha[:12]}... is missing")
        d = self._walk_making(parts[:-1])
        try:
            if self._in_place(d, parts[-1], obj, rel):
                return self.root.joinpath(*parts)
            self._link_as(d, sha, parts[-1])
            if sync:
                fsync_dir(d)
        finally:
            os.close(d)
        return self.root.joinpath(*parts)

    def link_new(self, src_dir_fd: int, src_name: str, sha: str, rel: str,
                 dirs: OpenDirs | None = None) -> None:
        """Make `rel` a hard link to object `sha`, given by another name of its inode
        (the temp it was published from, in `src_dir_fd`), without a directory fsync
        (see Store.sync_then_link). A name that is free gets the link directly: one
        linkat instead of a stat of the object, a temp link and a rename (link is
        atomic and never replaces); a taken name goes the way of link().

        With `dirs`, a default place downloads/<id>/<name> is made from the open
        downloads/ directory: mkdir of <id> first (it is new, but for a file fetched
        again), then its open (O_NOFOLLOW: a symlink there is refused as by walk):
        two system calls instead of five."""
        parts = validate_dest(rel)
        if dirs is not None and len(parts) == 3 and parts[0] == "downloads":
            d = self._download_dir(dirs, parts[1])
        else:
            d = self._walk_making(parts[:-1])
        try:
            try:
                os.link(src_name, parts[-1], src_dir_fd=src_dir_fd, dst_dir_fd=d,
                        follow_symlinks=False)
                return
            except FileExistsError:
                pass
        finally:
            os.close(d)
        self.link(sha, rel, sync=False)

    def _download_dir(self, dirs: OpenDirs, name: str) -> int:
        """downloads/<name>, made from the run's open downloads/ and opened without
        following a symlink; the caller closes it."""
        dl = dirs.downloads()
        try:
            os.mkdir(name, 0o755, dir_fd=dl)
        except FileExistsError:
            pass
        except FileNotFoundError:  # downloads/ itself went away during the run
            dirs.reset()
            return self._walk_making(("downloads", name))
        return open_dir(dl, name, False)

    def _in_place(self, d: int, name: str, obj: os.stat_result, rel: str) -> bool:
        """True if `name` already links to the object; refuses a file we did not place."""
        try:
            st = os.stat(name, dir_fd=d, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if same_file(st, obj):
            return True
        if not stat.S_ISREG(st.st_mode) or not self._is_managed(d, name, st):
            raise StoreError(f"{rel} already exists and is not a file prefetchd placed; "
                             "move it away or choose another dest", path=rel)
        return False

    def _link_as(self, d: int, sha: str, name: str) -> None:
        tmp = f".{name[:180]}.prefetchd-{uuid.uuid4().hex[:8]}"
        od = self.objects.dir_of(sha, False)
        try:
            os.link(sha[2:], tmp, src_dir_fd=od, dst_dir_fd=d, follow_symlinks=False)
        finally:
            os.close(od)
        try:
            os.rename(tmp, name, src_dir_fd=d, dst_dir_fd=d)
        except OSError:
            os.unlink(tmp, dir_fd=d)
            raise

    def _is_managed(self, dir_fd: int, name: str, st: os.stat_result) -> bool:
        """A regular file that is a hard link to one of our objects (so replacing loses nothing)."""
        if st.st_nlink < 2:
            return False
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            sha = hash_fd(fd)
        finally:
            os.close(fd)
        obj = self.objects.stat(sha)
        return obj is not None and same_file(obj, st)

    def linked(self, sha: str, rel: str) -> bool:
        """Whether `rel` is currently a hard link to object `sha`."""
        obj = self.objects.stat(sha)
        st = self._stat_rel(rel)
        return obj is not None and st is not None and same_file(st, obj)

    def _stat_rel(self, rel: str) -> os.stat_result | None:
        parts = validate_dest(rel)
        try:
            d = walk(self.root_fd, parts[:-1], False)
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
            d = walk(self.root_fd, parts[:-1], False)
        except (FileNotFoundError, UnsafePathError):
            return False
        try:
            try:
                st = os.stat(parts[-1], dir_fd=d, follow_symlinks=False)
            except FileNotFoundError:
                return False
            obj = self.objects.stat(sha) if sha else None
            if obj is None or not same_file(st, obj):
                return False
            os.unlink(parts[-1], dir_fd=d)
            fsync_dir(d)
        finally:
            os.close(d)
        if parts[0] == "downloads" and len(parts) == 3:
            self._prune_download_dir(parts[1])
        return True

    def _prune_download_dir(self, name: str) -> None:
        try:
            dl = open_dir(self.root_fd, "downloads", False)
            try:
                os.rmdir(name, dir_fd=dl)
            finally:
                os.close(dl)
        except OSError:
            pass  # not empty or gone: nothing to prune

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
        search = _StraySearch(accounted)
        for sha, st in self.objects.all():
            search.count(sha, st, min_age, now)
        if not search.extra:
            return []
        for rel_dir in sorted(self._likely_dirs(dirs)):
            self._look_in(search, rel_dir)
        if search.unexplained():
            for top, subdirs, files, dfd in os.fwalk(".", dir_fd=self.root_fd,
                                                     follow_symlinks=False):
                if top == ".":
                    subdirs[:] = [x for x in subdirs if x != META]
                search.look(top[2:] if top.startswith("./") else "", files, dfd)
        return search.found

    def _likely_dirs(self, dirs: set[str]) -> set[str]:
        """`dirs` and every downloads/<id>/ directory."""
        search = set(dirs)
        try:
            dl = open_dir(self.root_fd, "downloads", False)
        except (FileNotFoundError, UnsafePathError):
            return search
        try:
            search.update(f"downloads/{n}" for n in listdir_at(dl))
        finally:
            os.close(dl)
        return search

    def _look_in(self, search: _StraySearch, rel_dir: str) -> None:
        if rel_dir.split("/", 1)[0] == META:
            return
        try:
            d = walk(self.root_fd, tuple(rel_dir.split("/")) if rel_dir else (), False)
        except (FileNotFoundError, NotADirectoryError, UnsafePathError):
            return
        try:
            search.look(rel_dir, listdir_at(d), d)
        finally:
            os.close(d)


class OpenDirs:
    """The directories a run of group commits links into, each opened once for the
    run instead of once a file: the objects' `ab/` directories (256 at most) and
    downloads/. Used by one thread at a time (the committer's); close() may come from
    another while a round still uses them: they are closed when that use ends."""

    def __init__(self, root_fd: int, objects_fd: int) -> None:
        self._root_fd = root_fd
        self._objects_fd = objects_fd
        self._ab: dict[str, int] = {}
        self._downloads = -1
        self._lock = threading.Lock()
        self._users = 0
        self._closing = False

    def __enter__(self) -> OpenDirs:
        with self._lock:
            self._users += 1
        return self

    def __exit__(self, *_exc: object) -> None:
        with self._lock:
            self._users -= 1
            if self._closing and not self._users:
                self._close_all()

    def object_dir(self, sha: str) -> int:
        """The open objects/<ab>/ directory of object `sha`, made if missing."""
        fd = self._ab.get(sha[:2])
        if fd is None:
            fd = self._ab[sha[:2]] = open_dir(self._objects_fd, sha[:2], True)
        return fd

    def downloads(self) -> int:
        """The open downloads/ directory, made if missing."""
        if self._downloads < 0:
            self._downloads = open_dir(self._root_fd, "downloads", True)
        return self._downloads

    def reset(self) -> None:
        """Close what is open (a directory went away during the run); what is used
        next is opened again."""
        self._close_all()

    def close(self) -> None:
        with self._lock:
            self._closing = True
            if not self._users:
                self._close_all()

    def _close_all(self) -> None:
        for fd in [*self._ab.values(), self._downloads]:
            if fd >= 0:
                os.close(fd)
        self._ab.clear()
        self._downloads = -1


class _StraySearch:
    """Objects with links no entry accounts for (by inode), and the links found so far."""

    def __init__(self, accounted: dict[str, set[str]]) -> None:
        self.accounted = accounted
        self.extra: dict[tuple[int, int], list] = {}  # (dev, ino) -> [sha, links unexplained]
        self.found: list[tuple[str, str]] = []
        self.seen: set[str] = set()

    def count(self, sha: str, st: os.stat_result, min_age: float, now: float) -> None:
        known = self.accounted.get(sha, set())
        if st.st_nlink - 1 > len(known) and now - st.st_ctime >= min_age:
            self.extra[(st.st_dev, st.st_ino)] = [sha, st.st_nlink - 1 - len(known)]

    def unexplained(self) -> bool:
        return any(left > 0 for _, left in self.extra.values())

    def look(self, rel_dir: str, names: list[str], dfd: int) -> None:
        for name in names:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if rel in self.seen:
                continue
            self.seen.add(rel)
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            hit = self.extra.get((st.st_dev, st.st_ino)) if stat.S_ISREG(st.st_mode) else None
            if hit is None or hit[1] <= 0 or rel in self.accounted.get(hit[0], ()):
                continue
            self.found.append((rel, hit[0]))
            hit[1] -= 1
