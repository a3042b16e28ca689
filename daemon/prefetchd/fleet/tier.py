"""Where a fleet host's bytes come from: the Storage cache, the origin under a claim,
or a wait for the host that holds the claim.

For one file (after the local store, which the download looked at first):
  1. the sha256 is known (the request's, or learned by another host and recorded in
     fleet_ids) and fleet_blobs has it -> download the blob from the cache bucket,
     checked against that sha256 like any download;
  2. else claim the download (`prefetchd_fleet_claim`) and look at the cache once
     more (the last holder may have finished in between); the winner downloads from
     the origin and publishes locally. When the sha256 is known in advance, the
     upload to the cache follows the download (feed.Feed, Uploader.follow): chunks go
     up as the bytes reach the disk, and the last one only after the download verified
     the file, so Storage never completes a blob that was not verified; else the object
     goes up after the download. Either way the upload runs apart from the download
     (the file is ready, the worker moves on); then the holder records the blob and
     the (provider, file_id) -> sha256 mapping, and releases the claim. The lease is
     renewed every third of `lease` from the claim to the release, so only a dead
     holder's lease expires; while uploading, the holder says how far it got and when
     it expects the blob complete (`prefetchd_fleet_progress`, about once a second);
  3. a host that loses the claim reads the lease (`prefetchd_fleet_lease`): a blob
     expected within NEAR seconds is waited for here, looking at the lease every
     `wait_poll` (at most NEAR_STEP) until the holder releases it; else the entry is
     deferred (it stays queued, no event) until halfway to when the holder expects the
     blob, or, when the holder says nothing, after `wait_poll`, then less and less
     often (up to a third of the lease): by then the blob is there (1), or the lease
     expired and its claim wins (2).
Supabase unreachable at any step before a claim: the host downloads from the origin
on its own (no claim, no upload: the blob is not uploaded later either).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Settings
from ..errors import (
    DownloadError,
    NoSpaceError,
    PermanentError,
    PrefetchError,
    TransientError,
)
from ..fetch.context import Deferred
from ..log import get_logger
from ..records import BytesSource
from ..redact import display_id
from ..resolve import Source
from ..supa import credentials
from .feed import Abandoned, Feed
from .remote import Lease, Remote, blob_path, id_key
from .upload import Progress, Uploader

if TYPE_CHECKING:
    from ..fetch import Outcome
    from ..fetch.context import Transfer

log = get_logger("prefetchd.fleet")

BAD_BLOB_FOR = 600.0  # seconds a blob that failed for good (bad bytes, gone) is skipped
RELEASE_AT_STOP = 2.0  # seconds a stopping holder gives its release
PROGRESS_EVERY = 1.0  # seconds between a holder's progress reports while it uploads
NEAR = 3.0  # a blob expected within this many seconds is waited for, not deferred for
NEAR_STEP = 0.25  # at most this long between looks at the lease while waiting (seconds)
FRESH = 5.0  # a holder's progress report older than this says nothing any more


class Tier:
    """The fleet's part in each download of one daemon (engine.fleet)."""

    def __init__(self, settings: Settings, remote: Remote) -> None:
        assert settings.fleet is not None and settings.supabase is not None
        self.settings = settings
        self.cfg = settings.fleet
        self.remote = remote
        key, bearer = credentials(settings)
        self.uploader = Uploader(settings.supabase.url, key, bearer, chunk=self.cfg.upload_chunk,
                                 timeout=settings.supabase.timeout)
        self._sharing: set[asyncio.Task[None]] = set()  # uploads after a download
        self._uploads = asyncio.Semaphore(settings.download.concurrency)
        self._waits: dict[str, int] = {}  # file_id -> deferrals in a row (bounded: queue)
        self._bad: dict[str, float] = {}  # sha256 -> until when its blob is not tried

    async def aclose(self) -> None:
        """At stop: uploads still running are cancelled (their leases expire)."""
        for t in list(self._sharing):
            t.cancel()
        await asyncio.gather(*self._sharing, return_exceptions=True)
        self.uploader.close()

    async def retire(self) -> None:
        """After a reload: let this tier's uploads finish, then close it."""
        await asyncio.gather(*self._sharing, return_exceptions=True)
        self.uploader.close()

    async def fetch(self, dl: Transfer, src: Source) -> Outcome:
        key = id_key(src.label, dl.file_id)
        lease: Lease | None = None
        try:
            out = await self._cached(dl, src, key)
            if out is not None:
                return self._done(dl.file_id, out)
            if await asyncio.to_thread(self.remote.uncacheable, src.label, key) is not None:
                # Too big for the cache (recorded, and said, by the first host refused):
                # from the origin, without a lease or an upload.
                log.debug("fleet_uncacheable", file_id=dl.file_id)
                return self._done(dl.file_id, await dl.from_origin(src))
            won, out = await self._claim(dl, src, key)
            if not won:
                released, lease = await self._until_released(key)
                if released:  # the holder finished meanwhile: its blob, or our claim
                    out = await self._cached(dl, src, key)
                    if out is None:
                        won, out = await self._claim(dl, src, key)
            if out is not None:
                return self._done(dl.file_id, out)
        except TransientError as e:
            log.warning("fleet_unreachable", file_id=dl.file_id, error=str(e),
                        note="downloading from the origin alone")
            return self._done(dl.file_id, await dl.from_origin(src))
        if not won:
            self._defer(dl, lease)
        return self._done(dl.file_id, await self._as_holder(dl, src, key))

    async def _claim(self, dl: Transfer, src: Source, key: str) -> tuple[bool, Outcome | None]:
        """Claim the download; the winner looks at the cache again: the last holder may
        have recorded its blob and released between our look and our claim (else the
        origin would serve it twice). (won, the file from the cache if it was there)."""
        if not await asyncio.to_thread(self.remote.claim, key):
            return False, None
        try:
            out = await self._cached(dl, src, key)
        except TransientError:
            await self._release(key)
            raise
        if out is not None:
            await self._release(key)
        return True, out

    async def _until_released(self, key: str) -> tuple[bool, Lease | None]:
        """Another host holds the claim: when it expects its blob within NEAR seconds,
        wait here, looking at the lease every wait_poll (at most NEAR_STEP), until it is
        released (True); else, or when it does not come, (False, the lease as last
        read) and the entry is deferred. The daemon looks at deferred entries about
        once a second, so a short wait costs less here than a deferral."""
        try:
            lease = await asyncio.to_thread(self.remote.lease, key)
            if lease is None:
                return True, None  # released between our claim and this look
            eta = expected_in(lease)
            if eta is None or eta > NEAR:
                return False, lease
            step = min(self.cfg.wait_poll, NEAR_STEP)
            deadline = time.monotonic() + eta + NEAR
            await asyncio.sleep(max(0.0, eta - step))
            while time.monotonic() < deadline:
                lease = await asyncio.to_thread(self.remote.lease, key)
                if lease is None:
                    return True, None
                if expected_in(lease) is None:  # the holder stopped saying: defer
                    break
                await asyncio.sleep(step)
        except TransientError as e:  # the lease unknown: deferred, never a second download
            log.debug("fleet_lease_unknown", error=str(e))
            return False, None
        return False, lease

    def _done(self, file_id: str, out: Outcome) -> Outcome:
        self._waits.pop(file_id, None)
        return out

    def _defer(self, dl: Transfer, lease: Lease | None) -> None:
        """Another host holds the claim: come back halfway to when it expects its blob
        (an estimate: the next look estimates again, and from NEAR seconds before it the
        host waits on the spot); when it does not say, after wait_poll, then less often
        the longer it takes (x1.5 each time); at most a third of the lease either way."""
        n = self._waits.get(dl.file_id, 0)
        self._waits[dl.file_id] = n + 1
        delay = deferral(self.cfg.wait_poll, self.cfg.lease, n, lease)
        if not dl.ctx.manifest.defer(dl.file_id, time.time() + delay,
                                     "another host of the fleet is downloading it"):
            self._waits.pop(dl.file_id, None)  # gone or settled meanwhile
        raise Deferred(f"{dl.file_id}: another host of the fleet is downloading it",
                       file_id=dl.file_id, due_in=delay)

    async def _cached(self, dl: Transfer, src: Source, key: str) -> Outcome | None:
        """The file from the Storage cache when the group has its blob (its sha256 from
        the request, or as another host recorded it for this provider and file_id)."""
        sha, name = src.expected, src.name
        if sha is None:
            sha, name = await asyncio.to_thread(self.remote.known, src.label, key)
        if sha is None or self._bad.get(sha, 0.0) > time.monotonic():
            return None
        blob = await asyncio.to_thread(self.remote.blob, sha)
        if blob is None:
            return None
        # The name travels with the blob: a file wanted by its sha256 (no fleet_ids row
        # needed) keeps the origin's name, not its hash.
        return await self._from_cache(dl, src, sha, name or blob.get("name"))

    async def _from_cache(self, dl: Transfer, src: Source, sha: str,
                          name: str | None) -> Outcome | None:
        """The blob from the cache bucket, verified; None when that failed (bad bytes,
        gone, unreachable): then the origin is next."""
        cache = Source("supabase", f"{self.cfg.cache_bucket}/{blob_path(self.remote.group, sha)}",
                       sha, src.label, name, via=BytesSource.STORAGE)
        try:
            return await dl.retrying(cache, final=False)
        except NoSpaceError:
            raise  # recorded (waiting_space): the origin would not fit either
        except DownloadError as e:
            if not e.transient:  # wrong bytes twice, or gone: not again for a while
                self._bad[sha] = time.monotonic() + BAD_BLOB_FOR
            log.warning("fleet_cache_failed", file_id=dl.file_id, sha256=sha, error=str(e))
            return None

    async def _as_holder(self, dl: Transfer, src: Source, key: str) -> Outcome:
        renewing = asyncio.ensure_future(self._renew(dl.file_id, key))
        follow = self._follow(dl, src, key)
        try:
            out = await dl.from_origin(src)
        except asyncio.CancelledError:
            await self._stop_following(follow, "the download was stopped", RELEASE_AT_STOP)
            await self._stop_renewing(renewing)
            # Stopping: a quick release lets another host start at once; if it does
            # not get through, the lease expires.
            await asyncio.wait([asyncio.ensure_future(self._release(key))],
                               timeout=RELEASE_AT_STOP)
            raise
        except BaseException:
            await self._stop_following(follow, "the download failed")
            await self._stop_renewing(renewing)
            await self._release(key)
            raise
        finally:
            dl.on_written = None
        if follow is not None:
            follow.feed.verified(out.sha256, out.size)  # the last chunk may go now
        row = dl.ctx.manifest.get(dl.file_id)
        share = asyncio.ensure_future(self._share(
            dl.ctx.store.object_path(out.sha256), dl.file_id, out, src.label, key,
            row.name if row is not None else None, renewing, follow))
        self._sharing.add(share)
        share.add_done_callback(self._sharing.discard)
        return out

    def _follow(self, dl: Transfer, src: Source, key: str) -> Following | None:
        """Start the upload that follows the download, when the blob's name (its sha256)
        is known before the download; None otherwise (it goes up afterwards)."""
        if src.expected is None:
            return None
        feed = Feed(src.expected)
        dl.on_written = feed.written
        task = asyncio.ensure_future(asyncio.to_thread(
            self.uploader.follow, feed, self.cfg.cache_bucket,
            blob_path(self.remote.group, src.expected), progress=self._reporter(key)))
        task.add_done_callback(lambda t: _ended(t, feed))
        return Following(feed, task)

    @staticmethod
    async def _stop_following(follow: Following | None, reason: str,
                              timeout: float | None = None) -> None:
        """The download ended without a verified file: the upload ends unfinished."""
        if follow is None:
            return
        follow.feed.fail(reason)
        await asyncio.wait([follow.task], timeout=timeout)

    def _reporter(self, key: str) -> Progress:
        """Tell waiting hosts how far the upload got and when the blob should be
        complete (at most every PROGRESS_EVERY seconds; from the upload's thread)."""
        pace = Pace()

        def report(done: int, size: int) -> None:
            eta = pace.eta(time.monotonic(), done, size)
            if eta is None:
                return
            try:
                self.remote.progress(key, done, size, eta)
            except TransientError as e:  # advisory: waiting hosts then poll as before
                log.debug("fleet_progress_failed", error=str(e))

        return report

    async def _renew(self, file_id: str, key: str) -> None:
        """Keep the lease from the claim to the release (a third of the lease each time).

        A renewal already sent finishes before this task ends (shield), so it cannot
        land after the release and claim the file again for nobody."""
        while True:
            await asyncio.sleep(self.cfg.lease / 3)
            call = asyncio.ensure_future(asyncio.to_thread(self.remote.claim, key))
            try:
                if not await asyncio.shield(call):
                    log.warning("fleet_lease_lost", file_id=file_id)
            except asyncio.CancelledError:
                await asyncio.gather(call, return_exceptions=True)
                raise
            except TransientError as e:
                log.warning("fleet_lease_renew_failed", file_id=file_id, error=str(e))

    @staticmethod
    async def _stop_renewing(renewing: asyncio.Task[None]) -> None:
        renewing.cancel()
        await asyncio.gather(renewing, return_exceptions=True)

    async def _share(self, path: Path, file_id: str, out: Outcome,  # noqa: PLR0913
                     label: str, key: str, name: str | None,
                     renewing: asyncio.Task[None], follow: Following | None) -> None:
        """Finish the upload that followed the download, or upload the verified object
        (unless the cache has it); record it; release."""
        blob = blob_path(self.remote.group, out.sha256)
        try:
            sent = await self._followed(follow, file_id)
            if sent is None:
                async with self._uploads:
                    if await asyncio.to_thread(self.remote.blob, out.sha256) is None:
                        if await asyncio.to_thread(self.remote.uncacheable, label, key):
                            return  # another host learned it is too big (released below)
                        sent = await asyncio.to_thread(
                            self.uploader.upload, path, self.cfg.cache_bucket, blob,
                            progress=self._reporter(key))
            if sent is not None:
                log.info("fleet_uploaded", file_id=file_id, sha256=out.sha256, bytes=sent,
                         streamed=follow is not None and follow.streamed)
            await asyncio.to_thread(self.remote.record_blob, out.sha256, out.size, blob,
                                    label, key, display_id(file_id), name)
        except PermanentError as e:
            if e.status != 413:
                log.warning("fleet_share_failed", file_id=file_id, error=str(e))
            else:
                await self._too_big(file_id, out, label, key, str(e))
        except (PrefetchError, OSError) as e:  # the file is ready here; sharing is extra
            log.warning("fleet_share_failed", file_id=file_id, error=str(e))
        finally:
            await self._stop_renewing(renewing)
        await self._release(key)

    @staticmethod
    async def _followed(follow: Following | None, file_id: str) -> int | None:
        """The bytes the followed upload sent (0: the blob was there already), or None
        when the object has to go up whole (nothing followed, or the followed upload
        was abandoned, gave up or could not read the file). A refusal (PermanentError)
        is the caller's."""
        if follow is None:
            return None
        try:
            sent = await follow.task
        except (Abandoned, TransientError, OSError) as e:  # OSError: reading the file
            log.info("fleet_upload_again", file_id=file_id, error=str(e),
                     note="the followed upload ended unfinished; the verified object "
                          "goes up whole")
            return None
        follow.streamed = sent is not None
        return sent

    async def _too_big(self, file_id: str, out: Outcome, label: str, key: str,
                       error: str) -> None:
        """Storage refused the blob for its size (413): record it for the group, so no
        host claims or uploads it again; the first host to record it says so (once per
        file for the whole group, not once per host and retry)."""
        try:
            first = await asyncio.to_thread(
                self.remote.record_uncacheable, label, key, error,
                display=display_id(file_id), sha=out.sha256, size=out.size)
        except TransientError as e:  # not recorded: the next download tries again
            log.warning("fleet_share_failed", file_id=file_id, error=error,
                        record_error=str(e))
            return
        (log.warning if first else log.debug)(
            "fleet_too_big_for_cache", file_id=file_id, sha256=out.sha256, size=out.size,
            error=error, note="never cached: every host of the group fetches it from the "
                              "origin")

    async def _release(self, key: str) -> None:
        try:
            await asyncio.to_thread(self.remote.release, key)
        except TransientError as e:  # the lease then simply expires
            log.warning("fleet_release_failed", error=str(e))


