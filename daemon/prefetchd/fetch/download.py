"""One download: one object per file_id, one method per step.

    run -> resolve -> (cache hit) -> retrying(source) -> attempt:
        lock -> resume -> stream -> seal -> publish -> record

The object holds the manifest row (and its re-read after a lock wait), the upload
row, the key and the start time; an attempt hands its source and partial from step
to step. Its context (context.py) holds what downloads share (pools, limits, the
group commit, the free-space reserve); the engine that runs it stays out of reach.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import Callable

from .. import limits
from ..errors import (
    DownloadError,
    HashMismatchError,
    NoSpaceError,
    NotFoundError,
    PermanentError,
    PrefetchError,
    SizeMismatchError,
    StoreError,
    TooLargeError,
    TransientError,
    UnsafePathError,
)
from ..log import get_logger
from ..providers import Body, RangeNotSatisfiable
from ..records import Entry, NewEvent, State
from ..resolve import Source
from ..store import Partial, id_component, key_of
from ..store.temps import Meta
from ..supa import Upload
from .cache import cache_hit, destination
from .context import DownloadContext
from .intake import Buffer, Intake
from .ledger import Outcome, Placed
from .pump import Pump
from .space import space_backoff

log = get_logger("prefetchd.fetch")
LOCK_POLL = 0.05  # seconds between tries of a file's lock that another process holds

# A body this small that arrived whole is hashed and verified on the event loop and
# held in memory; the group commit writes it on its thread (see seal_held): a worker
# thread's hop costs more, in GIL hand-offs, than the work.
INLINE_SEAL_MAX = 64 << 10
# A body of known length at least this large is received, written and hashed by
# threads of its own (fetch.pump): the event loop sees none of its bytes.
PUMP_MIN = 4 << 20


class _Slot:
    """`async with dl._slot(sem)`: a worker slot held for the block, unless handed back
    before its end (a class, not an asynccontextmanager: two a download)."""

    __slots__ = ("dl", "sem")

    def __init__(self, dl: Download, sem: asyncio.Semaphore) -> None:
        self.dl, self.sem = dl, sem

    async def __aenter__(self) -> None:
        dl, sem = self.dl, self.sem
        await dl._take_back()
        await sem.acquire()
        dl._held.append(sem)

    async def __aexit__(self, *_exc: object) -> None:
        dl, sem = self.dl, self.sem
        if sem in dl._held:
            dl._held.remove(sem)
            sem.release()
        if sem in dl._handed:
            dl._handed.remove(sem)


class Download:
    """Makes one manifest entry ready: from its row to a verified, linked, recorded file."""

    def __init__(self, ctx: DownloadContext, row: Entry) -> None:
        self.ctx = ctx
        self.row = row  # as read when the download began
        self.fresh = row  # read again after waiting for another process's lock
        self.file_id = row.file_id
        self.key = key_of(row.file_id)
        self.upload: Upload | None = None  # its provider_file_uploads row, if looked up
        self.started = 0.0
        self.resumed_from = 0  # bytes already on disk when the last attempt's body began
        self._way = False  # holds the space's one way for downloads of unknown length
        # Worker slots (the global and the provider's semaphores) held, in the order
        # taken; those handed back while the file waits for its group (see publish).
        self._held: list[asyncio.Semaphore] = []
        self._handed: list[asyncio.Semaphore] = []
        self.settled = False  # the group commit found the file's links complete
        # Told of each buffer kept in the temp file (on the writing thread, right after
        # the write, with the body's announced length): the fleet's cache upload
        # follows the bytes (fleet.feed). None: nobody follows.
        self.on_written: Callable[[Partial, int | None], None] | None = None

    async def run(self) -> Outcome:
        """The whole job; a failure no step recorded (a dest the store refuses, an
        unknown provider) is recorded here as permanent, so it is not tried in a loop."""
        try:
            return await self._run()
        except (PrefetchError, OSError) as e:
            if isinstance(e, DownloadError) and e.recorded:
                raise
            err, state = self._refusal(e)
            row = self.row
            self.ctx.ledger.failed(row, row.resolved_provider or row.provider or "", err,
                                   state=state, attempts=1)
            raise err from None

    def _refusal(self, e: PrefetchError | OSError) -> tuple[DownloadError, State]:
        where = self.row.dest or f"downloads/{id_component(self.file_id)}"
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return NoSpaceError(f"{self.file_id}: no space left to link {where}",
                                file_id=self.file_id), State.WAITING_SPACE
        reason = (e.strerror or str(e)) if isinstance(e, OSError) else str(e)
        if isinstance(e, (StoreError, UnsafePathError, OSError)):
            return PermanentError(f"dest {where}: {reason}", file_id=self.file_id,
                                  path=where), State.FAILED
        return PermanentError(reason, file_id=self.file_id), State.FAILED

    async def _run(self) -> Outcome:
        src = await self.resolve()
        hit = await self._cache_hit(self.row, src)
        if hit is not None:
            if self.row.state != State.READY:
                await asyncio.to_thread(self.ctx.partials.drop, self.key)
            return hit
        self.started = time.monotonic()
        async with self._slot(self.ctx.global_limit):
            if self.ctx.fleet is not None:  # the Storage cache, a claim, or a wait
                return await self.ctx.fleet.fetch(self, src)
            return await self.from_origin(src)

    async def from_origin(self, src: Source) -> Outcome:
        """Download from the provider; a "not found" falls back to the upload's
        Storage copy when provider_file_uploads has one."""
        try:
            return await self.retrying(src)
        except NotFoundError:
            fallback = await self.ctx.resolver.fallback(self.row, self.upload)
            if fallback is None:
                raise
            log.info("fallback", file_id=self.file_id, provider=src.provider,
                     to=f"supabase:{fallback.remote_id}")
            return await self.retrying(fallback)

    async def resolve(self) -> Source:
        """Which provider serves the file first, and what its bytes must hash to."""
        resolver = self.ctx.resolver
        self.upload = await resolver.lookup(self.file_id, self.row.provider)
        return resolver.primary(self.row, self.upload)

    async def _cache_hit(self, row: Entry, src: Source) -> Outcome | None:
        ctx = self.ctx
        return await cache_hit(row, src, store=ctx.store, manifest=ctx.manifest,
                               ledger=ctx.ledger)

    # -- worker slots ----------------------------------------------------------------------

    def _slot(self, sem: asyncio.Semaphore) -> _Slot:
        """Hold a worker slot for the block, unless handed back before its end."""
        return _Slot(self, sem)

    def _hand_back(self) -> None:
        """The file is sealed and waits for its group's flush: its worker slots go to
        the next downloads now (the group commit's groups grow with what arrives)."""
        for sem in reversed(self._held):
            sem.release()
        self._handed.extend(self._held)
        self._held.clear()

    async def _take_back(self) -> None:
        """Before another attempt (the commit failed; a fallback source), take the
        handed-back slots again, in the order first taken."""
        while self._handed:
            sem = self._handed[0]
            await sem.acquire()
            self._handed.pop(0)
            self._held.append(sem)

    # -- retry ---------------------------------------------------------------------------

    async def retrying(self, src: Source, *, final: bool = True) -> Outcome:
        """Attempts with retries and backoff for one source; records failures, unless
        not `final` (another source follows, as after the fleet's Storage cache)."""
        async with self._slot(self.ctx.pools.semaphore(src.provider)):
            mismatches = attempt = 0
            while True:
                await self._take_back()
                try:
                    self.ctx.space.known_minimum(self.file_id, self.row.min_size)
                    return await self.attempt(src)
                except HashMismatchError as e:
                    mismatches += 1
                    err: DownloadError = e if mismatches < 2 else PermanentError(
                        f"{e} (twice in a row)", file_id=self.file_id)
                except NoSpaceError as e:
                    self._wait_for_space(src.label, e, attempt + 1)
                    raise
                except DownloadError as e:
                    err = e
                delay = self._delay_or_give_up(src, err, attempt, final)
                self.ctx.ledger.observe("retry", src.label, 0)
                log.info("retry", file_id=self.file_id, provider=src.provider, error=str(err),
                         delay_s=round(delay, 3), attempt=attempt + 1)
                await self.ctx.sleep(delay)
                attempt += 1

    def _delay_or_give_up(self, src: Source, err: DownloadError, attempt: int,
                          final: bool) -> float:
        """How long to wait before the next attempt; records (when `final`) and raises
        `err` when there is none (permanent, out of retries, or a Retry-After past
        backoff_max)."""
        dl = self.ctx.settings.download
        if not final and (not err.transient or attempt >= dl.retries):
            raise err
        if not err.transient:
            self.ctx.ledger.failed(self.row, src.label, err, state=State.FAILED,
                                   attempts=attempt + 1)
            raise err
        delay = (err.retry_after if err.retry_after is not None else
                 self.ctx.pools.backoff(attempt))
        if attempt >= dl.retries or delay > dl.backoff_max:
            self.ctx.ledger.failed(self.row, src.label, err, state=State.RETRYING,
                                   attempts=attempt + 1,
                                   next_attempt_at=time.time() + max(delay, dl.backoff_max))
            raise err
        return delay

    def _wait_for_space(self, label: str, err: NoSpaceError, attempts: int) -> None:
        """Park the entry in waiting_space and ask for a cleanup pass.

        ENOSPC on a download of unknown length makes the size reached the entry's
        known minimum (`min_size`): it is not tried again until that much is free,
        and never evicts others (nobody knows it would fit once they are gone). An
        entry that runs out of space again backs off (see space_backoff)."""
        min_size = self.row.min_size
        if err.at_least:
            min_size = max(min_size or 0, err.need_bytes)
            try:  # it filled a filesystem that held nothing else: it can never fit
                self.ctx.space.learned_minimum(self.file_id, min_size)
            except TooLargeError as e:
                self.ctx.ledger.failed(self.row, label, e, state=State.FAILED,
                                       attempts=attempts, min_size=min_size)
                raise e from None
        delay = space_backoff(self.row.attempts, self.ctx.settings.download.backoff_max,
                              self.ctx.space.backoff_base)
        self.ctx.ledger.failed(self.row, label, err, state=State.WAITING_SPACE,
                               attempts=attempts,
                               next_attempt_at=None if delay is None else time.time() + delay,
                               min_size=min_size)
        if self.ctx.on_no_space is not None:
            self.ctx.on_no_space(0 if err.at_least else err.need_bytes)

    # -- one attempt ---------------------------------------------------------------------

    async def attempt(self, src: Source) -> Outcome:
        """One try under the file's cross-process lock."""
        store, key = self.ctx.store, self.key
        self.fresh = self.row
        waited = not store.lock_key(key)
        if waited:
            await self._wait_for_lock()
        try:
            if waited:
                hit = await self._done_meanwhile(src)
                if hit is not None:
                    return hit
            part = await self.resume(waited)
            placed, batched = await self._fill(part, src)
            event = await self.publish(part, src, placed, batched)
            return self.record(src, placed, event)
        finally:
            store.unlock_key(key)

    async def _wait_for_lock(self) -> None:
        """Wait while another process downloads this key, polling without blocking.

        A blocking lockf in a worker thread cannot be cancelled: a timed-out `get` would
        wait for it at exit, and a cancelled daemon task would end up holding the lock.
        """
        while not self.ctx.store.lock_key(self.key):
            await asyncio.sleep(LOCK_POLL)

    async def _done_meanwhile(self, src: Source) -> Outcome | None:
        """Another process held the lock: it may have finished this file meanwhile."""
        self.fresh = self.ctx.manifest.get(self.file_id) or self.row
        hit = await self._cache_hit(self.fresh, src)
        if hit is not None:
            # The other process left its partial (if it died): ours to remove.
            await asyncio.to_thread(self.ctx.partials.remove_held, self.key)
        return hit

    async def resume(self, waited: bool) -> Partial:
        """The temp for this attempt: earlier bytes (another process had the lock, or
        an earlier attempt kept them) are taken over and re-hashed (disk work)."""
        ctx, key = self.ctx, self.key
        if waited or key in ctx.partials:
            part = await asyncio.to_thread(ctx.store.open_partial, key)
        else:
            part = ctx.store.new_partial(key)
        ctx.partials.taken(key)  # kept again if this attempt keeps bytes
        return part

    async def _fill(self, part: Partial, src: Source) -> tuple[Placed, bool]:
        """Stream and seal; on failure keep the bytes for a resume or drop them."""
        ctx = self.ctx
        try:
            name, tail = await self.stream(part, src)
            rel = destination(self.row, name)
            batched = ctx.store.batches
            if batched and not part.size and len(tail) <= INLINE_SEAL_MAX:
                # Held only when nothing is on disk: an empty temp a killed process
                # left (and this attempt took over) is written and sealed as it is.
                held = (part.fd < 0 and self.on_written is None
                        and ctx.commits.may_hold(len(tail)))
                sha = (self.seal_held(part, tail, src) if held
                       else self.seal(part, tail, src, rel, batched))  # no thread hop
            else:
                sha = await asyncio.get_running_loop().run_in_executor(
                    ctx.io, self.seal, part, tail, src, rel, batched)
        except NoSpaceError:
            part.discard()  # on a full disk, room for others beats a resume
            raise
        except (TransientError, asyncio.CancelledError):
            part.close()  # keep the bytes: the next attempt (or process) resumes them
            if part.size:
                ctx.partials.kept(self.key)
            raise
        except BaseException:
            part.discard()
            raise
        finally:
            self._leave_unknown_way()  # after a discard: the next one gets the room
        return Placed(sha, part.size, name, rel), batched

    async def _take_unknown_way(self) -> None:
        """A body of unknown length while space is short: stream it only when no other
        download of unknown length streams (held until its bytes are kept or dropped),
        so two of them never fill the disk under each other and one that cannot fit
        never takes the room of one that fits alone. The body stays open meanwhile."""
        space = self.ctx.space
        if self._way or not space.short():
            return
        if space.unknown_way.locked():
            log.info("waiting_for_space_turn", file_id=self.file_id,
                     note="space is short: downloads of unknown length go one at a time")
        await space.unknown_way.acquire()
        self._way = True

    def _leave_unknown_way(self) -> None:
        if self._way:
            self._way = False
            self.ctx.space.unknown_way.release()

    # -- stream --------------------------------------------------------------------------

    async def stream(self, part: Partial, src: Source) -> tuple[str | None, Buffer]:
        """Fill `part` from the source, all but the last buffer; return (name, last buffer).

        seal writes that buffer, so a body that arrives whole is written, hashed and
        published in a single worker call."""
        provider = self.ctx.pools.provider(src.provider)
        same_source = self._same_source(part.meta, src)
        offset = self._resume_offset(part, src, same_source)
        name: str | None = part.meta.get("name") if same_source else None
        total: int | None = None
        tail: Buffer = b""
        meta = part.meta
        self.resumed_from = 0
        try:
            while True:
                async with provider.open(src.remote_id, offset,
                                         part.meta.get("validator")) as body:
                    if body.offset and not self._continues(part, body, src):
                        part.truncate()  # old prefix + new suffix is never published
                        offset, name = 0, None
                        continue  # closes this body; the next opens the whole file
                    self.resumed_from = body.offset
                    name, total, meta = self._opened(part, body, src, name)
                    if total is None:
                        await self._take_unknown_way()
                    if (body.blocking is not None and total is not None
                            and total - part.size >= PUMP_MIN):
                        await self._pump(part, name, total, meta).run(body.blocking())
                    else:
                        tail = await self._intake(part, name, total, meta).run(body.chunks)
                    break
        except RangeNotSatisfiable as e:
            if e.total is None or e.total != part.size:
                part.truncate()
                raise TransientError(f"{self.file_id}: 416 for the partial; starting over",
                                     status=416, file_id=self.file_id) from None
            total = e.total  # the partial already holds every byte: verify it whole
            self.resumed_from = part.size
        if total is not None and part.size + len(tail) != total:
            if tail:  # keep what arrived for the next attempt
                self._first_bytes(part, meta)
                await asyncio.get_running_loop().run_in_executor(self.ctx.io, self._write, part,
                                                                 tail, total)
            raise TransientError(
                f"{self.file_id}: connection ended at {part.size} of {total} bytes",
                file_id=self.file_id)
        return name, tail

    def _continues(self, part: Partial, body: Body, src: Source) -> bool:
        """Whether a 206 continues the partial: its validator (ETag, else Last-Modified)
        is the one saved with the partial's first bytes.

        A server may ignore If-Range and answer 206 from whatever the object is now
        (Supabase Storage does: nothing in supabase/storage reads If-Range; so do many
        CDNs and object stores), so the server's word is never relied on. With an
        expected sha256 the final check catches a mixed file (and the retry restarts),
        so a resume goes on as before; without one, a different or missing validator
        means the partial is dropped and the file starts over."""
        saved = part.meta.get("validator")
        if src.expected is not None or (body.validator is not None and body.validator == saved):
            return True
        log.info("resume_refused", file_id=self.file_id, provider=src.provider,
                 partial_bytes=part.size,
                 reason=("the server's validator changed" if body.validator else
                         "the server sent no validator"), note="starting over from 0")
        return False

    def _same_source(self, meta: Meta, src: Source) -> bool:
        return (meta.get("file_id") == self.file_id and meta.get("provider") == src.provider
                and meta.get("remote_id", self.file_id) == src.remote_id)

    @staticmethod
    def _resume_offset(part: Partial, src: Source, same_source: bool) -> int:
        """Where to ask the source to start: after the partial's bytes when they can be
        trusted to continue, else 0 (and the partial starts over).

        A validator that only dates the file (Last-Modified, an mtime-size ETag) still
        matches after a rewrite with the same size and mtime: resume on it only when
        an expected hash will catch old prefix + new suffix (then the retry restarts).
        A .meta from before "dated" existed counts as dated."""
        meta = part.meta
        trusted = not meta.get("dated", True) or src.expected is not None
        offset = part.size if same_source and meta.get("validator") and trusted else 0
        if part.size and not offset:
            part.truncate()
        return offset

    def _opened(self, part: Partial, body: Body, src: Source,
                name: str | None) -> tuple[str | None, int | None, Meta]:
        """Check an opened body against the limits, the request and the free space;
        returns its name, its total size and the .meta that says where it comes from."""
        if body.offset == 0 and part.size:
            part.truncate()  # 200 to a Range request, or a changed validator
        name, total = src.name or body.name or name, body.total
        limits.check_size(self.ctx.settings.limits, self.file_id, name, total)
        want_size = self.row.expected_size
        if want_size is not None and total is not None and total != want_size:
            raise SizeMismatchError(file_id=self.file_id, expected=want_size, actual=total,
                                    announced=True)
        if total is not None:
            self.ctx.space.claim(self.file_id, total - part.size)
        meta = {"file_id": self.file_id, "provider": src.provider, "remote_id": src.remote_id,
                "validator": body.validator, "dated": body.dated, "name": name}
        return name, total, meta

    def _intake(self, part: Partial, name: str | None, total: int | None,
                meta: Meta) -> Intake:
        ctx, loop = self.ctx, asyncio.get_running_loop()
        return Intake(
            part, self.file_id, name, total, ctx.settings.limits,
            ctx.settings.download.chunk_size,
            write=lambda buf: loop.run_in_executor(ctx.io, self._write, part, buf, total),
            first_bytes=lambda: self._first_bytes(part, meta),
            progress=self._started(part, name, total),
        )

    def _pump(self, part: Partial, name: str | None, total: int, meta: Meta) -> Pump:
        """A large body's bytes go through threads of their own (see fetch.pump)."""
        ctx = self.ctx
        return Pump(
            part, self.file_id, name, total, ctx.settings.limits,
            ctx.settings.download.chunk_size,
            first_bytes=lambda: self._first_bytes(part, meta),
            written=lambda: self.on_written(part, total) if self.on_written else None,
            progress=self._started(part, name, total),
            direct=self.on_written is None,
        )

    def _started(self, part: Partial, name: str | None,
                 total: int | None) -> Callable[[int], None]:
        """Say that the body started (with what is kept already); its progress callback."""
        ctx = self.ctx
        if ctx.started is not None:
            ctx.started(self.file_id, name, total, part.size)
        progress = ctx.progress
        if progress is None:
            return lambda _n: None
        return lambda n: progress(self.file_id, n, total)

    def _write(self, part: Partial, buf: Buffer, total: int | None) -> None:
        part.write(buf)
        if self.on_written is not None:
            self.on_written(part, total)

    def _first_bytes(self, part: Partial, meta: Meta) -> None:
        """Before bytes are first kept on disk: save where they come from (for a resume)
        and show the entry as downloading. A body that arrives whole in one buffer never
        gets here, which spares small files a file write and a database transaction."""
        if part.meta == meta:
            return
        part.save_meta(meta)
        self.ctx.manifest.update(self.file_id, state=State.DOWNLOADING,
                                    resolved_provider=meta["provider"])

    # -- seal, publish, record ------------------------------------------------------------

    def seal(self, part: Partial, tail: Buffer, src: Source, rel: str, batched: bool) -> str:
        """Write the last buffer, close and verify, in one worker call (a small body that
        arrived whole: on the loop, see INLINE_SEAL_MAX); returns the sha256. Unless
        `batched` (the group commit makes its directories, publishes and links it with
        others), also fsync, publish and link here."""
        if tail:
            self._write(part, tail, None)
        size = part.size
        sha = part.finish(sync=not batched)
        self._verify(size, sha, src)
        store = self.ctx.store
        if not batched:
            store.publish(part, sha)
            store.link(sha, rel)
        return sha

    def seal_held(self, part: Partial, tail: Buffer, src: Source) -> str:
        """Seal a small body that arrived whole (see INLINE_SEAL_MAX), on the loop:
        hashed and verified here, and held in memory (Partial.hold); the group commit
        writes its temp on its own thread right before the flush that makes it durable,
        so the loop makes no system call for it. Returns the sha256."""
        sha = part.hold(tail)
        self._verify(part.size, sha, src)
        return sha

    def _verify(self, size: int, sha: str, src: Source) -> None:
        """The sealed bytes against the expected size and hash."""
        expected_size = self.row.expected_size
        if expected_size is not None and size != expected_size:
            raise SizeMismatchError(file_id=self.file_id, expected=expected_size, actual=size,
                                    announced=False)
        if src.expected and sha != src.expected:
            raise HashMismatchError(file_id=self.file_id, expected=src.expected, actual=sha)

    async def publish(self, part: Partial, src: Source, placed: Placed,
                      batched: bool) -> NewEvent:
        """Publish (through the group commit when `batched`) and write the entry ready
        with its event, before the lock is released, so a process waiting on it sees
        it ready; returns the event."""
        # resumed_from: in the log line and the row
        event, fields = self.ctx.ledger.ready_change(self.fresh, src.label, placed,
                                                     cache_hit=False, started=self.started,
                                                     source=src.via,
                                                     resumed_from=self.resumed_from)
        publish = (part, placed.sha, placed.rel) if batched else None
        self._hand_back()  # the next download starts while this file waits for its flush
        try:
            self.settled = await self.ctx.commits.commit(publish, self.file_id, event,
                                                         fields)
        except asyncio.CancelledError:
            raise  # the flush goes on without us and publishes the file
        except BaseException:
            part.discard()  # not published: nothing else will use these bytes
            raise
        return event

    def record(self, src: Source, placed: Placed, event: NewEvent) -> Outcome:
        """The file is ready at its new place: drop the old link, log, count."""
        ledger = self.ctx.ledger
        old = self.fresh.path
        if not (self.settled and (old is None or old == placed.rel)):
            ledger.moved(self.fresh, placed.rel)
        return ledger.announce(self.file_id, src.label, placed, event)
