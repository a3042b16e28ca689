"""TOML + environment + credentials -> one validated, immutable Settings object.

Precedence, lowest first: built-in defaults, the TOML file, `PREFETCHD_*`
environment variables, command-line options. Every key is validated by pydantic
with unknown keys forbidden, and every error names the key it is about. Secrets
are references (`env:NAME`, `file:/path`, `credential:NAME`) resolved only when a
provider is built; their values never enter a message.

The parts: `values` (durations, sizes, secret references), `models` (the sections
and Settings), `load` (file, environment and options merged and validated).
"""

from __future__ import annotations

from .load import DEFAULT_CONFIG_PATH, ConfigWarning, load_settings
from .models import (
    DEFAULT_ROOT,
    DEFAULT_STATE_DIR,
    AnyProviderConfig,
    ApiSettings,
    DirProviderConfig,
    DownloadSettings,
    FleetSettings,
    GlmProviderConfig,
    HttpProviderConfig,
    InboxSettings,
    LimitsSettings,
    MetricsSettings,
    OpenAIProviderConfig,
    ProviderConfig,
    RetentionSettings,
    Settings,
    SupabaseProviderConfig,
    SupabaseSettings,
    VerifySettings,
)
from .values import Duration, SecretRef, Size, parse_duration, parse_size, resolve_secret

__all__ = [
    "DEFAULT_CONFIG_PATH", "DEFAULT_ROOT", "DEFAULT_STATE_DIR", "AnyProviderConfig",
    "ApiSettings", "ConfigWarning", "DirProviderConfig", "DownloadSettings", "Duration",
    "FleetSettings", "GlmProviderConfig",
    "HttpProviderConfig", "InboxSettings", "LimitsSettings", "MetricsSettings",
    "OpenAIProviderConfig", "ProviderConfig", "RetentionSettings", "SecretRef", "Settings",
    "Size", "SupabaseProviderConfig", "SupabaseSettings", "VerifySettings", "load_settings",
    "parse_duration", "parse_size", "resolve_secret",
]
