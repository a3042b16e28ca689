"""Where a fleet host's bytes come from: the Storage cache, the origin under a claim,
or a wait for the host that holds the claim.

For one file (after the local store, which the download looked at first):
  1. the sha256 is known (the request's, or learned by another host and recorded in
     fleet_ids) and fleet_blobs has it -> download the blob from the cache bucket,
     checked against that sha256 like any download;
  2. else claim the download (`prefetchd_fleet_claim`) and look at the cache once
     more (the last holder may have finished in between); the winner downloads from
     the origin and publishes locally; then, apart from the download (the file is
     ready, the worker moves on), it uploads the object to the cache (resumable),
     records the blob and the (provider, file_id) -> sha256 mapping, and releases the
     claim. The lease is renewed every third of `lease` from the claim to the
     release, so only a dead holder's lease expires;
  3. a host that loses the claim defers the entry (it stays queued, no event) and
     comes back after `wait_poll`, then less and less often (up to a third of the
     lease): by then the blob is there (1), or the lease expired and its claim wins (2).
Supabase unreachable at any step before a claim: the host downloads from the origin
on its own (no claim, no upload: the blob is not uploaded later either).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Settings
from ..errors import (
    Deferred,
    DownloadError,
    NoSpaceError,
    PermanentError,
    PrefetchError,
    TransientError,
)
from ..log import get_logger
from ..records import BytesSource
from ..redact import display_id
from ..resolve import Source
from ..supa import credentials
from .remote import Remote, blob_path, id_key
from .upload import Uploader

if TYPE_CHECKING:
    from ..fetch import Outcome
    from ..fetch.context import Transfer

log = get_logger("prefetchd.fleet")

BAD_BLOB_FOR = 600.0  # seconds a blob that failed for good (bad bytes, gone) is skipped
RELEASE_AT_STOP = 2.0  # seconds a stopping holder gives its release


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
        try:
            out = await self._cached(dl, src, key)
            if out is not None:
                return self._done(dl.file_id, out)
            if await asyncio.to_thread(self.remote.uncacheable, src.label, key) is not None:
                # Too big for the cache (recorded, and said, by the first host refused):
                # from the origin, without a lease or an upload.
                log.debug("fleet_uncacheable", file_id=dl.file_id)
                return self._done(dl.file_id, await dl.from_origin(src))
            won = await asyncio.to_thread(self.remote.claim, key)
            if won:
                # The last holder may have recorded its blob and released between our
                # look and our claim: look again, or the origin would serve it twice.
                try:
                    out = await self._cached(dl, src, key)
                except TransientError:
                    await self._release(key)
                    raise
                if out is not None:
                    await self._release(key)
                    return self._done(dl.file_id, out)
        except TransientError as e:
            log.warning("fleet_unreachable", file_id=dl.file_id, error=str(e),
                        note="downloading from the origin alone")
            return self._done(dl.file_id, await dl.from_origin(src))
        if not won:
            self._defer(dl)
        return self._done(dl.file_id, await self._as_holder(dl, src, key))

    def _done(self, file_id: str, out: Outcome) -> Outcome:
        self._waits.pop(file_id, None)
        return out

    def _defer(self, dl: Transfer) -> None:
        """Another host holds the claim: come back later, less often the longer it
        takes (wait_poll, x1.5 each time, at most a third of the lease)."""
        n = self._waits.get(dl.file_id, 0)
        self._waits[dl.file_id] = n + 1
        delay = min(self.cfg.wait_poll * 1.5 ** min(n, 30),
                    max(self.cfg.wait_poll, self.cfg.lease / 3))
        if not dl.ctx.manifest.defer(dl.file_id, time.time() + delay,
                                     "another host of the fleet is downloading it"):
            self._waits.pop(dl.file_id, None)  # gone or settled meanwhile
        raise Deferred(f"{dl.file_id}: another host of the fleet is downloading it",
                       file_id=dl.file_id)

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
        try:
            out = await dl.from_origin(src)
        except asyncio.CancelledError:
            await self._stop_renewing(renewing)
            # Stopping: a quick release lets another host start at once; if it does
            # not get through, the lease expires.
            await asyncio.wait([asyncio.ensure_future(self._release(key))],
                               timeout=RELEASE_AT_STOP)
            raise
        except BaseException:
            await self._stop_renewing(renewing)
            await self._release(key)
            raise
        row = dl.ctx.manifest.get(dl.file_id)
        share = asyncio.ensure_future(self._share(
            dl.ctx.store.object_path(out.sha256), dl.file_id, out, src.label, key,
            row.name if row is not None else None, renewing))
        self._sharing.add(share)
        share.add_done_callback(self._sharing.discard)
        return out

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
                     renewing: asyncio.Task[None]) -> None:
        """Upload the verified object (unless the cache has it), record it, release."""
        blob = blob_path(self.remote.group, out.sha256)
        try:
            async with self._uploads:
                if await asyncio.to_thread(self.remote.blob, out.sha256) is None:
                    if await asyncio.to_thread(self.remote.uncacheable, label, key):
                        return  # another host learned it is too big (released below)
                    sent = await asyncio.to_thread(self.uploader.upload, path,
                                                   self.cfg.cache_bucket, blob)
                    log.info("fleet_uploaded", file_id=file_id, sha256=out.sha256, bytes=sent)
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
