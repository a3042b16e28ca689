"""`supabase`: a Supabase Storage object, streamed (the http provider's client) from
the authenticated object endpoint with Range resume. storage3's download() reads the whole object
into memory, so it is not used.

The file_id is `bucket/path`, or just `path` for an instance with a fixed `bucket`.
"""

from __future__ import annotations

import json
from urllib.parse import quote

from ..errors import PermanentError
from .http import HttpProvider, _Reply

ERROR_BODY_MAX = 64 * 1024  # an error body is a short JSON object; more is not one


class SupabaseStorageProvider(HttpProvider):
    kind = "supabase"

    def __init__(  # noqa: PLR0913 - one keyword per setting of [supabase] and the provider
        self, name: str, *, url: str, key: str, bucket: str | None,
        connect_timeout: float, stall_timeout: float, max_connections: int,
        token: str | None = None,
    ) -> None:
        super().__init__(name, connect_timeout=connect_timeout, stall_timeout=stall_timeout,
                         bearer_token=token or key, max_connections=max_connections,
                         headers={"apikey": key})
        self.base = url.rstrip("/")
        self.bucket = bucket

    def target(self, file_id: str) -> str:
        path = file_id.lstrip("/")
        if self.bucket is None:
            bucket, _, path = path.partition("/")
        else:
            bucket = self.bucket
        if not bucket or not path or ".." in path.split("/"):
            raise PermanentError(f"{self.name}: {file_id[:80]!r} is not bucket/path")
        return f"{self.base}/storage/v1/object/authenticated/{quote(bucket)}/{quote(path)}"

    async def error_status(self, resp: _Reply) -> int:
        """Storage answers most errors as HTTP 400 with the real status in the JSON body
        (`{"statusCode":"404","code":"NoSuchKey",...}`: StorageBackendError's
        userStatusCode is 400 unless 500, src/internal/errors/storage-error.ts), so a
        missing object, a refused or expired key, a duplicate or an oversized object
        all looked like "HTTP 400". The body's statusCode is the status that counts."""
        if resp.status != 400:
            return resp.status
        body = bytearray()
        async for chunk in resp.chunks:
            body += chunk
            if len(body) > ERROR_BODY_MAX:
                return resp.status
        try:
            doc = json.loads(bytes(body))
        except ValueError:
            return resp.status
        code = doc.get("statusCode") if isinstance(doc, dict) else None
        if isinstance(code, (str, int)) and str(code).isdigit() and 400 <= int(code) < 600:
            return int(code)
        return resp.status
