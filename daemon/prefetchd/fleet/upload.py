"""A blob into the Storage cache: Supabase Storage's resumable (TUS 1.0) upload.

storage3 has no resumable upload and its `upload()` takes the whole body at once, so
this speaks TUS directly with httpx: create (POST) -> PATCH one chunk at a time (one
`upload_chunk` in memory, 6 MiB as Supabase asks) -> after a cut, HEAD says the
offset the server holds and the upload goes on from there.

Every chunk is read into one reused buffer and sent as a view of it: a new 6 MiB
bytes object per chunk left the process's memory growing with the file (glibc's
arenas keep the freed chunks: +120 MiB RSS for a 256 MiB upload, +250 MiB for
1 GiB, measured); with the one buffer it is +18 MiB for 1 GiB. An object that already
exists (another host uploaded the same bytes) is success: the cache is
content-addressed, and every reader checks the sha256 anyway.

`follow` uploads a file while it is being downloaded (a Feed): whole chunks as the
bytes reach the disk, the last one only after the download verified the file, and
only when what Storage acknowledged plus that last chunk hash to the expected sha256
(hashed here, from the very buffers sent): Storage completes an upload when its offset
reaches Upload-Length, so it never holds a complete blob that was not verified. An
upload that may not be completed (the download failed or started over) is terminated
(TUS DELETE), or, if that fails, left unfinished for Storage to expire.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import httpx

from ..errors import PermanentError, TransientError
from ..log import get_logger
from ..providers.transport import in_words
from .feed import Abandoned, Feed

log = get_logger("prefetchd.fleet")

TUS = {"Tus-Resumable": "1.0.0"}
# (bytes Storage holds now, of the object's size); 0 first, when the upload is created
Progress = Callable[[int, int], None]
TRIES = 5  # setbacks in a row before the upload gives up (the blob is optional)
GATEWAY_CUTS = (502, 503, 504)  # a gateway's word for "Storage cut or did not answer"


def _once(view: memoryview) -> Iterator[bytes]:
    """The chunk as a request body, without copying it into a new bytes object."""
    yield view  # type: ignore[misc]


def _meta(**kv: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in kv.items())


class Uploader:
    def __init__(self, url: str, key: str, bearer: str, *, chunk: int,
                 timeout: float, budget: float | None = None) -> None:
        self.endpoint = f"{url.rstrip('/')}/storage/v1/upload/resumable"
        self.objects = f"{url.rstrip('/')}/storage/v1/object/authenticated"
        self.chunk = chunk
        # How long one upload may go without progress before it gives up (the claim is
        # then released: another host, or the origin, takes over).
        self.budget = budget if budget is not None else max(60.0, 4 * timeout)
        self.http = httpx.Client(
            headers={"apikey": key, "Authorization": f"Bearer {bearer}", **TUS},
            timeout=httpx.Timeout(timeout, connect=timeout))

    def close(self) -> None:
        self.http.close()

    def upload(self, path: Path, bucket: str, name: str, *,
               progress: Progress | None = None) -> int:
        """Upload the file at `path` as `bucket/name`; returns the bytes sent (0 when the
        object was already there: another host's upload of the same blob, or a 0-byte
        blob, which Storage completes when the upload is created)."""
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            location = self._create(bucket, name, size)
            if location is None or (size == 0 and self._exists(bucket, name)):
                return 0
            return self._send_file(fd, size, location, bucket, name, progress=progress)
        finally:
            os.close(fd)

    def _send_file(self, fd: int, size: int, location: str, bucket: str,  # noqa: PLR0913
                   name: str, *, progress: Progress | None = None) -> int:
        """The upload at `location` of the whole file open at `fd`."""

        def whole(offset: int) -> tuple[int, bool]:
            n = min(self.chunk, size - offset)
            return n, offset + n == size

        return self._send(_Reader(whole, lambda buf, at: os.preadv(fd, [buf], at),
                                  progress=progress), size, location, bucket, name)

    def follow(self, feed: Feed, bucket: str, name: str, *,
               progress: Progress | None = None) -> int | None:
        """Upload the file of `feed` as `bucket/name` while it is being downloaded.
        Returns the bytes sent (0: the object was already there), or None when there was
        nothing to follow (a file of one chunk or less, or of unknown length: it goes up
        whole after the download). Raises Abandoned when the upload may not be completed
        (terminated first), TransientError/PermanentError as `upload` does."""
        size = feed.start(self.chunk)
        if size is None:
            return None
        location = self._create(bucket, name, size)
        if location is None:
            return 0
        try:
            return self._send(_Reader(lambda offset: feed.ready(offset, self.chunk),
                                      feed.read_into, hashlib.sha256(), feed.sha256,
                                      progress=progress), size, location, bucket, name)
        except BaseException:
            # Abandoned, or given up: never completed, and not resumed later either
            # (a new upload of the verified object follows).
            self.terminate(location)
            raise

    def terminate(self, location: str) -> None:
        """End an unfinished upload (TUS termination; Storage's DELETE route, which
        refuses a finished one: @tus/server DeleteHandler with
        disableTerminationForFinishedUploads). When that fails the upload stays
        unfinished: nobody knows its URL, and Storage expires it."""
        try:
            r = self.http.delete(location)
        except httpx.HTTPError as e:
            log.info("fleet_upload_left_unfinished", error=in_words(e, "supabase.timeout"))
            return
        if r.status_code not in (204, 404):
            log.info("fleet_upload_left_unfinished", status=r.status_code, error=r.text[:200])

    def _create(self, bucket: str, name: str, size: int) -> str | None:
        headers = {"Upload-Length": str(size), "x-upsert": "false",
                   "Upload-Metadata": _meta(bucketName=bucket, objectName=name,
                                            contentType="application/octet-stream",
                                            cacheControl="3600")}
        r = self._call("POST", self.endpoint, headers)
        if _already_exists(r):
            return None
        if r.status_code != 201 or "location" not in r.headers:
            err = self._refused(r, "create")
            if r.status_code == 404 and "Bucket not found" in r.text[:500]:
                # Storage's TUS route: 404 `Bucket not found` (text; lifecycle.ts onCreate)
                err.args = (f"{err}: the cache bucket {bucket!r} does not exist in this "
                            "project (create it, or set [fleet] cache_bucket)",)
            raise err
        return str(httpx.URL(self.endpoint).join(r.headers["location"]))

    def _send(self, src: _Reader, size: int, location: str, bucket: str,  # noqa: PLR0913
              name: str) -> int:
        """PATCH chunk after chunk. Each setback (a cut, an offset conflict) costs one of
        TRIES and the upload gives up after TRIES setbacks in a row or `budget` seconds
        without progress (time spent waiting for a followed download's bytes is not
        counted). A 409 `The resource already exists` (Storage authorizes every PATCH
        again, src/http/routes/tus/lifecycle.ts onIncomingRequest) means the object is
        there: done."""
        try:
            return self._send_chunks(src, size, location, bucket, name)
        finally:
            src.close()

    def _send_chunks(self, src: _Reader, size: int, location: str, bucket: str,  # noqa: PLR0913
                     name: str) -> int:
        offset, setbacks = 0, 0
        since = time.monotonic()
        buf = bytearray(self.chunk)  # one buffer for every chunk
        src.created(size)
        while offset < size or size == 0:
            if setbacks > TRIES or time.monotonic() - since > self.budget:
                raise TransientError(
                    f"storage upload: no progress at {offset} of {size} bytes after "
                    f"{setbacks} setbacks; giving up (the cache is optional)")
            waited = time.monotonic()
            n = src.next_chunk(buf, offset)
            since += time.monotonic() - waited
            src.sending(memoryview(buf)[:n], offset)
            r, cut = self._patch(location, memoryview(buf)[:n], offset)
            if r is None:  # cut (directly, or behind a gateway): is the object there now?
                setbacks += 1
                if self._exists(bucket, name):
                    return 0
                log.info("fleet_upload_retry", error=cut, offset=offset, setbacks=setbacks)
                new = self._offset(location)  # where the server got to
                src.acknowledged(memoryview(buf)[:n], offset, new, size)
                offset = new
                continue
            if _already_exists(r):
                return 0
            if r.status_code == 409:  # our offset was wrong: ask the server
                setbacks += 1
                new = self._offset(location)
                src.acknowledged(memoryview(buf)[:n], offset, new, size)
                offset = new
                continue
            if r.status_code not in (200, 204):
                raise self._refused(r, "patch")
            new = int(r.headers.get("upload-offset", offset + n))
            src.acknowledged(memoryview(buf)[:n], offset, new, size)
            if new > offset:
                setbacks, since = 0, time.monotonic()
            offset = new
            if size == 0:
                break
        return size

    def _patch(self, location: str, chunk: memoryview,
               offset: int) -> tuple[httpx.Response | None, str]:
        """One PATCH: its response, or None and what cut it: the connection (a cut, or
        a refusal while the body was still going: Storage answers early and closes),
        or a gateway (Kong, nginx) answering 502/503/504 for a cut to Storage."""
        try:
            r = self.http.patch(location, content=_once(chunk), headers={
                "Upload-Offset": str(offset), "Content-Length": str(len(chunk)),
                "Content-Type": "application/offset+octet-stream"})
        except httpx.HTTPError as e:
            return None, in_words(e, "supabase.timeout")
        if r.status_code in GATEWAY_CUTS:
            return None, f"HTTP {r.status_code} from the gateway"
        return r, ""

    def _exists(self, bucket: str, name: str) -> bool:
        """HEAD on the object (src/http/routes/object/getObjectInfo.ts): there or not;
        anything else (unreachable, refused) counts as not known to be there."""
        url = f"{self.objects}/{quote(bucket)}/{quote(name)}"
        try:
            r = self.http.head(url)
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    def _offset(self, location: str) -> int:
        r = self._call("HEAD", location, {})
        if r.status_code != 200:
            raise self._refused(r, "head")
        return int(r.headers["upload-offset"])

    def _call(self, method: str, url: str, headers: dict[str, str]) -> httpx.Response:
        try:
            return self.http.request(method, url, headers=headers)
        except httpx.HTTPError as e:
            raise TransientError(f"storage upload: {in_words(e, 'supabase.timeout')}") from None

    @staticmethod
    def _refused(r: httpx.Response, step: str) -> PermanentError | TransientError:
        try:
            body = r.json()
            msg = body.get("message") or body.get("error") or r.text[:200]
        except ValueError:
            msg = r.text[:200] or r.reason_phrase
        if r.status_code == 413:
            msg = (f"{msg}: the file is over the bucket's or the project's upload size "
                   "limit, so it is never cached; every host fetches it from the origin")
        text = f"storage upload ({step}): {r.status_code} {msg}"
        return TransientError(text, status=r.status_code) if r.status_code >= 500 else (
            PermanentError(text, status=r.status_code))


class _Reader:
    """Where `_send` takes its chunks: a whole file, or a followed download (then every
    byte Storage acknowledges is hashed, and the last chunk goes only when that hash
    with it is the expected sha256)."""

    def __init__(self, ready: Callable[[int], tuple[int, bool]],  # noqa: PLR0913
                 read: Callable[[memoryview, int], int],
                 hasher: hashlib._Hash | None = None, expected: str | None = None, *,
                 progress: Progress | None = None) -> None:
        self.ready = ready  # (bytes from offset that may go now, whether they are the last)
        self.read = read
        self._hasher = hasher
        self._expected = expected
        self._hashed = 0  # bytes of the object hashed so far: those Storage holds
        self._progress = progress
        # The chunk being sent, hashed meanwhile on another thread (hashlib lets go of
        # the GIL): (its offset, its length, the hash of the object up to its end, done).
        self._ahead: tuple[int, int, hashlib._Hash, Future[None]] | None = None
        self._hashing: ThreadPoolExecutor | None = None

    def next_chunk(self, buf: bytearray, offset: int) -> int:
        """Read the next chunk from `offset` into `buf` (waiting for it when followed);
        returns its length."""
        want, last = self.ready(offset)
        n = self.read(memoryview(buf)[:want], offset)
        if last:
            self.check_last(memoryview(buf)[:n], offset)
        return n

    def created(self, size: int) -> None:
        """The upload exists (nothing sent yet): its pace is measured from here."""
        if self._progress is not None:
            self._progress(0, size)

    def sending(self, chunk: memoryview, offset: int) -> None:
        """`chunk` goes from `offset` now: hash it while it travels (the PATCH and
        Storage's answer take longer than the hash), so that when Storage acknowledges
        exactly it, its hash is ready; anything else (a cut, a conflict) and the hash
        is dropped (see acknowledged). The buffer stays unchanged until then."""
        if self._hasher is None or offset != self._hashed or not chunk:
            return
        if self._hashing is None:
            self._hashing = ThreadPoolExecutor(1, thread_name_prefix="prefetchd-hash")
        ahead = self._hasher.copy()
        self._ahead = (offset, len(chunk), ahead, self._hashing.submit(ahead.update, chunk))

    def close(self) -> None:
        """The upload ended: a hash still under way is waited for (its buffer is ours)."""
        if self._ahead is not None:
            self._ahead[3].result()
            self._ahead = None
        if self._hashing is not None:
            self._hashing.shutdown()
            self._hashing = None

    def acknowledged(self, chunk: memoryview, offset: int, new: int, size: int) -> None:
        """Storage holds the object up to `new` (of `size`) now; `chunk` was sent from
        `offset`."""
        if self._progress is not None and new > offset:
            self._progress(new, size)
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            at, n, hashed, done = ahead
            done.result()
            if self._hasher is not None and (at, n) == (offset, len(chunk)) and (
                    self._hashed == offset and new == offset + n):
                self._hasher, self._hashed = hashed, new
                return
        if self._hasher is None or new <= self._hashed:
            return
        if not offset <= self._hashed <= offset + len(chunk) or new > offset + len(chunk):
            raise Abandoned(f"storage holds {new} bytes, not a continuation of the "
                            f"{self._hashed} hashed")
        self._hasher.update(chunk[self._hashed - offset:new - offset])
        self._hashed = new

    def check_last(self, chunk: memoryview, offset: int) -> None:
        """Before the PATCH that completes the upload: what Storage holds, and this last
        chunk, must be the verified file."""
        if self._hasher is None:
            return
        if offset != self._hashed:
            raise Abandoned(f"the last chunk starts at {offset}, storage holds {self._hashed}")
        h = self._hasher.copy()
        h.update(chunk)
        if h.hexdigest() != self._expected:
            raise Abandoned("the bytes sent do not hash to the verified file's sha256")


def _already_exists(r: httpx.Response) -> bool:
    """Storage's ResourceAlreadyExists: a 409 `The resource already exists` from the TUS
    routes (text, src/http/routes/tus/lifecycle.ts getTusError), or a 400 with
    `"statusCode":"409"` / `Duplicate` from the object routes (src/internal/errors/
    codes.ts) — as opposed to TUS's own 409 `Upload-Offset conflict`."""
    if r.status_code not in (400, 409):
        return False
    text = r.text[:500]
    return "already exists" in text or '"Duplicate"' in text
