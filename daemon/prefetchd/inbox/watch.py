"""Request files: parsing (pure) and the watched drop folder.

A writer drops a file into the inbox, ideally as a dotfile or `*.tmp` renamed into
place; dotfiles, `*.tmp` and `*.part` are ignored until renamed. `*.json` holds one
request object or a list of them; any other name holds one file_id per line, `#`
starting a comment. A file is applied all or nothing: accepted files move to
`processed/` with `<name>.receipt.json`, rejected ones to `failed/` with
`<name>.error.json`. Everything is done relative to the inbox's directory fd,
without following symlinks, so no request file can make the daemon read or write
anything outside the inbox and the root.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import watchfiles

from ..config import InboxSettings
from ..log import get_logger
from ..ops import Handles
from ..ops.want import apply
from ..records import uid_holder
from ..redact import display_id
from ..requests import RequestEntry, from_entries
from ..shapes import RequestRejected
from ..store import listdir_at
from .parse import FAILED, MAX_BYTES, PROCESSED, RequestError, ignored, parse_request
from .receipts import Receipts, utc, write_json

log = get_logger("prefetchd.inbox")

WATCH_RESTART_MIN, WATCH_RESTART_MAX = 0.2, 30.0  # backoff of a watcher that died


@dataclass(frozen=True)
class WalWatch:
    """The manifest's write-ahead log, watched beside the inbox, and what to call when
    it changes (another process, or another connection, may have committed)."""

    path: Path
    changed: Callable[[], None]


def shown_name(name: str) -> str:
    """A file name as valid UTF-8 text: bytes that are not UTF-8 (which os.listdir hands
    over as surrogate escapes) are shown as `\\xNN`."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _sidecar(name: str, suffix: str) -> str:
    """`<name><suffix>`, shortened so it stays one legal path component, and valid
    UTF-8 even when `name` is not."""
    base = shown_name(name)
    while len((base + suffix).encode()) > 255:
        base = base[:-1]
    return base + suffix


_SENTINEL = ".prefetchd-watching-"
INBOX_MODE = 0o3775  # systemd/prefetchd.tmpfiles' inbox line


