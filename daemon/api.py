"""The library API that agents import and the CLI fronts: want, get, path, release...

    from daemon import api
    path = api.get("report-2024.pdf", provider="mirror")       # waits, returns a Path

Every call validates its whole input before it changes anything, so a bad entry
leaves the manifest untouched.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import retention
from .config import Settings, load_settings, parse_duration
from .errors import PrefetchError, TimeoutExpired, UsageError
from .fetch import Engine, Outcome, Progress
from .manifest import STATES, Manifest, WantSpec
from .providers import resolve_provider
from .store import Store, check_sha256, validate_dest

POLL_INTERVAL = 0.05


@dataclass(frozen=True)
class GetResult:
    """What `get` did for one file_id: a path, or the error that stopped it."""

    file_id: str
    path: Path | None
    error: PrefetchError | None = None


class Prefetch:
    """One handle on a root and its manifest. Cheap to create; close() when done."""

    def __init__(self, settings: Settings | None = None, **load: Any) -> None:
        self.settings = settings or load_settings(**load)
        self.manifest = Manifest(self.settings.db_path)
        self.store = Store(self.settings.root)

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
        progress: Progress | None = None, **opts: Any,
    ) -> list[GetResult]:
        """Want the files and wait until each is ready or failed (or the timeout)."""
        self.want(file_ids, **opts)
        if self.daemon_pid() is not None:
            return self._wait_for_daemon(file_ids, timeout)
        results = asyncio.run(
            self._get_in_process(list(dict.fromkeys(file_ids)), timeout, progress))
        by_id = {r.file_id: r for r in results}
        return [by_id[f] for f in file_ids]

    def get(self, file_id: str, *, timeout: float | None = None, **opts: Any) -> Path:
        """Want one file and return its path once ready; raise the error that stopped it."""
        (result,) = self.get_many([file_id], timeout=timeout, **opts)
        if result.error is not None:
            raise result.error
        assert result.path is not None
        return result.path

    async def _get_in_process(
        self, file_ids: list[str], timeout: float | None, progress: Progress | None
    ) -> list[GetResult]:
        engine = Engine(self.settings, self.manifest, self.store, progress=progress)
        try:
            tasks = [asyncio.ensure_future(engine.fetch(f)) for f in file_ids]
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            results = []
            for fid, t in zip(file_ids, tasks):
                if t in pending:
                    results.append(GetResult(fid, None, TimeoutExpired(
                        f"{fid}: not ready within {timeout:g}s (partial kept for resume)")))
                elif isinstance(t.exception(), PrefetchError):
                    results.append(GetResult(fid, None, t.exception()))
                elif t.exception() is not None:
                    raise t.exception()  # a bug, not a download failure: let it surface
                else:
                    out: Outcome = t.result()
                    results.append(GetResult(fid, out.path))
            return results
        finally:
            await engine.aclose()

    def _wait_for_daemon(self, file_ids: Sequence[str], timeout: float | None) -> list[GetResult]:
        deadline = None if timeout is None else time.monotonic() + timeout
        results: dict[str, GetResult] = {}
        while True:
            for fid in file_ids:
                if fid in results:
                    continue
                row = self.manifest.get(fid)
                if row is None:
                    results[fid] = GetResult(fid, None, PrefetchError(f"{fid}: removed meanwhile"))
                elif row["state"] == "ready" and row["path"]:
                    results[fid] = GetResult(fid, self.store.root / row["path"])
                elif row["state"] == "failed":
                    results[fid] = GetResult(fid, None, PrefetchError(row["error"] or "failed"))
            if len(results) == len(set(file_ids)):
                return [results[f] for f in file_ids]
            if deadline is not None and time.monotonic() >= deadline:
                return [results.get(f) or GetResult(f, None, TimeoutExpired(
                    f"{f}: not ready within {timeout:g}s")) for f in file_ids]
            if self.daemon_pid() is None:  # the daemon went away: finish here
                missing = list(dict.fromkeys(f for f in file_ids if f not in results))
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                rest = asyncio.run(self._get_in_process(missing, left, None))
                results.update({r.file_id: r for r in rest})
                return [results[f] for f in file_ids]
            time.sleep(POLL_INTERVAL)

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
        """Done with these: unwant and delete now. Returns the paths removed."""
        rows = []
        for fid in file_ids:
            row = self.manifest.get(fid)
            if row is None:
                raise PrefetchError(f"not in the manifest: {fid}")
            rows.append(row)
        self.manifest.unwant(file_ids)
        return [p for row in rows if (p := self._evict(row, "release"))]

    def _evict(self, row: dict, reason: str, unwant: bool = False) -> str | None:
        """Delete one entry's file now; its row stays as `evicted` (the history)."""
        removed = None
        if row["path"] and row["sha256"] and self.store.unlink(row["path"], row["sha256"]):
            removed = row["path"]
        if row["sha256"] and not self.manifest.hash_in_use(row["sha256"], row["file_id"]):
            self.store.remove_object(row["sha256"])  # only if no other path links to it
        self.manifest.record(
            row["file_id"], {"kind": "evict", "provider": row["resolved_provider"],
                             "destination": removed, "bytes": row["size"],
                             "sha256": row["sha256"], "error": reason},
            state="evicted", path=None, **({"wanted": 0, "pin": 0} if unwant else {}),
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
        in_use = self.manifest.referenced_hashes()
        objects = [sha for sha in self.store.unreferenced() if sha not in in_use]
        if not dry_run:
            for sha in objects:
                self.store.remove_object(sha)
        return {"deleted": deleted, "objects_removed": objects}

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
            results = {x.file_id: x for x in asyncio.run(self._get_in_process(refetch, None, None))}
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
    with Prefetch() as p:
        return p.path(file_id)


def release(*file_ids: str) -> list[str]:
    with Prefetch() as p:
        return p.release(list(file_ids))


def status() -> dict[str, Any]:
    with Prefetch() as p:
        return p.status()
