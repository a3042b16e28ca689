"""One download: provider stream -> temp -> verify -> publish -> link; retry and resume.

The Engine is shared by the daemon and by in-process `get`. It runs at most one
download per file_id in a process (callers share the result) and, through a
byte-range lock in the store, one per file_id across processes. Network reads
overlap with hashing and disk writes: each buffer is handed to a worker thread
(hashlib and os.write release the GIL) while the next one is received.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from . import limits
from .config import Settings
from .errors import (
    DownloadError,
    HashMismatchError,
    NoSpaceError,
    NotFoundError,
    PermanentError,
    PrefetchError,
    StoreError,
    TooLargeError,
    TransientError,
    UnsafePathError,
)
from .manifest import Manifest
from .providers import Provider, RangeNotSatisfiable, build_provider, resolve_provider
from .store import Partial, Store, id_component, key_of, safe_name
from .strays import remove_stray_links
from .supa import Upload, UploadIndex

log = structlog.get_logger("prefetchd.fetch")

Progress = Callable[[str, int, int | None], None]
LOCK_POLL = 0.05  # seconds between tries of a file's lock that another process holds
FREE_SPACE_TTL = 0.25  # seconds a statvfs answer is used for (see Engine._check_space)
SPACE_BACKOFF = 5.0    # first wait of an entry that ran out of space again (doubles)


@dataclass(frozen=True)
class Source:
    """Where one download's bytes come from.

    `provider` serves `remote_id`; `label` is the provider name recorded in events and
    statistics (the upload's provider, also when its Storage copy served the bytes).
    """

    provider: str
    remote_id: str
    expected: str | None
    label: str
    name: str | None = None


@dataclass(frozen=True)
class Outcome:
    file_id: str
    path: Path
    sha256: str
    size: int
    provider: str
    cache_hit: bool


def human_size(n: int) -> str:
    """Bytes for an error line: `100 MiB`, `1.5 GiB`, `512 bytes`."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"


def space_backoff(hits: int, cap: float) -> float | None:
    """How long an entry that ran out of space waits before its next try: not at all
    the first time (a cleanup pass runs at once), then 5 s, 10 s, ... up to `cap`, so
    one that can never fit does not fill the disk, or run a pass, every few seconds."""
    if hits < 1:
        return None
    return min(max(cap, SPACE_BACKOFF), SPACE_BACKOFF * 2 ** min(hits - 1, 20))


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**attempt))."""
    return rng.uniform(0, min(cap, base * (2**attempt)))


class GroupCommit:
    """Publish finished downloads and record them ready, many files at a time.

    Each fsync ends in a disk cache flush, and a small file needs three (its bytes,
    the objects/ directory, the destination directory): for thousands of small files
    the flushes, not the network, set the pace. A finished download waits here
    while the flusher links every file that finished meanwhile after one syncfs,
    and records them ready in one SQLite transaction after the next syncfs
    (Store.sync_then_link). Where syncfs is missing, each file was published on its
    own and only the records are grouped.
    """

    def __init__(self, manifest: Manifest, store: Store, io: ThreadPoolExecutor) -> None:
        self.manifest = manifest
        self.store = store
        self._io = io
        self._queue: list[_Commit] = []
        self._flusher: asyncio.Task[None] | None = None

    async def commit(self, publish: tuple[Partial, str, str] | None, file_id: str,
                     event: dict[str, Any], fields: dict[str, Any]) -> None:
        """Publish (part, sha, rel) if given, then record; raises what stopped this file."""
        item = _Commit(publish, file_id, event, fields,
                       asyncio.get_running_loop().create_future())
        # Mark an outcome as seen even when its waiter was cancelled (no asyncio warning).
        item.done.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._queue.append(item)
        if self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush())
        # A cancelled waiter does not stop the flush: the file is published, and its
        # record lands with the rest of the batch.
        await asyncio.shield(item.done)

    async def drain(self) -> None:
        if self._flusher is not None:
            await asyncio.shield(self._flusher)

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        linked: list[_Commit] = []  # linked; durable after the next syncfs
        try:
            while self._queue or linked:
                batch, self._queue = self._queue, []
                todo = [c for c in batch if c.publish is not None]
                try:
                    errors = await loop.run_in_executor(
                        self._io, self.store.sync_then_link, [c.publish for c in todo],
                    ) if todo or linked else []
                    ready = linked + [c for c in batch if c.publish is None]
                    self.manifest.record_many([(c.file_id, c.event, c.fields) for c in ready])
                except Exception as e:  # noqa: BLE001 - handed to every waiter it concerns
                    for c in linked + batch:
                        c.done.set_exception(e)
                    linked = []
                    continue
                for c in ready:
                    c.done.set_result(None)
                linked = []
                for c, err in zip(todo, errors):
                    if err is None:
                        linked.append(c)
                    else:
                        c.done.set_exception(err)
        finally:
            self._flusher = None


@dataclass
class _Commit:
    publish: tuple[Partial, str, str] | None
    file_id: str
    event: dict[str, Any]
    fields: dict[str, Any]
    done: asyncio.Future[None]


class Engine:
    def __init__(
        self,
        settings: Settings,
        manifest: Manifest,
        store: Store,
        *,
        progress: Progress | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
        rng: random.Random | None = None,
        on_no_space: Callable[[int], None] | None = None,
        observe: Callable[[str, str, int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.manifest = manifest
        self.store = store
        self.progress = progress
        self.on_no_space = on_no_space
        self.observe = observe or (lambda _kind, _provider, _bytes: None)
        self._sleep = sleep
        self._rng = rng or random.Random()
        dl = settings.download
        self._providers: dict[str, Provider] = {}
        self._retired: list[Provider] = []
        self._inflight: dict[str, asyncio.Task[Outcome]] = {}
        self._global = asyncio.Semaphore(dl.concurrency)
        self._per: dict[str, asyncio.Semaphore] = {}
        self.uploads = UploadIndex(settings) if settings.supabase is not None else None
        self._io = ThreadPoolExecutor(max_workers=dl.concurrency + 1,
                                      thread_name_prefix="prefetchd-io")
        self._commits = GroupCommit(manifest, store, self._io)
        # Keys with partial downloads in tmp/, listed once: a new file needs no listing.
        self._partial_keys = store.partial_keys()
        self._free, self._free_at = 0, float("-inf")  # see _check_space
        self._fs_size = 0  # the root filesystem's total size, read with the free space

    def reconfigure(self, settings: Settings) -> None:
        """Take new settings (SIGHUP); providers are rebuilt on next use, old ones closed
        at the end so downloads in flight keep their connections."""
        self.settings = settings
        self.uploads = UploadIndex(settings) if settings.supabase is not None else None
        self._retired.extend(self._providers.values())
        self._providers = {}
        self._per = {}

    async def cancel_all(self) -> None:
        """Stop every download in flight; their partials stay for a later resume."""
        tasks = list(self._inflight.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def aclose(self) -> None:
        await self.cancel_all()
        for p in [*self._providers.values(), *self._retired]:
            await p.aclose()
        self._providers.clear()
        self._retired.clear()
        await self._commits.drain()
        self._io.shutdown(wait=True)

    def provider(self, name: str) -> Provider:
        if name not in self._providers:
            self._providers[name] = build_provider(name, self.settings)
        return self._providers[name]

    def _semaphore(self, name: str) -> asyncio.Semaphore:
        if name not in self._per:
            cfg = self.settings.provider_config(name)
            n = (cfg.concurrency if cfg is not None and cfg.concurrency else
                 self.settings.download.per_provider_concurrency)
            self._per[name] = asyncio.Semaphore(n)
        return self._per[name]

    async def fetch(self, file_id: str) -> Outcome:
        """Make a wanted file_id ready; concurrent callers for one id share one download."""
        task = self._inflight.get(file_id)
        if task is None:
            task = asyncio.ensure_future(self._fetch(file_id))
            self._inflight[file_id] = task
            task.add_done_callback(lambda _t: self._inflight.pop(file_id, None))
        return await asyncio.shield(task)

    # -- the whole job for one file_id -------------------------------------------------

    async def _fetch(self, file_id: str) -> Outcome:
        row = self.manifest.get(file_id)
        if row is None:
            raise PermanentError(f"{file_id} is not in the manifest; want it first")
        try:
            return await self._fetch_row(row)
        except (PrefetchError, OSError) as e:
            if getattr(e, "recorded", False):
                raise
            # Not a download failure the retry loop knows (a dest the store refuses: a
            # symlink or a foreign file in the way), or one from before it started: a
            # permanent failure on the entry, so it is never tried again in a loop.
            where = row["dest"] or f"downloads/{id_component(file_id)}"
            reason = (e.strerror or str(e)) if isinstance(e, OSError) else str(e)
            state = "failed"
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                err: DownloadError = NoSpaceError(f"{file_id}: no space left to link {where}")
                state = "waiting_space"
            elif isinstance(e, (StoreError, UnsafePathError, OSError)):
                err = PermanentError(f"dest {where}: {reason}")
            else:
                err = PermanentError(reason)
            self._failed(row, row["resolved_provider"] or row["provider"] or "", err,
                         state=state, attempts=1)
            raise err from None

    async def _fetch_row(self, row: dict) -> Outcome:
        file_id = row["file_id"]
        upload = await self._lookup(file_id, row["provider"])
        src = self._primary(row, upload)
        hit = await self._cache_hit(row, src)
        if hit is not None:
            if row["state"] != "ready":
                await asyncio.to_thread(self._drop_partials, key_of(file_id))
            return hit
        started = time.monotonic()
        async with self._global:
            try:
                return await self._download(row, src, started)
            except NotFoundError:
                if upload is None and self.uploads is not None and row["provider"]:
                    upload = await self._lookup(file_id, row["provider"], force=True)
                fallback = self._fallback(row, upload)
                if fallback is None:
                    raise
                log.info("fallback", file_id=file_id, provider=src.provider,
                         to=f"supabase:{fallback.remote_id}")
                return await self._download(row, fallback, started)

    async def _lookup(self, file_id: str, provider: str | None,
                      force: bool = False) -> Upload | None:
        """provider_file_uploads row for a file_id without an explicit provider."""
        if self.uploads is None or (provider and not force):
            return None
        try:
            return await asyncio.to_thread(self.uploads.lookup, file_id, provider)
        except TransientError as e:
            # Supabase down must not stop what patterns and providers can do alone.
            log.warning("lookup_failed", file_id=file_id, error=str(e))
            return None

    def _primary(self, row: dict, upload: Upload | None) -> Source:
        """Where the bytes come from first, and what they must hash to."""
        file_id = row["file_id"]
        if row["provider"] or upload is None:
            pname = resolve_provider(file_id, row["provider"], self.settings)
            label = pname
        else:
            pname = upload.provider if self.settings.provider_config(upload.provider) else (
                resolve_provider(file_id, None, self.settings))
            label = upload.provider
        original = self.provider(pname).returns_original
        # A hash learned from an earlier download is not used here: it checks the stored
        # object (scrub, verify), it does not say what the URL serves now.
        expected = (row["expected_sha256"]
                    or (upload.sha256 if upload is not None and original else None))
        return Source(pname, file_id, expected, label)

    def _fallback(self, row: dict, upload: Upload | None) -> Source | None:
        """The Supabase Storage copy of an upload (original bytes), if there is one."""
        if upload is None or self.uploads is None:
            return None
        path = self.uploads.storage_id(upload)
        if path is None:
            return None
        return Source("supabase", path, row["expected_sha256"] or upload.sha256, upload.provider,
                      upload.filename)

    async def _download(self, row: dict, src: Source, started: float) -> Outcome:
        """Attempts with retries and backoff for one source; records failures."""
        file_id = row["file_id"]
        dl = self.settings.download
        async with self._semaphore(src.provider):
            mismatches = 0
            attempt = 0
            while True:
                try:
                    self._room_for_known_minimum(row)
                    return await self._attempt(row, src, started)
                except HashMismatchError as e:
                    mismatches += 1
                    err: DownloadError = e if mismatches < 2 else PermanentError(
                        f"{e} (twice in a row)")
                except NoSpaceError as e:
                    self._wait_for_space(row, src.label, e, attempt + 1)
                    raise
                except DownloadError as e:
                    err = e
                if not err.transient:
                    self._failed(row, src.label, err, state="failed", attempts=attempt + 1)
                    raise err
                delay = (err.retry_after if err.retry_after is not None else
                         backoff_delay(attempt, dl.backoff_base, dl.backoff_max, self._rng))
                if attempt >= dl.retries or delay > dl.backoff_max:
                    self._failed(row, src.label, err, state="retrying", attempts=attempt + 1,
                                 next_attempt_at=time.time() + max(delay, dl.backoff_max))
                    raise err
                self.observe("retry", src.label, 0)
                log.info("retry", file_id=file_id, provider=src.provider, error=str(err),
                         delay_s=round(delay, 3), attempt=attempt + 1)
                await self._sleep(delay)
                attempt += 1

    def _failed(self, row: dict, pname: str, err: Exception, *, state: str, attempts: int,
                next_attempt_at: float | None = None, **fields: Any) -> None:
        """Record a fetch that ended without the file; `attempts` counts this fetch's
        tries on top of earlier fetches'."""
        file_id = row["file_id"]
        err.recorded = True  # type: ignore[attr-defined]  # Engine._fetch records the rest
        self.observe(state, pname, 0)
        log.warning("download", file_id=file_id, provider=pname, outcome=state, error=str(err))
        self.manifest.record(
            file_id,
            {"kind": "failure", "provider": pname, "error": str(err)},
            state=state, error=str(err), next_attempt_at=next_attempt_at,
            attempts=(row["attempts"] or 0) + attempts, **fields,
        )

    def _wait_for_space(self, row: dict, pname: str, err: NoSpaceError, attempts: int) -> None:
        """Park an entry in waiting_space and ask for a cleanup pass.

        ENOSPC on a download of unknown length makes the size reached the entry's
        known minimum (`min_size`): it is not tried again until that much is free,
        and never evicts others (nobody knows it would fit once they are gone). An
        entry that runs out of space again backs off (see space_backoff)."""
        min_size = row["min_size"]
        if err.at_least:
            min_size = max(min_size or 0, err.need_bytes)
        delay = space_backoff(row["attempts"] or 0, self.settings.download.backoff_max)
        self._failed(row, pname, err, state="waiting_space", attempts=attempts,
                     next_attempt_at=None if delay is None else time.time() + delay,
                     min_size=min_size)
        if self.on_no_space is not None:
            self.on_no_space(0 if err.at_least else err.need_bytes)

    def _dest(self, row: dict, name: str | None) -> str:
        if row["dest"]:
            return row["dest"]
        comp = id_component(row["file_id"])
        return f"downloads/{comp}/{safe_name(name, comp)}"

    def _drop_partials(self, key: str) -> None:
        """The entry became ready without downloading: no resume will want its partials
        (a killed download's .part and .meta), so they go now, not at the next start or
        reap. Skipped while another process holds the key: it is downloading, and its
        own publish removes its temp."""
        if not self.store.lock_key(key):
            return
        try:
            removed = self.store.discard_partials(key)
        finally:
            self.store.unlock_key(key)
        self._partial_keys.discard(key)
        if removed:
            log.info("partials_removed", key=key, files=removed, reason="entry is ready")

    def _earlier_name(self, row: dict, sha: str) -> str | None:
        """The name a download of these bytes would give them, without the network:
        the provider's name saved beside a partial of this file_id, else this
        file_id's last download of them (events outlive a forgotten row), else any
        entry's name for the same bytes. For Kimi that is `<original>.extracted.txt`."""
        file_id = row["file_id"]
        meta = self.store.partial_meta(key_of(file_id))
        if meta.get("file_id") == file_id and meta.get("name"):
            return str(meta["name"])
        dest = self.manifest.download_destination(file_id, sha)
        if dest is not None:
            p = Path(dest)
            if p.parent == self.store.root / "downloads" / id_component(file_id):
                return p.name
        return self.manifest.known_name(file_id, sha)

    async def _cache_hit(self, row: dict, src: Source) -> Outcome | None:
        """Ready and intact, or the same bytes already stored under another file_id."""
        pname, expected = src.label, src.expected
        sha = row["sha256"] if row["state"] == "ready" else None
        if sha and (expected is None or expected == sha) and row["path"] and (
            row["dest"] is None or row["dest"] == row["path"]
        ):
            if await asyncio.to_thread(self.store.linked, sha, row["path"]):
                return self._ready(row, pname, sha, row["size"], row["name"], row["path"],
                                   cache_hit=True, started=time.monotonic(), record_state=False)
        target = expected or sha
        st = await asyncio.to_thread(self.store.object_stat, target) if target else None
        if target and st is not None:
            name = (row["name"] or src.name
                    or await asyncio.to_thread(self._earlier_name, row, target)
                    or row["file_id"].rsplit("/", 1)[-1])
            rel = self._dest(row, name)
            await asyncio.to_thread(self.store.link, target, rel)
            return self._ready(row, pname, target, st.st_size, name, rel, cache_hit=True,
                               started=time.monotonic())
        return None

    def _ready(self, row: dict, pname: str, sha: str, size: int, name: str | None, rel: str,
               *, cache_hit: bool, started: float, record_state: bool = True) -> Outcome:
        change = self._ready_change(row, pname, sha, size, name, rel, cache_hit=cache_hit,
                                    started=started, record_state=record_state)
        self.manifest.record(row["file_id"], change[0], **change[1])
        self._moved(row, rel)
        return self._announce(row["file_id"], pname, sha, size, change[0])

    def _ready_change(self, row: dict, pname: str, sha: str, size: int, name: str | None,
                      rel: str, *, cache_hit: bool, started: float,
                      record_state: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
        """The event and the row fields that say a file is ready at `rel`."""
        event = {"kind": "cache_hit" if cache_hit else "download", "provider": pname,
                 "destination": str(self.store.root / rel), "bytes": size,
                 "duration_ms": int((time.monotonic() - started) * 1000),
                 "cache_hit": cache_hit, "sha256": sha}
        fields: dict[str, Any] = {}
        if record_state or row["state"] != "ready":
            fields = dict(state="ready", sha256=sha, size=size, name=name, path=rel,
                          resolved_provider=pname, error=None, next_attempt_at=None,
                          min_size=None, ready_at=time.time())
        return event, fields

    def _moved(self, row: dict, rel: str) -> None:
        """The entry now lives at `rel`: remove its link at the old place, if any."""
        if row["path"] and row["path"] != rel and row["sha256"]:
            self.store.unlink(row["path"], row["sha256"])

    def _announce(self, file_id: str, pname: str, sha: str, size: int,
                  event: dict[str, Any]) -> Outcome:
        cache_hit = event["cache_hit"]
        self.observe(event["kind"], pname, 0 if cache_hit else size)
        log.info("download", file_id=file_id, provider=pname, bytes=size,
                 path=event["destination"], duration_ms=event["duration_ms"],
                 outcome="cache_hit" if cache_hit else "downloaded")
        return Outcome(file_id, Path(event["destination"]), sha, size, pname, cache_hit)

    # -- one attempt ---------------------------------------------------------------------

    async def _attempt(self, row: dict, src: Source, started: float) -> Outcome:
        file_id = row["file_id"]
        key = key_of(file_id)
        fresh = row
        waited = not self.store.lock_key(key)
        if waited:
            await self._wait_for_lock(key)
        try:
            if waited:
                # Another process held it: it may have finished this file meanwhile.
                fresh = self.manifest.get(file_id) or row
                hit = await self._cache_hit(fresh, src)
                if hit is not None:
                    # The other process left its partial (if it died): ours to remove.
                    await asyncio.to_thread(self.store.discard_partials, key)
                    self._partial_keys.discard(key)
                    return hit
            if waited or key in self._partial_keys:
                # Earlier bytes may exist (another process had the lock, or an earlier
                # attempt kept them): take them over and re-hash them (disk work).
                part = await asyncio.to_thread(self.store.open_partial, key)
            else:
                part = self.store.new_partial(key)
            self._partial_keys.discard(key)  # added back below if this attempt keeps bytes
            try:
                name, tail = await self._stream(part, row, src)
                rel = self._dest(row, name)
                batched = self.store.batches
                sha = await asyncio.get_running_loop().run_in_executor(
                    self._io, self._seal, part, tail, row, src, rel, batched)
            except NoSpaceError:
                part.discard()  # on a full disk, room for others beats a resume
                raise
            except (TransientError, asyncio.CancelledError):
                part.close()  # keep the bytes: the next attempt (or process) resumes them
                if part.size:
                    self._partial_keys.add(key)
                raise
            except BaseException:
                part.discard()
                raise
            # Recorded before the lock is released, so a process waiting on it sees ready.
            event, fields = self._ready_change(fresh, src.label, sha, part.size, name, rel,
                                               cache_hit=False, started=started)
            try:
                await self._commits.commit((part, sha, rel) if batched else None, file_id,
                                           event, fields)
            except asyncio.CancelledError:
                raise  # the flush goes on without us and publishes the file
            except BaseException:
                part.discard()  # not published: nothing else will use these bytes
                raise
            self._moved(fresh, rel)
            return self._announce(file_id, src.label, sha, part.size, event)
        finally:
            self.store.unlock_key(key)

    async def _wait_for_lock(self, key: str) -> None:
        """Wait while another process downloads this key, polling without blocking.

        A blocking lockf in a worker thread cannot be cancelled: a timed-out `get` would
        wait for it at exit, and a cancelled daemon task would end up holding the lock.
        """
        while not self.store.lock_key(key):
            await asyncio.sleep(LOCK_POLL)

    def _seal(self, part: Partial, tail: bytearray | bytes, row: dict, src: Source,
              rel: str, batched: bool) -> str:
        """Write the last buffer, close and verify, in one worker call (for a small file,
        the only one); returns the sha256. Unless `batched` (the group commit publishes
        it with others), also fsync, publish and link here."""
        file_id = row["file_id"]
        if tail:
            part.write(tail)
        size = part.size
        sha = part.finish(sync=not batched)
        if row["expected_size"] is not None and size != row["expected_size"]:
            raise PermanentError(f"{file_id}: got {size} bytes, the request says "
                                 f"{row['expected_size']}")
        if src.expected and sha != src.expected:
            raise HashMismatchError(
                f"{file_id}: sha256 {sha[:16]}... does not match the expected "
                f"{src.expected[:16]}...")
        if batched:
            self.store.make_parents(rel)  # slow on disk: here, in parallel, not in the batch
        else:
            self.store.publish(part, sha)
            self.store.link(sha, rel)
        return sha

    async def _stream(self, part: Partial, row: dict, src: Source
                      ) -> tuple[str | None, bytearray | bytes]:
        """Fill `part` from the source, all but the last buffer; return (name, last buffer).

        The caller's _seal writes that buffer, so a body that arrives whole is written,
        hashed and published in a single worker call."""
        file_id, pname = row["file_id"], src.provider
        provider = self.provider(pname)
        lim = self.settings.limits
        meta = part.meta
        same_source = (meta.get("file_id") == file_id and meta.get("provider") == pname
                       and meta.get("remote_id", file_id) == src.remote_id)
        # A validator that only dates the file (Last-Modified, an mtime-size ETag) still
        # matches after a rewrite with the same size and mtime: resume on it only when
        # an expected hash will catch old prefix + new suffix (then the retry restarts).
        # A .meta from before "dated" existed counts as dated.
        trusted = not meta.get("dated", True) or src.expected is not None
        offset = part.size if same_source and meta.get("validator") and trusted else 0
        if part.size and not offset:
            part.truncate()
        loop = asyncio.get_running_loop()
        name: str | None = meta.get("name") if same_source else None
        total: int | None = None
        tail: bytearray | bytes = b""
        try:
            async with provider.open(src.remote_id, offset, meta.get("validator")) as body:
                if body.offset == 0 and part.size:
                    part.truncate()  # 200 to a Range request, or a changed validator
                name, total = src.name or body.name or name, body.total
                limits.check_size(lim, file_id, name, total)
                want_size = row["expected_size"]
                if want_size is not None and total is not None and total != want_size:
                    raise PermanentError(
                        f"{file_id}: the provider announces {total} bytes, the request says "
                        f"{want_size}")
                if total is not None:
                    self._check_space(file_id, total - part.size)
                meta = {"file_id": file_id, "provider": pname, "remote_id": src.remote_id,
                        "validator": body.validator, "dated": body.dated, "name": name}
                tail = await self._pump(part, body, file_id, name, total, loop, meta)
        except RangeNotSatisfiable as e:
            if e.total is None or e.total != part.size:
                part.truncate()
                raise TransientError(f"{file_id}: 416 for the partial; starting over") from None
            total = e.total  # the partial already holds every byte: verify it whole
        if total is not None and part.size + len(tail) != total:
            if tail:  # keep what arrived for the next attempt
                self._first_bytes(part, meta)
                await loop.run_in_executor(self._io, part.write, tail)
            raise TransientError(
                f"{file_id}: connection ended at {part.size} of {total} bytes")
        return name, tail

    def _first_bytes(self, part: Partial, meta: dict) -> None:
        """Before bytes are first kept on disk: save where they come from (for a resume)
        and show the entry as downloading. A body that arrives whole in one buffer never
        gets here, which spares small files a file write and a database transaction."""
        if part.meta == meta:
            return
        part.save_meta(meta)
        self.manifest.update(meta["file_id"], state="downloading",
                             resolved_provider=meta["provider"])

    def _statvfs(self) -> None:
        st = os.statvfs(self.store.root)
        self._free, self._free_at = st.f_bavail * st.f_frsize, time.monotonic()
        self._fs_size = st.f_blocks * st.f_frsize

    def _check_fits_at_all(self, file_id: str, need: int, at_least: bool = False) -> None:
        """A file larger than the filesystem (less the reserve) fails at once: waiting
        cannot help, and evicting every other file would not make room."""
        reserve = self.settings.retention.min_free_bytes
        if need > self._fs_size - reserve:
            raise TooLargeError(
                f"{file_id}: needs {'more than ' if at_least else ''}"
                f"{human_size(need - 1 if at_least else need)}, the filesystem holds "
                f"{human_size(self._fs_size)}"
                + (f" and min_free_bytes keeps {human_size(reserve)} free" if reserve else ""),
                need_bytes=need, capacity=self._fs_size - reserve)

    def _room_for_known_minimum(self, row: dict) -> None:
        """An entry that filled the disk before (`min_size`) starts only once that much
        is free: a download that can never fit does not fill the disk again and again
        while files that fit wait (no network, no disk write for the refusal)."""
        need = row["min_size"]
        if not need:
            return
        # Its own statvfs: refreshing _check_space's cache would forget what it let through.
        st = os.statvfs(self.store.root)
        free, self._fs_size = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
        self._check_fits_at_all(row["file_id"], need, at_least=True)
        reserve = self.settings.retention.min_free_bytes
        if free - need < reserve:
            raise NoSpaceError(
                f"{row['file_id']}: filled the disk at {human_size(need - 1)} before; needs "
                f"more than that, {human_size(free)} free"
                + (f", reserve min_free_bytes {human_size(reserve)}" if reserve else ""),
                need_bytes=need, at_least=True)

    def _check_space(self, file_id: str, need: int) -> None:
        """Refuse to start a download that would cross the free-space reserve, and fail
        one that cannot fit even on an empty filesystem.

        statvfs is asked at most every FREE_SPACE_TTL seconds (while the group commit
        flushes, it can take a fraction of a millisecond, on the event loop, for each
        of thousands of small files); in between, what earlier checks let through is
        counted as used, so concurrent downloads never share the same free bytes."""
        if time.monotonic() - self._free_at > FREE_SPACE_TTL:
            self._statvfs()
        self._check_fits_at_all(file_id, need)
        free = self._free
        reserve = self.settings.retention.min_free_bytes
        if free - need < reserve:
            self._free_at = float("-inf")  # space may come back: ask again next time
            raise NoSpaceError(
                f"{file_id}: needs {human_size(need)}, {human_size(max(free, 0))} free"
                + (f", reserve min_free_bytes {human_size(reserve)}" if reserve else ""),
                need_bytes=need,
            )
        self._free -= need

    async def _pump(self, part: Partial, body: Any, file_id: str, name: str | None,
                    total: int | None, loop: asyncio.AbstractEventLoop, meta: dict
                    ) -> bytes | bytearray:
        """Receive into large buffers; hash+write each in a worker while the next arrives.
        Returns the last buffer, unwritten (see _seal).

        `meta` (where the bytes come from, for a later resume) is saved before the first
        bytes are kept on disk; a body that arrives whole never needs it.
        """
        lim = self.settings.limits
        chunk_size = self.settings.download.chunk_size
        cap = lim.max_file_size
        received = part.size
        head_checked = part.size > 0 or not lim.check_magic
        buf: bytes | bytearray = b""
        pending: asyncio.Future | None = None
        try:
            async for chunk in body.chunks:
                if not buf:
                    buf = chunk  # a full-size buffer goes to disk as it came, uncopied
                else:
                    if type(buf) is not bytearray:
                        buf = bytearray(buf)
                    buf += chunk
                received += len(chunk)
                if total is not None and received > total:
                    raise TransientError(f"{file_id}: more bytes than the announced {total}")
                if cap is not None and received > cap:
                    raise PermanentError(
                        f"{file_id}: over limits.max_file_size ({cap}) while streaming")
                if not head_checked and len(buf) >= limits.MAGIC_BYTES_NEEDED:
                    limits.check_magic(lim, file_id, name, bytes(buf[:limits.MAGIC_BYTES_NEEDED]))
                    head_checked = True
                if len(buf) >= chunk_size:
                    if pending is not None:
                        await pending
                    else:
                        self._first_bytes(part, meta)
                    pending = loop.run_in_executor(self._io, part.write, buf)
                    buf = b""
                    if self.progress:
                        self.progress(file_id, received, total)
            if not head_checked:
                limits.check_magic(lim, file_id, name, bytes(buf))
            limits.check_size(lim, file_id, name, received)
        except (TransientError, asyncio.CancelledError):
            # Keep every byte that arrived: the next attempt resumes after them.
            if pending is not None:
                await pending
                pending = None
            if buf:
                self._first_bytes(part, meta)
                await loop.run_in_executor(self._io, part.write, buf)
            raise
        finally:
            if pending is not None:
                await pending  # never close the temp under a running write
        if self.progress:
            self.progress(file_id, received, total)
        return buf

    # -- start-up reconciliation -------------------------------------------------------

    def reconcile(self) -> dict[str, int]:
        """Make SQLite agree with the disk: re-link, re-queue, reset crashed downloads,
        remove temps no wanted file needs and links no entry accounts for."""
        relinked = requeued = reset = 0
        for row in self.manifest.rows():
            if row["state"] == "downloading":
                self.manifest.update(row["file_id"], state="queued")
                reset += 1
            elif row["state"] == "ready" and row["sha256"] and row["path"]:
                if self.store.object_stat(row["sha256"]) is None:
                    self.manifest.update(row["file_id"], state="queued", sha256=None,
                                         error="object missing from the store; re-fetching")
                    requeued += 1
                elif not self.store.linked(row["sha256"], row["path"]):
                    try:
                        self.store.link(row["sha256"], row["path"])
                        relinked += 1
                    except (OSError, DownloadError) as e:
                        self.manifest.update(row["file_id"], state="failed", error=str(e))
        keep = {key_of(r["file_id"]) for r in self.manifest.rows()
                if r["wanted"] and r["state"] != "ready"}
        temps = self.store.reap_temps(keep, self.settings.retention.orphan_temp_age)
        # Before any download runs, every link is either recorded or left by a crash.
        strays = remove_stray_links(self.manifest, self.store, min_age=0)
        return {"relinked": relinked, "requeued": requeued, "reset": reset,
                "temps_removed": temps, "stray_links_removed": len(strays)}
