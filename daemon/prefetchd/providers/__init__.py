"""Provider types behind one interface, and how a configured instance is built.

Which provider serves a file_id is `prefetchd.resolve`'s decision."""

from __future__ import annotations

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

__all__ = ["Body", "Provider", "RangeNotSatisfiable", "build_provider"]

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
            token=_secret(settings.supabase.token, "supabase.token"),
            bucket=cfg.bucket, connect_timeout=dl.connect_timeout,
            stall_timeout=dl.stall_timeout, max_connections=limit,
        )
        storage.trust_configured_urls()  # built from [supabase].url, not from file_ids
        return storage
    if isinstance(cfg, GlmProviderConfig):
        from .glm import GlmProvider

        return GlmProvider(name)
    raise ConfigError(f"providers.{name}.type: unsupported")  # pragma: no cover
