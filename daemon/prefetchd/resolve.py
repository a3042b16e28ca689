"""Which provider serves a file_id, where its Supabase Storage copy is, and what its
bytes must hash to: the one place that decides where a download's bytes come from.

Order for a file_id with no provider given: the request's `provider` -> the
Supabase table `provider_file_uploads` (when configured) -> id patterns -> the
configured default. A permanent "not found" falls back to the upload's Storage copy.
The expected hash is the request's `sha256`, else the upload's when the provider
returns original bytes, else none.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass

from .config import DirProviderConfig, OpenAIProviderConfig, Settings
from .errors import TransientError, UsageError
from .log import get_logger
from .providers.ids import check_dir_file_id, check_openai_file_id
from .records import BytesSource, Entry
from .supa import Upload, UploadIndex

log = get_logger("prefetchd.resolve")

_URL_RE = re.compile(r"^https?://", re.IGNORECASE)
_KIMI_RE = re.compile(r"^[a-z0-9]{20}$")
_BUCKET_PATH_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,62}/[^/].*$")


def resolve_provider(file_id: str, explicit: str | None, settings: Settings) -> str:
    """The provider name for a file_id: explicit -> id pattern -> default_provider.

    A file_id the chosen provider could never serve is refused here, as a request.
    """
    name = _pick_provider(file_id, explicit, settings)
    cfg = settings.provider_config(name)
    if isinstance(cfg, OpenAIProviderConfig):
        check_openai_file_id(file_id, name)
    elif isinstance(cfg, DirProviderConfig):
        check_dir_file_id(file_id, name)
    return name


def _pick_provider(file_id: str, explicit: str | None, settings: Settings) -> str:
    if explicit:
        if settings.provider_config(explicit) is None:
            raise UsageError(f"provider {explicit!r} is not configured (see [providers.*])")
        return explicit
    if _URL_RE.match(file_id):
        return "http"
    if _KIMI_RE.match(file_id) and settings.provider_config("kimi") is not None:
        return "kimi"
    if settings.supabase is not None and _BUCKET_PATH_RE.match(file_id):
        return "supabase"
    if settings.default_provider:
        return settings.default_provider
    if _KIMI_RE.match(file_id):
        raise UsageError(
            f"{file_id} looks like a Kimi file id but [providers.kimi] is not configured",
            file_id=file_id,
        )
    raise UsageError(
        f"no provider for {file_id!r}: pass --provider NAME or set default_provider in the config",
        file_id=file_id,
    )


@dataclass(frozen=True)
class Source:
    """Where one download's bytes come from.

    `provider` serves `remote_id`; `label` is the provider name recorded in events and
    statistics (the upload's provider, also when its Storage copy served the bytes);
    `expected` is the sha256 the bytes must have, if one is known in advance; `via`
    says whether the bytes come from the origin or the fleet's Storage cache.
    """

    provider: str
    remote_id: str
    expected: str | None
    label: str
    name: str | None = None
    via: BytesSource = BytesSource.ORIGIN  # or STORAGE: the fleet's cache (events say which)


class Resolver:
    """Sources for manifest entries under one set of settings.

    `returns_original(name)` says whether provider `name` serves the uploaded bytes
    (not, for example, Moonshot's extracted text): only then does the upload's hash
    apply to them.
    """

    def __init__(self, settings: Settings, returns_original: Callable[[str], bool]) -> None:
        self.settings = settings
        self.returns_original = returns_original
        self.uploads = UploadIndex(settings) if settings.supabase is not None else None

    async def lookup(self, file_id: str, provider: str | None,
                     force: bool = False) -> Upload | None:
        """provider_file_uploads row for a file_id without an explicit provider
        (`force`: also with one, to find a fallback)."""
        if self.uploads is None or (provider and not force):
            return None
        try:
            return await asyncio.to_thread(self.uploads.lookup, file_id, provider)
        except TransientError as e:
            # Supabase down must not stop what patterns and providers can do alone.
            log.warning("lookup_failed", file_id=file_id, error=str(e))
            return None

    def primary(self, row: Entry, upload: Upload | None) -> Source:
        """Where the bytes come from first, and what they must hash to."""
        file_id = row.file_id
        if row.provider or upload is None:
            pname = resolve_provider(file_id, row.provider, self.settings)
            label = pname
        else:
            pname = upload.provider if self.settings.provider_config(upload.provider) else (
                resolve_provider(file_id, None, self.settings))
            label = upload.provider
        original = self.returns_original(pname)
        # A hash learned from an earlier download is not used here: it checks the stored
        # object (scrub, verify), it does not say what the URL serves now.
        expected = (row.expected_sha256
                    or (upload.sha256 if upload is not None and original else None))
        return Source(pname, file_id, expected, label)

    async def fallback(self, row: Entry, upload: Upload | None) -> Source | None:
        """The Supabase Storage copy of an upload (original bytes), if there is one.

        An entry with an explicit provider was not looked up before its download:
        it is now, since that provider said the file is not there."""
        if upload is None and self.uploads is not None and row.provider:
            upload = await self.lookup(row.file_id, row.provider, force=True)
        if upload is None or self.uploads is None:
            return None
        path = self.uploads.storage_id(upload)
        if path is None:
            return None
        return Source("supabase", path, row.expected_sha256 or upload.sha256, upload.provider,
                      upload.filename)
