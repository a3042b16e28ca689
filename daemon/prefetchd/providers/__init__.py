"""Provider types behind one interface, and resolution of a file_id to a provider."""

from __future__ import annotations

import re

from ..config import (
    DirProviderConfig,
    GlmProviderConfig,
    HttpProviderConfig,
    OpenAIProviderConfig,
    Settings,
    SupabaseProviderConfig,
    resolve_secret,
)
from ..errors import ConfigError, UsageError
from ..log import add_secrets
from .base import Body, Provider, RangeNotSatisfiable

__all__ = ["Body", "Provider", "RangeNotSatisfiable", "build_provider", "resolve_provider"]

_URL_RE = re.compile(r"^https?://", re.IGNORECASE)
_KIMI_RE = re.compile(r"^[a-z0-9]{20}$")
_BUCKET_PATH_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,62}/[^/].*$")


def resolve_provider(file_id: str, explicit: str | None, settings: Settings) -> str:
    """The provider name for a file_id: explicit -> id pattern -> default_provider.

    A file_id the chosen provider could never serve is refused here, as a request.
    """
    name = _pick_provider(file_id, explicit, settings)
    if isinstance(settings.provider_config(name), OpenAIProviderConfig):
        check_openai_file_id(file_id, name)
    return name


def check_openai_file_id(file_id: str, provider: str) -> None:
    """An OpenAI-style file id is one URL path segment: `/files/{id}` must name a file.

    `.` or `..` would make the SDK ask for the file list or the API root instead.
    """
    if file_id in (".", "..") or _NOT_IN_SEGMENT.search(file_id):
        raise UsageError(f"file_id {file_id[:80]!r} cannot be a file of provider {provider} "
                         "(an OpenAI-style file id is one path segment: not '.' or '..', "
                         "no '/', '?', '#', '%', spaces or control characters)")


_NOT_IN_SEGMENT = re.compile(r"[/?#%\s\x00-\x1f\x7f]")


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
            f"{file_id} looks like a Kimi file id but [providers.kimi] is not configured"
        )
    raise UsageError(
        f"no provider for {file_id!r}: pass --provider NAME or set default_provider in the config"
    )


def _secret(ref: str | None, key: str) -> str | None:
    if ref is None:
        return None
    value = resolve_secret(ref, key).get_secret_value()
    add_secrets([value])
    return value


def build_provider(name: str, settings: Settings) -> Provider:
    """Instantiate provider `name`; secrets are resolved here (ConfigError names the key)."""
    cfg = settings.provider_config(name)
    if cfg is None:
        raise UsageError(f"provider {name!r} is not configured")
    dl = settings.download
    limit = cfg.concurrency or dl.per_provider_concurrency
    if isinstance(cfg, OpenAIProviderConfig):
        from .openai import OpenAIProvider

        return OpenAIProvider(
            name, base_url=cfg.base_url,
            api_key=_secret(cfg.api_key, f"providers.{name}.api_key"),
            connect_timeout=dl.connect_timeout, stall_timeout=dl.stall_timeout,
            returns_original=cfg.returns_original, max_connections=limit,
        )
    if isinstance(cfg, HttpProviderConfig):
        from .http import HttpProvider

        return HttpProvider(
            name, connect_timeout=dl.connect_timeout, stall_timeout=dl.stall_timeout,
            bearer_token=_secret(cfg.bearer_token, f"providers.{name}.bearer_token"),
            max_connections=limit, allow_private_networks=cfg.allow_private_networks,
        )
    if isinstance(cfg, DirProviderConfig):
        from .dir import DirProvider

        return DirProvider(name, path=cfg.path)
    if isinstance(cfg, SupabaseProviderConfig):
        from .supabase import SupabaseStorageProvider

        if settings.supabase is None:
            raise ConfigError(f"providers.{name}: type supabase needs a [supabase] section")
        storage = SupabaseStorageProvider(
            name, url=settings.supabase.url,
            key=_secret(settings.supabase.key, "supabase.key") or "",
            bucket=cfg.bucket, connect_timeout=dl.connect_timeout,
            stall_timeout=dl.stall_timeout, max_connections=limit,
        )
        storage.trust_configured_urls()  # built from [supabase].url, not from file_ids
        return storage
    if isinstance(cfg, GlmProviderConfig):
        from .glm import GlmProvider

        return GlmProvider(name)
    raise ConfigError(f"providers.{name}.type: unsupported")  # pragma: no cover
