"""`supabase`: a Supabase Storage object, streamed (the http provider's client) from
the authenticated object endpoint with Range resume. storage3's download() reads the whole object
into memory, so it is not used.

The file_id is `bucket/path`, or just `path` for an instance with a fixed `bucket`.
"""

from __future__ import annotations

from urllib.parse import quote

from ..errors import PermanentError
from .http import HttpProvider


class SupabaseStorageProvider(HttpProvider):
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