@dataclass
class Following:
    """The upload that follows one origin download: its feed and its thread's task."""

    feed: Feed
    task: asyncio.Future[int | None]
    streamed: bool = False


def _ended(task: asyncio.Future[int | None], feed: Feed) -> None:
    """The follower's thread is done: the feed's descriptor goes (never before)."""
    feed.close()
    if not task.cancelled():
        task.exception()  # retrieved: whoever awaits it (or nobody, at a stop) decides


class Pace:
    """When an upload should end, from its pace: the bytes acknowledged since the last
    estimate (at least PROGRESS_EVERY seconds ago), or since the upload was created
    when that says sooner. The clock starts when the upload is created (`done` 0): the
    download's first bytes and the upload's creation before it are not the upload's
    pace (an estimate that counted them said ten seconds and more for a blob done in
    four, and waiting hosts stayed away for half of that). The sooner of the two,
    because a late estimate costs more than an early one: a waiting host that comes
    back too early looks again (or waits on the spot), one that comes back too late
    has waited for nothing, and one slow second (the disk, a busy machine) must not
    send it away for long. The first acknowledged chunk is said at once (the holder is
    under way), the next ones every PROGRESS_EVERY seconds."""

    def __init__(self) -> None:
        self._start: tuple[float, int] | None = None  # (when, bytes) at the creation
        self._mark: tuple[float, int] | None = None  # (when, bytes) at the last estimate
        self._said = False

    def eta(self, now: float, done: int, size: int) -> float | None:
        """Seconds until `size` bytes are in, when it is time to say (else None)."""
        if done >= size:
            return None
        if self._mark is None or self._start is None or done == 0:
            self._start = self._mark = (now, done)
            return None
        since, then = self._mark
        if done <= then or (self._said and now - since < PROGRESS_EVERY):
            return None
        self._mark, self._said = (now, done), True
        began, first = self._start
        return (size - done) * min(max(now - since, 1e-3) / (done - then),
                                   max(now - began, 1e-3) / (done - first))


def expected_in(lease: Lease) -> float | None:
    """Seconds until the holder expects its blob complete, when it said so lately."""
    if lease.eta_in is None or lease.progress_age is None or lease.progress_age > FRESH:
        return None
    return max(0.0, lease.eta_in)


def deferral(wait_poll: float, lease_s: float, n: int, lease: Lease | None) -> float:
    """Seconds until a host that lost the claim looks again (its `n`th deferral in a
    row): halfway to the blob's expected completion, when the holder said lately
    (never less than wait_poll); else wait_poll x1.5**n; at most a third of the lease."""
    cap = max(wait_poll, lease_s / 3)
    eta = expected_in(lease) if lease is not None else None
    if eta is None:
        return min(wait_poll * 1.5 ** min(n, 30), cap)
    return min(max(min(eta / 2, eta - NEAR / 2), wait_poll), cap)
