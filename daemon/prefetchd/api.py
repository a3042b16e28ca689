"""The library API that agents import and the CLI fronts: want, get, path, release...

    from prefetchd import api
    path = api.get("report-2024.pdf", provider="mirror")       # waits, returns a Path

Every call validates its whole input before it changes anything, so a bad entry
leaves the manifest untouched.
"""

from __future__ import annotations

import asyncio
import contextvars
import fcntl
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import retention
from .config import Settings, load_settings, parse_duration
from .errors import PrefetchError, TimeoutExpired, UsageError
from .fetch import Engine, Outcome, Progress
from .manifest import STATES, Manifest, NoStateError, WantSpec
from .providers import resolve_provider
from .strays import remove_stray_links
from .store import META, Store, check_sha256, key_of, validate_dest

POLL_INTERVAL = 0.05
_RO_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# States in which an entry keeps failing transiently: `get` waits on them at most
# download.get_patience, since nothing says they will ever end.
STUCK_STATES = ("retrying", "waiting_space")

Notice = Callable[[str], None]
"""Where `get` says what it is waiting for (a terminal, in the CLI)."""

# The file_id an in-process fetch works on, so the engine's backoff sleep (which is
# told only a delay) can say which entry is retrying.
_FETCHING: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "prefetchd_fetching", default=None)


class GaveUpError(PrefetchError):
    """`get` stopped waiting on an entry that kept failing transiently for longer than
    download.get_patience (the daemon, if one runs, keeps trying)."""

    def __init__(self, message: str, *, file_id: str, patience: float) -> None:
        super().__init__(message)
        self.file_id = file_id
        self.patience = patience


@dataclass(frozen=True)
class GetResult:
    """What `get` did for one file_id: a path, or the error that stopped it.

    `state` is the entry's manifest state when `get` returned (None if it has none).
    """

    file_id: str
    path: Path | None
    error: PrefetchError | None = None
    state: str | None = None


def format_duration(seconds: float) -> str:
    """Seconds as the config writes them ('3s', '2m', '1m30s', '0.5s')."""
    if seconds < 60:
        return f"{seconds:g}s"
    whole = int(round(seconds))
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    return "".join(f"{n}{u}" for n, u in ((h, "h"), (m, "m"), (s, "s")) if n) or "0s"


class _ReadOnlyStore(Store):
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

    def linked(self, sha: str, rel: str) -> bool:
        return self.root_fd >= 0 and self.objects_fd >= 0 and super().linked(sha, rel)


