"""Where a fleet host's bytes come from: the Storage cache, the origin under a claim,
or a wait for the host that holds the claim.

For one file (after the local store, which the download looked at first):
  1. the sha256 is known (the request's, or learned by another host and recorded in
     fleet_ids) and fleet_blobs has it -> download the blob from the cache bucket,
     checked against that sha256 like any download;
  2. else claim the download (`prefetchd_fleet_claim`): the winner downloads from the
     origin, publishes locally, uploads the object to the cache (resumable), records
     the blob and the (provider, file_id) -> sha256 mapping, and releases the claim;
     it renews the lease while it works, so only a dead holder's lease expires;
  3. a host that loses the claim defers the entry (it stays queued, no event) and
     comes back after `wait_poll`: by then the blob is there (1), or the lease
     expired and its claim wins (2).
Supabase unreachable at any step before a claim: the host downloads from the origin
on its own (no claim, no upload: the blob is not uploaded later either).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from ..config import Settings
from ..errors import Deferred, DownloadError, NoSpaceError, PrefetchError, TransientError
from ..log import get_logger
from ..redact import display_id
from ..resolve import Source
from ..supa import credentials
from .remote import Remote, blob_path, id_key
from .upload import Uploader

if TYPE_CHECKING:
    from ..fetch import Outcome
    from ..fetch.download import Download

log = get_logger("prefetchd.fleet")


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

    def close(self) -> None:
        self.uploader.close()

    async def fetch(self, dl: Download, src: Source) -> Outcome:
        key = id_key(src.label, dl.file_id)
        try:
            out = await self._cached(dl, src, key)
            if out is not None:
                return out
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
                    return out
        except TransientError as e:
            log.warning("fleet_unreachable", file_id=dl.file_id, error=str(e),
                        note="downloading from the origin alone")
            return await dl.from_origin(src)
        if not won:
            until = time.time() + self.cfg.wait_poll
            dl.engine.manifest.defer(dl.file_id, until,
                                     "another host of the fleet is downloading it")
            raise Deferred(f"{dl.file_id}: another host of the fleet is downloading it",
                           file_id=dl.file_id)
        return await self._as_holder(dl, src, key)

    async def _cached(self, dl: Download, src: Source, key: str) -> Outcome | None:
        """The file from the Storage cache when the group has its blob (its sha256 from
        the request, or as another host recorded it for this provider and file_id)."""
        sha, name = src.expected, src.name
        if sha is None:
            sha, name = await asyncio.to_thread(self.remote.known, src.label, key)
        if sha is None or await asyncio.to_thread(self.remote.blob, sha) is None:
            return None
        return await self._from_cache(dl, src, sha, name)

    async def _from_cache(self, dl: Download, src: Source, sha: str,
                          name: str | None) -> Outcome | None:
        """The blob from the cache bucket, verified; None when that failed (bad bytes,
        gone, unreachable): then the origin is next."""
        cache = Source("supabase", f"{self.cfg.cache_bucket}/{blob_path(self.remote.group, sha)}",
                       sha, src.label, name, via="storage")
        try:
            return await dl.retrying(cache, final=False)
        except NoSpaceError:
            raise  # recorded (waiting_space): the origin would not fit either
        except DownloadError as e:
            log.warning("fleet_cache_failed", file_id=dl.file_id, sha256=sha, error=str(e))
            return None

    async def _as_holder(self, dl: Download, src: Source, key: str) -> Outcome:
        renewing = asyncio.ensure_future(self._renew(dl.file_id, key))
        try:
            out = await dl.from_origin(src)
        except asyncio.CancelledError:
            renewing.cancel()
            raise  # stopping: the lease expires (a release might not get through)
        except BaseException:
            renewing.cancel()
            await self._release(key)
            raise
        renewing.cancel()
        try:
            await self._share(dl, out, src.label, key)
        finally:
            await self._release(key)
        return out

    async def _renew(self, file_id: str, key: str) -> None:
        """Keep the lease while the download runs (a third of the lease each time)."""
        while True:
            await asyncio.sleep(self.cfg.lease / 3)
            try:
                if not await asyncio.to_thread(self.remote.claim, key):
                    log.warning("fleet_lease_lost", file_id=file_id)
            except TransientError as e:
                log.warning("fleet_lease_renew_failed", file_id=file_id, error=str(e))

    async def _share(self, dl: Download, out: Outcome, label: str, key: str) -> None:
        """Upload the verified object (unless the cache has it) and record it."""
        path = blob_path(self.remote.group, out.sha256)
        try:
            if await asyncio.to_thread(self.remote.blob, out.sha256) is None:
                sent = await asyncio.to_thread(self.uploader.upload,
                                               dl.engine.store.object_path(out.sha256),
                                               self.cfg.cache_bucket, path)
                log.info("fleet_uploaded", file_id=dl.file_id, sha256=out.sha256, bytes=sent)
            row = dl.engine.manifest.get(dl.file_id)
            await asyncio.to_thread(self.remote.record_blob, out.sha256, out.size, path,
                                    label, key, display_id(dl.file_id),
                                    row.name if row is not None else None)
        except (PrefetchError, OSError) as e:  # the file is ready here; sharing is extra
            log.warning("fleet_share_failed", file_id=dl.file_id, error=str(e))

    async def _release(self, key: str) -> None:
        try:
            await asyncio.to_thread(self.remote.release, key)
        except TransientError as e:  # the lease then simply expires
            log.warning("fleet_release_failed", error=str(e))
