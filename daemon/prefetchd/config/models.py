"""The settings: one frozen pydantic model per section, unknown keys forbidden.

Every field has its default here; `load` merges the file, the environment and the
command line over them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .values import Duration, SecretRef, Size

DEFAULT_ROOT = Path("/mnt/project")
DEFAULT_STATE_DIR = Path("/var/lib/prefetchd")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DownloadSettings(_Section):
    concurrency: int = Field(8, ge=1, le=1024)
    per_provider_concurrency: int = Field(4, ge=1, le=1024)
    connect_timeout: Duration = 10.0
    stall_timeout: Duration = Field(30.0, description="no byte for this long = transient failure")
    retries: int = Field(6, ge=0, le=100, description="attempts after the first")
    backoff_base: Duration = 1.0
    backoff_max: Duration = 300.0
    chunk_size: Size = Field(1 << 20, ge=4096, le=64 << 20)
    shutdown_grace: Duration = Field(20.0, description="time in-flight downloads get at stop")
    get_patience: Duration = Field(
        120.0, description="how long `get` waits on an entry that keeps failing transiently "
                           "(retrying, waiting_space) before it gives up on it")


class RetentionSettings(_Section):
    ttl: Duration = Field(86400.0, description="keep this long after the last request/download")
    max_bytes: Size | None = None
    min_free_bytes: Size = 0
    interval: Duration = Field(3600.0, gt=0)
    cron: str | None = Field(None, description="crontab line; replaces interval when set")
    orphan_temp_age: Duration = 86400.0

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is not None:
            from apscheduler.triggers.cron import CronTrigger

            try:
                CronTrigger.from_crontab(v)
            except ValueError as e:
                raise ValueError(f"{v!r} is not a crontab line ({e})") from None
        return v


class VerifySettings(_Section):
    interval: Duration = Field(86400.0, gt=0, description="how often the scrub runs")
    budget_bytes: Size = Field(10 << 30, description="bytes re-hashed per scrub run at most")
    budget_seconds: Duration = Field(300.0, description="seconds per scrub run at most")


class InboxSettings(_Section):
    path: Path | None = Field(None, description="default <root>/.prefetchd/inbox")
    debounce: Duration = 0.05
    poll: bool = Field(False, description="poll instead of inotify (network filesystems)")
    poll_interval: Duration = 1.0
    rescan_interval: Duration = Field(60.0, gt=0)
    keep: Duration = Field(7 * 86400.0, description="age at which processed/failed files go")


class MetricsSettings(_Section):
    enabled: bool = False
    address: str = "127.0.0.1"
    port: int = Field(9464, ge=1, le=65535)


class ApiSettings(_Section):
    """The local API (a Unix socket); see Settings.api_socket for its path."""

    socket: Path | None = Field(
        None, description="default <state_dir>/api.sock (under systemd the daemon listens in "
                          "$RUNTIME_DIRECTORY and links it there)")
    group: str | None = Field(None, description="the socket's group (default: the daemon's)")
    admin_group: str | None = Field(
        None, description="members may also gc, verify, push stats and forget others' entries")


class LimitsSettings(_Section):
    max_file_size: Size | None = None
    max_size_by_type: dict[str, Size] = Field(default_factory=dict)
    check_magic: bool = False

    @field_validator("max_size_by_type")
    @classmethod
    def _lower_ext(cls, v: dict[str, int]) -> dict[str, int]:
        return {k.lower().lstrip("."): n for k, n in v.items()}


class _ProviderBase(_Section):
    concurrency: int | None = Field(None, ge=1, le=1024)


class OpenAIProviderConfig(_ProviderBase):
    type: Literal["openai"]
    base_url: str = "https://api.openai.com/v1"
    api_key: SecretRef | None = None
    returns_original: bool | None = Field(
        None,
        description="False for Moonshot/Kimi, which serves extracted text, not the upload",
    )


class HttpProviderConfig(_ProviderBase):
    type: Literal["http"]
    bearer_token: SecretRef | None = None
    allow_private_networks: bool = Field(
        False, description="also connect to loopback and private addresses (never to "
        "link-local or cloud metadata ones)")


class DirProviderConfig(_ProviderBase):
    type: Literal["dir"]
    path: Path


class GlmProviderConfig(_ProviderBase):
    type: Literal["glm"]


class SupabaseProviderConfig(_ProviderBase):
    type: Literal["supabase"]
    bucket: str | None = Field(None, description="fixed bucket; else file_ids are bucket/path")


class SupabaseSettings(_Section):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    url: str
    key: SecretRef
    token: SecretRef | None = Field(
        None, description="a JWT sent as `Authorization: Bearer` (a fleet host key); `key` "
                          "is then the project's anon or publishable key, sent as `apikey`")
    bucket: str | None = Field(None, description="bucket of the Storage copies")
    db_schema: str = Field("public", alias="schema")
    host: str | None = Field(None, description="host name in download events")
    lookup_cache_ttl: Duration = 60.0
    push_interval: Duration = Field(30.0, gt=0)
    batch_size: int = Field(500, ge=1, le=500)
    timeout: Duration = 10.0

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"{v!r} is not an http(s) URL")
        return v.rstrip("/")


class FleetSettings(_Section):
    """Many hosts, one wanted-set and one origin download per file, through Supabase."""

    group: str | None = Field(None, min_length=1, max_length=128,
                              description="the group whose shared wanted-set this host "
                                          "follows (default: the host key's group claim, "
                                          "else `default`)")
    host: str | None = Field(None, min_length=1, max_length=255,
                             description="this host's name in the fleet (default: the host "
                                         "key's host claim, else the hostname)")
    poll_interval: Duration = Field(5.0, gt=0, description="how often the wanted-set is polled")
    report_interval: Duration = Field(15.0, gt=0,
                                      description="how often states and a heartbeat are sent")
    cache_bucket: str = Field("prefetchd-cache", min_length=1,
                              description="Storage bucket of the content-addressed cache")
    lease: Duration = Field(120.0, ge=1, le=3600, description="how long a download claim lasts "
                                                     "unless its holder renews it (it does, "
                                                     "every third of it): a dead holder's "
                                                     "files wait this long at most")
    wait_poll: Duration = Field(2.0, gt=0, description="how often a host waiting for another "
                                                       "host's download looks for its blob")
    upload_chunk: Size = Field(6 << 20, ge=1 << 20, le=64 << 20,
                               description="resumable upload chunk (Supabase wants 6 MiB)")

    @field_validator("group")
    @classmethod
    def _group(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", v):
            raise ValueError(f"{v!r}: use letters, digits, '.', '_' and '-'")
        return v


AnyProviderConfig = (OpenAIProviderConfig | HttpProviderConfig | DirProviderConfig
                     | GlmProviderConfig | SupabaseProviderConfig)
ProviderConfig = Annotated[AnyProviderConfig, Field(discriminator="type")]

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class Settings(_Section):
    root: Path = DEFAULT_ROOT
    state_dir: Path = DEFAULT_STATE_DIR
    default_provider: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    download: DownloadSettings = DownloadSettings()
    retention: RetentionSettings = RetentionSettings()
    verify: VerifySettings = VerifySettings()
    inbox: InboxSettings = InboxSettings()
    metrics: MetricsSettings = MetricsSettings()
    api: ApiSettings = ApiSettings()
    limits: LimitsSettings = LimitsSettings()
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    supabase: SupabaseSettings | None = None
    fleet: FleetSettings | None = None

    @model_validator(mode="after")
    def _fleet_needs_supabase(self) -> Settings:
        if self.fleet is not None and self.supabase is None:
            raise ValueError("[fleet] needs a [supabase] section (url, key)")
        return self

    @field_validator("providers")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if not _NAME_RE.match(name):
                raise ValueError(f"provider name {name!r}: use lowercase letters, digits, - and _")
        return v

    def provider_config(self, name: str) -> AnyProviderConfig | None:
        """The config of provider `name`, including the built-in `http` and `glm`."""
        if name in self.providers:
            return self.providers[name]
        if name == "http":
            return HttpProviderConfig(type="http")
        if name == "glm":
            return GlmProviderConfig(type="glm")
        if name == "supabase" and self.supabase is not None:
            return SupabaseProviderConfig(type="supabase")
        return None

    @property
    def db_path(self) -> Path:
        return self.state_dir / "prefetchd.db"

    @property
    def lock_path(self) -> Path:
        return self.state_dir / "lock"

    @property
    def api_socket(self) -> Path:
        """Where clients connect: `[api] socket`, else <state_dir>/api.sock (a daemon
        that listens elsewhere, in systemd's $RUNTIME_DIRECTORY, links it here)."""
        return self.api.socket or self.state_dir / "api.sock"

    @property
    def inbox_path(self) -> Path:
        return self.inbox.path or self.root / ".prefetchd" / "inbox"