class Prefetch:
    """One handle on a root and its manifest. Cheap to create; close() when done.

    `read_only=True` (status, ls, path, stats) opens an existing manifest read-only and
    creates nothing: no root, no state dir, no database; with no state there it
    raises NoStateError (exit 1).
    """

    def __init__(self, settings: Settings | None = None, *, read_only: bool = False,
                 **load: Any) -> None:
        self.settings = settings or load_settings(**load)
        self.read_only = read_only
        self.manifest = Manifest(self.settings.db_path, read_only=read_only)
        try:
            self.store = (_ReadOnlyStore(self.settings.root) if read_only
                          else Store(self.settings.root))
        except BaseException:
            self.manifest.close()
            raise

    def close(self) -> None:
        self.manifest.close()
        self.store.close()

    def __enter__(self) -> Prefetch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests --------------------------------------------------------------------

    def specs(
        self, file_ids: Sequence[str], *, provider: str | None = None,
        sha256: str | None = None, size: int | None = None, dest: str | None = None,
        pin: bool = False, ttl: str | float | None = None,
    ) -> list[WantSpec]:
        """Validate a request and turn it into manifest entries (no side effects)."""
        if not file_ids:
            raise UsageError("no file_id given")
        if (sha256 or size is not None or dest) and len(file_ids) > 1:
            raise UsageError("--sha256, --size and --dest apply to one file_id at a time")
        specs = []
        for fid in file_ids:
            if not isinstance(fid, str) or not fid.strip() or "\x00" in fid or len(fid) > 2048:
                raise UsageError(f"file_id {str(fid)[:80]!r} is empty, too long or has a NUL")
            resolve_provider(fid, provider, self.settings)
            specs.append(WantSpec(
                file_id=fid,
                provider=provider,
                sha256=check_sha256(sha256) if sha256 else None,
                size=_check_size(size),
                dest="/".join(validate_dest(dest)) if dest else None,
                pin=bool(pin),
                ttl=_check_ttl(ttl),
            ))
        self._check_dests(specs)
        return specs

    def _check_dests(self, specs: Sequence[WantSpec]) -> None:
        for s in specs:
            if not s.dest:
                continue
            for row in self.manifest.db.query(
                "SELECT file_id FROM files WHERE (dest = ? OR path = ?) AND file_id != ?"
                " AND state != 'evicted'", [s.dest, s.dest, s.file_id]
            ):
                raise UsageError(f"dest {s.dest} is already used by file_id {row['file_id']}")

    def want(self, file_ids: Sequence[str], **opts: Any) -> list[WantSpec]:
        specs = self.specs(file_ids, **opts)
        self.manifest.want(specs)
        return specs

    def unwant(self, file_ids: Sequence[str]) -> None:
        unknown = self.manifest.unwant(file_ids)
        if unknown:
            raise PrefetchError(f"not in the manifest: {', '.join(unknown)}")

    # -- getting files ---------------------------------------------------------------

    def daemon_pid(self) -> int | None:
        """The pid of the daemon holding this state dir's lock, or None."""
        try:
            fd = os.open(self.settings.lock_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = os.read(fd, 64).decode(errors="replace").strip()
                return int(text) if text.isdigit() else -1
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def get_many(
        self, file_ids: Sequence[str], *, timeout: float | None = None,
        progress: Progress | None = None, notice: Notice | None = None, **opts: Any,
    ) -> list[GetResult]:
        """Want the files and wait until each has settled; one result per id given.

        An id settles when it is ready, has failed permanently, has kept failing
        transiently (retrying, waiting_space) for download.get_patience, or at
        `timeout`: so `get` always ends, even for a URL that never answers.
        """
        self.want(file_ids, **opts)
        unique = list(dict.fromkeys(file_ids))
        if self.daemon_pid() is not None:
            results = self._wait_for_daemon(unique, timeout, notice)
        else:
            results = asyncio.run(self._get_in_process(unique, timeout, progress, notice))
        by_id = {r.file_id: self._with_state(r) for r in results}
        return [by_id[f] for f in file_ids]

    def _with_state(self, result: GetResult) -> GetResult:
        row = self.manifest.get(result.file_id)
        return replace(result, state=row["state"] if row else None)

    def get(self, file_id: str, *, timeout: float | None = None, **opts: Any) -> Path:
        """Want one file and return its path once ready; raise the error that stopped it."""
        (result,) = self.get_many([file_id], timeout=timeout, **opts)
        if result.error is not None:
            raise result.error
        assert result.path is not None
        return result.path

    async def _get_in_process(
        self, file_ids: list[str], timeout: float | None, progress: Progress | None,
        notice: Notice | None = None,
    ) -> list[GetResult]:
        """Download here. The engine's backoff sleeps tell when an id starts retrying,
        so the patience is counted from its first transient failure."""
        patience = self.settings.download.get_patience
        loop = asyncio.get_running_loop()
        retrying_since: dict[str, float] = {}

        async def backoff(delay: float) -> None:
            fid = _FETCHING.get()
            if fid is not None and fid not in retrying_since:
                retrying_since[fid] = loop.time()
                if notice is not None:
                    notice(f"{fid}: failed for now, retrying; waiting up to "
                           f"{format_duration(patience)} (download.get_patience)")
            await asyncio.sleep(delay)

        async def fetch_one(fid: str) -> Outcome:
            _FETCHING.set(fid)  # the engine's task for fid copies this context
            return await engine.fetch(fid)

        engine = Engine(self.settings, self.manifest, self.store, progress=progress,
                        sleep=backoff)
        ended: dict[str, GetResult] = {}
        cut: dict[str, str] = {}  # id -> why its wait was cut short ("timeout"/"patience")
        try:
            tasks = {fid: asyncio.ensure_future(fetch_one(fid)) for fid in file_ids}
            deadline = None if timeout is None else loop.time() + timeout
            pending = set(tasks.values())
            while pending:
                now = loop.time()
                # Bare `patience`: an id that starts retrying during this wait expires
                # no sooner (POLL_INTERVAL keeps a zero patience from spinning).
                waits = [max(patience, POLL_INTERVAL)] + [
                    since + patience - now for fid, since in retrying_since.items()
                    if tasks[fid] in pending]
                if deadline is not None:
                    waits.append(deadline - now)
                _, pending = await asyncio.wait(pending, timeout=max(0.0, min(waits)))
                now = loop.time()
                for fid, task in tasks.items():
                    if task not in pending:
                        continue
                    if deadline is not None and now >= deadline:
                        cut[fid] = "timeout"
                    elif fid in retrying_since and now - retrying_since[fid] >= patience:
                        cut[fid] = "patience"
                    else:
                        continue
                    task.cancel()
                    pending.discard(task)
            for fid, task in tasks.items():
                if fid not in cut:
                    ended[fid] = _ended(fid, task)
            await asyncio.gather(*tasks.values(), return_exceptions=True)
        finally:
            await engine.aclose()  # cancels what is left; partials stay for a resume
        if cut:
            partials = self.store.partial_keys()
            for fid, why in cut.items():
                ended[fid] = self._cut_short(fid, why, timeout, patience,
                                             key_of(fid) in partials)
        return [ended[f] for f in file_ids]

    def _cut_short(self, fid: str, why: str, timeout: float | None, patience: float,
                   partial: bool) -> GetResult:
        """The result of an id whose in-process wait ended early (timeout or patience)."""
        path = self.path(fid)
        if path is not None:  # ready (e.g. --timeout 0 on a file already here)
            return GetResult(fid, path)
        kept = " (partial kept for resume)" if partial else ""
        if why == "timeout":
            assert timeout is not None
            return GetResult(fid, None, TimeoutExpired(
                f"{fid}: not ready within {format_duration(timeout)}{kept}"))
        return GetResult(fid, None, GaveUpError(
            f"{fid}: still failing after retrying for {format_duration(patience)} "
            f"(download.get_patience){kept}; -v shows each attempt's error",
            file_id=fid, patience=patience))

    def _wait_for_daemon(self, file_ids: Sequence[str], timeout: float | None,
                         notice: Notice | None = None) -> list[GetResult]:
        """Poll the manifest while the daemon works, until every id has settled."""
        patience = self.settings.download.get_patience
        deadline = None if timeout is None else time.monotonic() + timeout
        stuck_since: dict[str, float] = {}
        results: dict[str, GetResult] = {}
        told = False
        while True:
            now = time.monotonic()
            for fid in file_ids:
                if fid in results:
                    continue
                row = self.manifest.get(fid)
                settled = _settled(fid, row, self.store.root)
                if settled is None and row is not None and row["state"] in STUCK_STATES:
                    if fid not in stuck_since and notice is not None:
                        notice(f"{fid}: {row['state']} ({row['error']}); waiting up to "
                               f"{format_duration(patience)} (download.get_patience)")
                    since = stuck_since.setdefault(fid, now)
                    if now - since >= patience:
                        settled = GetResult(fid, None, GaveUpError(
                            f"{fid}: still {row['state']} after "
                            f"{format_duration(patience)} (download.get_patience): "
                            f"{row['error']}; the daemon keeps trying",
                            file_id=fid, patience=patience))
                if settled is not None:
                    results[fid] = settled
            if len(results) == len(file_ids):
                return [results[f] for f in file_ids]
            if deadline is not None and time.monotonic() >= deadline:
                assert timeout is not None
                return [results.get(f) or self._daemon_timeout(f, timeout) for f in file_ids]
            if self.daemon_pid() is None:  # the daemon went away: finish here
                missing = [f for f in file_ids if f not in results]
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                rest = asyncio.run(self._get_in_process(missing, left, None, notice))
                results.update({r.file_id: r for r in rest})
                return [results[f] for f in file_ids]
            if not told and notice is not None:
                notice(f"waiting for the daemon to fetch "
                       f"{len(file_ids) - len(results)} file(s)")
                told = True
            time.sleep(POLL_INTERVAL)

    def _daemon_timeout(self, fid: str, timeout: float) -> GetResult:
        row = self.manifest.get(fid)
        state = row["state"] if row else "gone"
        return GetResult(fid, None, TimeoutExpired(
            f"{fid}: not ready within {format_duration(timeout)} (state {state}; "
            "the daemon carries on)"))

    def path(self, file_id: str) -> Path | None:
        """The absolute path if the file is ready and in place, else None."""
        row = self.manifest.get(file_id)
        if row is None or row["state"] != "ready" or not row["path"]:
            return None
        if not self.store.linked(row["sha256"], row["path"]):
            return None
        return self.store.root / row["path"]

    # -- removal ---------------------------------------------------------------------

    def release(self, file_ids: Sequence[str]) -> list[str]:
        """Done with these: unwant and delete now. Returns the paths removed.

        The entry stays (state `evicted`, its history), but its request options
        (provider, sha256, size, dest, ttl, pin) are cleared: a later request starts
        from what it says, not from a wrong --sha256 or --dest given before.
        """
        rows = self._known_rows(file_ids)
        self.manifest.unwant(file_ids)
        return [p for row in rows if (p := self._evict(row, "release", clear_options=True))]

    def forget(self, file_ids: Sequence[str]) -> list[str]:
        """Remove the entries with their options and state, and a ready file at its
        destination (like release). Their events stay; their objects stay while other
        entries link them. Returns the paths removed."""
        self._known_rows(file_ids)
        return self.apply_request([], [], file_ids)

    def apply_request(self, wants: Sequence[WantSpec], unwants: Sequence[str],
                      forgets: Sequence[str] = ()) -> list[str]:
        """Apply one validated request (CLI, inbox): forgotten entries' files go first,
        then one manifest transaction; returns the paths removed.

        Files before rows: a crash in between leaves a ready row without its file,
        which the daemon re-links or re-fetches at start (and a forget can be given
        again), rather than a file that no row knows and nothing would ever delete.
        """
        removed = []
        for fid in dict.fromkeys(forgets):
            row = self.manifest.get(fid)
            if row is not None and (path := self._remove_file(row)):
                removed.append(path)
        self.manifest.apply(wants, unwants, forgets)
        return removed

    def _known_rows(self, file_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The rows of these ids, or one error naming every id the manifest lacks."""
        rows = {fid: self.manifest.get(fid) for fid in dict.fromkeys(file_ids)}
        unknown = [fid for fid, row in rows.items() if row is None]
        if unknown:
            raise PrefetchError(f"not in the manifest: {', '.join(unknown)}")
        return [row for row in rows.values() if row is not None]

    def _remove_file(self, row: dict[str, Any]) -> str | None:
        """Unlink an entry's file if it is ours, and its object if nothing else uses it."""
        removed = None
        if row["path"] and row["sha256"] and self.store.unlink(row["path"], row["sha256"]):
            removed = row["path"]
        if row["sha256"] and not self.manifest.hash_in_use(row["sha256"], row["file_id"]):
            self.store.remove_object(row["sha256"])  # only if no other path links to it
        return removed

    def _evict(self, row: dict, reason: str, unwant: bool = False,
               clear_options: bool = False) -> str | None:
        """Delete one entry's file now; its row stays as `evicted` (the history)."""
        removed = self._remove_file(row)
        fields: dict[str, Any] = {"state": "evicted", "path": None}
        if unwant or clear_options:
            fields.update(wanted=0, pin=0)
        if clear_options:
            fields.update(provider=None, expected_sha256=None, expected_size=None, dest=None,
                          ttl=None)
        self.manifest.record(
            row["file_id"], {"kind": "evict", "provider": row["resolved_provider"],
                             "destination": removed, "bytes": row["size"],
                             "sha256": row["sha256"], "error": reason},
            **fields,
        )
        return removed

    def gc(
        self, dry_run: bool = False, *, now: float | None = None, need_bytes: int = 0
    ) -> dict[str, Any]:
        """One retention pass: delete what the policy says, then unreferenced objects.

        Returns {"deleted": [{file_id, path, kind, reason}], "objects_removed": [sha]}.
        """
        ret = self.settings.retention
        now = time.time() if now is None else now
        rows = {r["file_id"]: r for r in self.manifest.rows("ready")}
        free = None
        if ret.min_free_bytes or need_bytes:
            st = os.statvfs(self.store.root)
            free = st.f_bavail * st.f_frsize
        decisions = retention.plan(
            retention.items_from_rows(list(rows.values())), now=now, default_ttl=ret.ttl,
            max_bytes=ret.max_bytes, free_bytes=free, min_free_bytes=ret.min_free_bytes,
            need_bytes=need_bytes,
        )
        deleted = [{"file_id": d.file_id, "path": rows[d.file_id]["path"], "kind": d.kind,
                    "reason": d.reason} for d in decisions]
        if not dry_run:
            for d in decisions:
                self._evict(rows[d.file_id], d.reason, unwant=d.kind != "evicted")
        # Links no entry accounts for (a crash between link and record) keep objects
        # alive for ever; older than a download's link-then-record window, they go.
        strays = remove_stray_links(self.manifest, self.store, dry_run=dry_run)
        in_use = self.manifest.referenced_hashes()
        objects = [sha for sha in self.store.unreferenced() if sha not in in_use]
        if not dry_run:
            for sha in objects:
                self.store.remove_object(sha)
        return {"deleted": deleted, "objects_removed": objects, "strays_removed": strays}

    # -- inspection ------------------------------------------------------------------

    def ls(self, state: str | None = None) -> list[dict[str, Any]]:
        if state is not None and state not in STATES:
            raise UsageError(f"--state: {state!r} is not one of {', '.join(STATES)}")
        return [_public_row(r, self.store.root) for r in self.manifest.rows(state)]

    def status(self) -> dict[str, Any]:
        counts = self.manifest.state_counts()
        pid = self.daemon_pid()
        objects = list(self.store.objects())
        mirror = self.manifest.mirror_state()
        return {
            "daemon": {"running": pid is not None, "pid": pid if pid and pid > 0 else None},
            "root": str(self.store.root),
            "state_dir": str(self.settings.state_dir),
            "states": counts,
            "queue": sum(counts[s] for s in ("queued", "retrying", "downloading",
                                             "waiting_space")),
            "ready_bytes": self.manifest.ready_bytes(),
            "store": {"objects": len(objects), "bytes": sum(st.st_size for _, st in objects)},
            "outbox_backlog": self.manifest.outbox_backlog(),
            "mirror": {"configured": self.settings.supabase is not None,
                       "last_push_at": mirror["last_push_at"],
                       "last_error": mirror["last_error"],
                       "last_error_at": mirror["last_error_at"]},
            "last_errors": self.manifest.last_errors(),
        }

    def verify(self, file_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Re-hash ready files now; quarantine bad objects and re-fetch what used them."""
        rows = self.manifest.rows("ready")
        if file_ids:
            wanted = set(file_ids)
            unknown = wanted - {r["file_id"] for r in rows}
            if unknown:
                raise PrefetchError(f"not ready, nothing to verify: {', '.join(sorted(unknown))}")
            rows = [r for r in rows if r["file_id"] in wanted]
        bad = set()
        for sha in {r["sha256"] for r in rows}:
            if self.store.object_stat(sha) is None or self.store.hash_object(sha) != sha:
                bad.add(sha)
        # Every entry on a bad object loses its link, not only the ones asked about.
        affected = [r for r in self.manifest.rows("ready") if r["sha256"] in bad]
        for r in affected:
            self.store.unlink(r["path"], r["sha256"])
        for sha in bad:
            if self.store.object_stat(sha) is not None:
                self.store.quarantine(sha)
        for r in affected:
            self.manifest.record(
                r["file_id"], {"kind": "quarantine", "provider": r["resolved_provider"],
                               "sha256": r["sha256"], "error": "sha256 mismatch on verify"},
                state="queued" if r["wanted"] else "quarantined", sha256=None, path=None,
                error="stored object failed verification; re-fetching",
            )
        report = [{"file_id": r["file_id"], "ok": r["sha256"] not in bad, "sha256": r["sha256"]}
                  for r in rows]
        refetch = [r["file_id"] for r in affected if r["wanted"]]
        if refetch and self.daemon_pid() is None:
            results = {x.file_id: x for x in asyncio.run(
                self._get_in_process(refetch, None, None))}
            for x in report:
                if x["file_id"] in results:
                    x["refetched"] = results[x["file_id"]].error is None
        return report

    def scrub(self, budget_bytes: int, budget_seconds: float) -> dict[str, Any]:
        """Re-hash objects, oldest-verified first, within a budget; handle the bad ones.

        The budget is checked before each object, so one run hashes at most one object
        past it. Bad objects go through `verify` (quarantine + re-fetch).
        """
        started = time.monotonic()
        done_bytes = 0
        good: list[str] = []
        bad: list[str] = []
        for sha in self.manifest.scrub_order():
            if done_bytes >= budget_bytes or time.monotonic() - started >= budget_seconds:
                break
            st = self.store.object_stat(sha)
            if st is not None and self.store.hash_object(sha) == sha:
                good.append(sha)
            else:
                bad.append(sha)
            done_bytes += st.st_size if st is not None else 0
        self.manifest.mark_verified(good)
        affected = [r["file_id"] for r in self.manifest.rows("ready") if r["sha256"] in bad]
        if affected:
            self.verify(affected)
        return {"objects": len(good) + len(bad), "bytes": done_bytes, "bad": bad,
                "requeued": affected}

    def stats(self) -> list[dict[str, Any]]:
        """Per provider: downloads, cache_hits, failures, bytes, hit_rate (hits / served)."""
        rows = self.manifest.stats()
        for r in rows:
            served = (r["downloads"] or 0) + (r["cache_hits"] or 0)
            r["hit_rate"] = round((r["cache_hits"] or 0) / served, 4) if served else None
        return rows

    def push_stats(self) -> int:
        """Mirror the outbox to Supabase now; returns how many events were sent."""
        from .stats import Mirror

        return Mirror(self.settings, self.manifest).push()


def _ended(fid: str, task: asyncio.Future[Outcome]) -> GetResult:
    """The result of a finished in-process fetch; a non-prefetch exception is a bug
    and surfaces as one."""
    exc = task.exception()
    if isinstance(exc, PrefetchError):
        return GetResult(fid, None, exc)
    if exc is not None:
        raise exc
    return GetResult(fid, task.result().path)


def _settled(fid: str, row: dict[str, Any] | None, root: Path) -> GetResult | None:
    """Whether the daemon is done with an entry, as `get` sees it; None: keep waiting."""
    if row is None:
        return GetResult(fid, None, PrefetchError(f"{fid}: forgotten meanwhile"))
    if row["state"] == "ready" and row["path"]:
        return GetResult(fid, root / row["path"])
    if row["state"] == "failed":
        return GetResult(fid, None, PrefetchError(row["error"] or f"{fid}: failed"))
    if not row["wanted"] and row["state"] != "downloading":
        return GetResult(fid, None, PrefetchError(
            f"{fid}: released or unwanted meanwhile (state {row['state']})"))
    return None


def _check_size(size: int | None) -> int | None:
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise UsageError(f"size: {size!r} is not a byte count")
    return size


def _check_ttl(ttl: str | float | None) -> float | None:
    if ttl is None:
        return None
    try:
        return parse_duration(ttl)
    except ValueError as e:
        raise UsageError(f"ttl: {e}") from None


def _public_row(row: dict[str, Any], root: Path) -> dict[str, Any]:
    """The stable `ls --json` shape (documented in the README)."""
    return {
        "file_id": row["file_id"],
        "state": row["state"],
        "wanted": bool(row["wanted"]),
        "pin": bool(row["pin"]),
        "provider": row["resolved_provider"] or row["provider"],
        "size": row["size"],
        "sha256": row["sha256"],
        "path": str(root / row["path"]) if row["path"] else None,
        "error": row["error"],
        "updated_at": row["updated_at"],
    }


def want(*file_ids: str, **opts: Any) -> None:
    """Module-level shortcut with settings from the environment/default config."""
    with Prefetch() as p:
        p.want(list(file_ids), **opts)


def get(file_id: str, **opts: Any) -> Path:
    with Prefetch() as p:
        return p.get(file_id, **opts)


def path(file_id: str) -> Path | None:
    """The path if ready, else None (also before anything created the state)."""
    try:
        p = Prefetch(read_only=True)
    except NoStateError:
        return None
    with p:
        return p.path(file_id)


def release(*file_ids: str) -> list[str]:
    with Prefetch() as p:
        return p.release(list(file_ids))


def forget(*file_ids: str) -> list[str]:
    """Remove entries with their options and state (their events stay)."""
    with Prefetch() as p:
        return p.forget(list(file_ids))


def status() -> dict[str, Any]:
    with Prefetch(read_only=True) as p:
        return p.status()