class Inbox:
    """The drop folder of one daemon. It applies requests through `handles` (the
    daemon's, or an api.Prefetch) and calls `on_change` after each one it applied."""

    def __init__(self, handles: Handles, path: Path, on_change: Callable[[], None],
                 group: int | None = None) -> None:
        self.p = handles
        self.on_change = on_change
        path.mkdir(parents=True, exist_ok=True)
        self.path = path.resolve()
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        if group is not None:
            self._share(group)
        self.sub = {}
        for name in (PROCESSED, FAILED):
            try:
                os.mkdir(name, 0o2775, dir_fd=self.fd)
            except FileExistsError:
                pass
            self.sub[name] = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW |
                                     os.O_CLOEXEC, dir_fd=self.fd)
        self.receipts = Receipts(handles.manifest, handles.store.root, self.sub[PROCESSED],
                                 display_id)
        self.receipts.load()

    def _share(self, group: int) -> None:
        """Give an inbox this process owns what systemd/prefetchd.tmpfiles gives it:
        group `group` ([api] group, the agents'), mode 3775 (group-writable, setgid,
        sticky: agents drop requests, none can remove another's). Without systemd
        nothing else would, and agents could not write it. An inbox someone else owns
        (tmpfiles made it) is theirs to set."""
        st = os.fstat(self.fd)
        if st.st_uid != os.geteuid():
            return
        if st.st_gid != group:
            os.fchown(self.fd, -1, group)
        if stat.S_IMODE(os.fstat(self.fd).st_mode) != INBOX_MODE:
            os.fchmod(self.fd, INBOX_MODE)
            log.info("inbox_mode", path=str(self.path), mode=f"{INBOX_MODE:04o}", gid=group)

    def close(self) -> None:
        self.receipts.close()
        for fd in (*self.sub.values(), self.fd):
            os.close(fd)

    # -- one file --------------------------------------------------------------------

    def scan(self) -> int:
        """Process every request file present (at start, and as a periodic backstop)."""
        n = 0
        for name in sorted(listdir_at(self.fd)):
            if not ignored(name):
                n += self.process(name)
        return n

    def process(self, name: str) -> bool:
        """Apply one request file and move it; never raises for bad input."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=self.fd)
        except FileNotFoundError:
            return False  # moved away meanwhile (another event for the same file)
        except OSError as e:
            if e.errno == errno.ELOOP:
                return self._reject(name, "a symlink; request files must be regular files")
            return self._reject(name, f"cannot open: {e.strerror}")
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                return self._reject(name, "a directory; request files must be regular files")
            if not stat.S_ISREG(st.st_mode):
                return self._reject(name, "not a regular file")
            if st.st_size > MAX_BYTES:
                return self._reject(name, f"larger than {MAX_BYTES} bytes")
            data = os.read(fd, MAX_BYTES + 1)
        finally:
            os.close(fd)
        if shown_name(name) != name:
            return self._reject(name, "the file name is not valid UTF-8")
        try:
            entries = parse_request(name, data)
            # The file's owner (as opened) is the holder, never what the file says.
            request = from_entries(self.p.settings, self.p.manifest, entries, st.st_uid)
        except RequestError as e:
            return self._reject(name, str(e))
        # forgets remove files, then rows
        apply(self.p.manifest, self.p.store, request, holder=uid_holder(st.st_uid),
              in_daemon=True)
        self._accept(name, entries)
        self.on_change()
        return True

    def _target(self, name: str, where: str) -> str:
        """The name `name` will have in processed/ or failed/ (UTF-8, not taken)."""
        target = shown_name(name)  # processed/ and failed/ hold only UTF-8 names
        if _exists(self.sub[where], target):
            target = _sidecar(name, f".{int(time.time() * 1000)}")
        return target

    def _move(self, name: str, where: str, target: str) -> None:
        os.rename(name, target, src_dir_fd=self.fd, dst_dir_fd=self.sub[where])

    # The receipt or error file is written before the request moves next to it: a kill
    # in between leaves the request in the inbox, processed again at the next start
    # (applying a request twice changes nothing); the other order left a request in
    # processed/ or failed/ that never got its receipt or error file.

    def _reject(self, name: str, why: str) -> bool:
        target = self._target(name, FAILED)
        error_file = _sidecar(target, ".error.json")
        doc: RequestRejected = {"request": shown_name(name), "error": why,
                                "at": utc(time.time())}
        write_json(self.sub[FAILED], error_file, doc)
        try:
            self._move(name, FAILED, target)
        except FileNotFoundError:  # moved away meanwhile: its error file goes too
            os.unlink(error_file, dir_fd=self.sub[FAILED])
            return False
        log.warning("request_rejected", request=shown_name(name), error=why)
        return True

    def _accept(self, name: str, entries: list[RequestEntry]) -> None:
        target = self._target(name, PROCESSED)
        self.receipts.add(_sidecar(target, ".receipt.json"), name,
                          [(e.file_id, e.action) for e in entries])
        self._move(name, PROCESSED, target)
        log.info("request_accepted", request=name, entries=len(entries))

    def clean(self, keep: float, now: float | None = None) -> int:
        """Delete processed/ and failed/ files older than `keep` seconds."""
        now = time.time() if now is None else now
        removed = 0
        for where in (PROCESSED, FAILED):
            for name in listdir_at(self.sub[where]):
                if name.endswith(".receipt.json") and name in self.receipts:
                    continue
                try:
                    st = os.stat(name, dir_fd=self.sub[where], follow_symlinks=False)
                    if now - st.st_mtime <= keep:
                        continue
                    if stat.S_ISDIR(st.st_mode):  # a directory dropped by mistake
                        shutil.rmtree(name, dir_fd=self.sub[where])  # fd-based: no symlinks
                    else:
                        os.unlink(name, dir_fd=self.sub[where])
                    removed += 1
                except FileNotFoundError:
                    continue
        return removed

    # -- watching --------------------------------------------------------------------

    async def watch(self, stop: asyncio.Event, cfg: InboxSettings, *,
                    started: asyncio.Event | None = None, wal: WalWatch | None = None) -> None:
        """Watch until `stop`; a watcher that dies for any reason (watchfiles cannot
        decode a file name that is not UTF-8, a full disk while moving a request) is
        logged and started again after a backoff, and its start-up scan picks up what
        arrived meanwhile. It never takes the daemon down."""
        self._remove_stale_sentinels()
        delay = WATCH_RESTART_MIN
        while not stop.is_set():
            began = time.monotonic()
            try:
                await self._watch(stop, cfg, started if started is not None
                                  else asyncio.Event(), wal)
                return
            except Exception as e:  # any failure of the watcher: logged, then restarted
                started = asyncio.Event()  # the restarted watcher pokes and scans again
                undecodable = _undecodable_name(e)
                if undecodable is not None:
                    # An expected input (any user may drop such a name), not a fault of
                    # the watcher: one warning, and a new watcher at once, whose start-up
                    # scan moves the file to failed/ with its error file.
                    log.warning("inbox_name_not_utf8", name=undecodable,
                                note="watcher restarted; the file is handled by a rescan")
                    continue
                if time.monotonic() - began > 60:
                    delay = WATCH_RESTART_MIN
                log.exception("inbox_watcher_restarting", error=str(e), in_s=delay)
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except TimeoutError:
                delay = min(delay * 2, WATCH_RESTART_MAX)

    async def _watch(self, stop: asyncio.Event, cfg: InboxSettings, started: asyncio.Event,
                     manifest_wal: WalWatch | None) -> None:
        """React to files created or renamed into the inbox (inotify, or polling).

        To know when the watcher is live, it touches a sentinel dotfile until the
        watcher reports it; then a scan picks up whatever arrived before that, so no
        request dropped during start-up waits for the periodic rescan.

        `manifest_wal` (the SQLite write-ahead log, in the state directory) is watched
        by the same watcher: every commit writes it, so a change another process makes
        to the manifest (`prefetchd want`) is seen at once, and the daemon needs no
        fast polling when idle.
        """
        sentinel = _SENTINEL + str(os.getpid())
        wal = str(manifest_wal.path) if manifest_wal is not None else None

        def wanted(change: watchfiles.Change, path: str) -> bool:
            if path == wal:
                return True
            p = Path(path)
            return p.parent == self.path and (
                p.name == sentinel or (change != watchfiles.Change.deleted
                                       and not ignored(p.name)))

        poker = asyncio.ensure_future(self._poke(sentinel))
        ms = max(1, int(cfg.debounce * 1000))
        paths = [self.path] if manifest_wal is None else [self.path, manifest_wal.path.parent]
        try:
            async for changes in watchfiles.awatch(
                *paths, watch_filter=wanted, debounce=ms, step=min(20, ms),
                stop_event=stop, recursive=False, force_polling=cfg.poll,
                poll_delay_ms=int(cfg.poll_interval * 1000),
            ):
                if manifest_wal is not None and any(p == wal for _, p in changes):
                    manifest_wal.changed()
                names = {Path(p).name for _, p in changes if p != wal}
                if sentinel in names and not poker.done():
                    poker.cancel()
                    _unlink(self.fd, sentinel)
                    self.scan()
                    started.set()
                for name in sorted(names - {sentinel}):
                    self.process(name)
        finally:
            poker.cancel()
            _unlink(self.fd, sentinel)

    def _remove_stale_sentinels(self) -> None:
        """A daemon killed while its watcher started leaves its sentinel behind; one
        daemon runs per root (the lock), so another pid's sentinel is such a leftover."""
        mine = _SENTINEL + str(os.getpid())
        for name in listdir_at(self.fd):
            if name.startswith(_SENTINEL) and name != mine:
                _unlink(self.fd, name)
                log.info("stale_sentinel_removed", name=name)

    async def _poke(self, name: str) -> None:
        while True:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=self.fd)
            os.write(fd, b"x")  # a modification the poll watcher sees too
            os.close(fd)
            await asyncio.sleep(0.05)


_UNDECODABLE_RE = re.compile(r'^Unable to decode path "(.*)" to string$', re.S)


def _undecodable_name(e: BaseException) -> str | None:
    """The path watchfiles could not decode (its Rust side raises this for a file name
    that is not UTF-8, inside the ExceptionGroup of anyio's task group); None when `e`
    is anything else, or carries any other error too."""
    if isinstance(e, BaseExceptionGroup):
        names = [_undecodable_name(sub) for sub in e.exceptions]
        return names[0] if names and all(n is not None for n in names) else None
    if type(e).__name__ != "WatchfilesRustInternalError":
        return None
    m = _UNDECODABLE_RE.match(str(e))
    return m.group(1) if m else None


def _unlink(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False
