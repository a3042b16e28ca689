"""TOML + environment + credentials -> one validated, immutable Settings object.

Precedence, lowest first: built-in defaults, the TOML file, `PREFETCHD_*`
environment variables, command-line options. Every key is validated by pydantic
with unknown keys forbidden, and every error names the key it is about. Secrets
are references (`env:NAME`, `file:/path`, `credential:NAME`) resolved only when a
provider is built; their values never enter a message.
"""

from __future__ import annotations

import os
import re
import tomllib
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from .errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/prefetchd/config.toml")
DEFAULT_ROOT = Path("/mnt/project")
DEFAULT_STATE_DIR = Path("/var/lib/prefetchd")

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_BYTE_SIZE = TypeAdapter(ByteSize)


def parse_duration(value: Any) -> float:
    """'90s', '1h30m', '24h', '500ms' or a number of seconds -> seconds (float)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '30s', '1h30m' or '24h'")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("expected a duration such as '30s', '1h30m' or '24h'")
    text = value.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"{value!r} is not a duration (use e.g. '30s', '1h30m', '24h', '7d')")
    return total


def parse_size(value: Any) -> int:
    """'500MB', '10GiB', '1.5G', or a number of bytes -> bytes, by pydantic's ByteSize
    rules: decimal for kB/MB/GB/TB/PB (and bare k/M/G/T/P: '500MB' is 500,000,000),
    binary for KiB/MiB/GiB/TiB/PiB ('500MiB' is 524,288,000), bits for kbit/Mbit...;
    case does not matter. Fractions of a byte are dropped."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as '500MB', '512MiB' or a number of bytes")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if not isinstance(value, str):
        raise ValueError("expected a size such as '500MB', '512MiB' or a number of bytes")
    try:
        return int(_BYTE_SIZE.validate_python(value))
    except ValidationError:
        raise ValueError(f"{value!r} is not a size (use e.g. '500MB' = 500,000,000 bytes, "
                         "'512MiB' = 536,870,912 bytes, or a number of bytes)") from None


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]

_SECRET_RE = re.compile(r"^(env|file|credential):(.+)$")


def _check_secret_ref(value: Any) -> str:
    if not isinstance(value, str) or not _SECRET_RE.match(value):
        # Never echo the value: it may be a pasted secret.
        raise ValueError(
            "must be a reference 'env:NAME', 'file:/path' or 'credential:NAME' "
            "(literal secrets are refused in config)"
        )
    return value


SecretRef = Annotated[str, BeforeValidator(_check_secret_ref)]


def resolve_secret(ref: str, key: str) -> SecretStr:
    """Turn a secret reference into its value; errors name the key and the reference only."""
    kind, _, name = ref.partition(":")
    if kind == "env":
        value = os.environ.get(name)
        if value is None:
            raise ConfigError(f"{key}: environment variable {name} is not set")
    elif kind == "file":
        try:
            value = Path(name).read_text().strip()
        except OSError as e:
            raise ConfigError(f"{key}: cannot read secret file {name}: {e.strerror}") from None
    else:
        cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
        if not cred_dir:
            raise ConfigError(
                f"{key}: credential:{name} needs $CREDENTIALS_DIRECTORY "
                "(set by systemd LoadCredential=)"
            )
        if "/" in name or name in (".", ".."):
            raise ConfigError(f"{key}: credential name {name!r} is not a plain name")
        try:
            value = (Path(cred_dir) / name).read_text().strip()
        except OSError as e:
            raise ConfigError(f"{key}: cannot read credential {name}: {e.strerror}") from None
    if not value:
        raise ConfigError(f"{key}: the secret from {kind}:{name} is empty")
    return SecretStr(value)


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


ProviderConfig = Annotated[
    Union[OpenAIProviderConfig, HttpProviderConfig, DirProviderConfig, GlmProviderConfig,
          SupabaseProviderConfig],
    Field(discriminator="type"),
]

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
    limits: LimitsSettings = LimitsSettings()
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    supabase: SupabaseSettings | None = None

    @field_validator("providers")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if not _NAME_RE.match(name):
                raise ValueError(f"provider name {name!r}: use lowercase letters, digits, - and _")
        return v

    def provider_config(self, name: str) -> Any:
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
    def inbox_path(self) -> Path:
        return self.inbox.path or self.root / ".prefetchd" / "inbox"


_GLOBAL_ENV = {"PREFETCHD_CONFIG", "PREFETCHD_ROOT", "PREFETCHD_STATE_DIR"}


def _env_overrides(environ: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """PREFETCHD_DOWNLOAD__CONCURRENCY=4 -> {"download": {"concurrency": 4}}.

    Also returns which variable set each dotted key, so errors can name it.
    """
    out: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for var, raw in environ.items():
        if not var.startswith("PREFETCHD_") or var in _GLOBAL_ENV:
            continue
        path = var[len("PREFETCHD_"):].lower().split("__")
        try:
            value: Any = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{var}: conflicts with another PREFETCHD_ variable")
        node[path[-1]] = value
        sources[".".join(path)] = var
    return out, sources


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = _merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def _absolutize(data: dict[str, Any], base: Path) -> None:
    """Relative paths in a config file are relative to the file's folder, not the cwd."""
    for key in ("root", "state_dir"):
        if isinstance(data.get(key), str) and not os.path.isabs(data[key]):
            data[key] = str(base / data[key])
    inbox = data.get("inbox")
    if isinstance(inbox, dict) and isinstance(inbox.get("path"), str):
        if not os.path.isabs(inbox["path"]):
            inbox["path"] = str(base / inbox["path"])
    for prov in (data.get("providers") or {}).values():
        if isinstance(prov, dict) and isinstance(prov.get("path"), str):
            if not os.path.isabs(prov["path"]):
                prov["path"] = str(base / prov["path"])


def _loc(error: Any) -> str:
    """A pydantic error's location as the dotted config key it is about."""
    loc = ".".join(str(p) for p in error["loc"] if not str(p).startswith("function-"))
    # Drop the union tag pydantic inserts for discriminated providers.
    return re.sub(r"\.(openai|http|dir|glm|supabase)(?=\.|$)", "", loc, count=1)


def _format_validation(err: ValidationError, origin: str, env_sources: dict[str, str]) -> str:
    first = err.errors()[0]
    loc = _loc(first)
    for key, var in env_sources.items():
        if key == loc or key.startswith(loc + "."):
            origin, loc = var, key
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{origin}: {loc or 'config'}: {msg}{more}"


class ConfigWarning(UserWarning):
    """Something in the configuration was ignored (an unknown PREFETCHD_* variable)."""


def _warn(message: str) -> None:
    warnings.warn(message, ConfigWarning, stacklevel=3)


def _validate(file_data: dict[str, Any], env_data: dict[str, Any], options: dict[str, Any],
              env_sources: dict[str, str], origin: str,
              warn: Callable[[str], None]) -> Settings:
    """Validate file < environment < options; an unknown key that only the environment
    brings is dropped with a warning naming its variable, and validation runs again."""
    while True:
        try:
            return Settings.model_validate(_merge(_merge(file_data, env_data), options))
        except ValidationError as e:
            unknown = _env_only_unknown(e, file_data, env_sources)
            if unknown is None:
                raise ConfigError(_format_validation(e, origin, env_sources)) from None
        *parents, last = unknown.split(".")
        node = env_data
        for part in parents:
            node = node[part]
        del node[last]
        for key in [k for k in env_sources if k == unknown or k.startswith(unknown + ".")]:
            warn(f"{env_sources.pop(key)}: {key} is not a prefetchd setting; ignored")


def _env_only_unknown(err: ValidationError, file_data: dict[str, Any],
                      env_sources: dict[str, str]) -> str | None:
    """The dotted key of an "unknown key" error that comes from the environment alone."""
    for error in err.errors():
        if error["type"] != "extra_forbidden":
            continue
        loc = _loc(error)
        from_env = any(k == loc or k.startswith(loc + ".") for k in env_sources)
        if from_env and not _has_key(file_data, loc.split(".")):
            return loc
    return None


def _has_key(data: dict[str, Any], path: list[str]) -> bool:
    node: Any = data
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _given(option: str, value: str | Path | None, var: str,
           env: dict[str, str]) -> str | Path | None:
    """The option's value, else its environment variable's, else None (the default).

    An empty one is an error, not the default: `--config "$CONF"` with CONF unset must
    not quietly use /etc/prefetchd/config.toml.
    """
    name = option
    if value is None:
        name, value = var, env.get(var)
    if value is not None and not str(value).strip():
        raise ConfigError(f"{name} is empty: give a path, or leave it out for the default")
    return value


def load_settings(
    config: str | Path | None = None,
    *,
    root: str | Path | None = None,
    state_dir: str | Path | None = None,
    environ: dict[str, str] | None = None,
    warn: Callable[[str], None] | None = None,
) -> Settings:
    """Build Settings from file, environment and explicit options; raise ConfigError.

    An unknown key in the file is an error; an unknown `PREFETCHD_*` variable only a
    warning (through `warn`, else a ConfigWarning), since the environment is shared
    with other tools that pick the same prefix (the test suite's PREFETCHD_TEST_PG).
    """
    env = dict(os.environ if environ is None else environ)
    config = _given("--config", config, "PREFETCHD_CONFIG", env)
    root = _given("--root", root, "PREFETCHD_ROOT", env)
    state_dir = _given("--state-dir", state_dir, "PREFETCHD_STATE_DIR", env)
    path: Path | None = None
    explicit = config
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
    elif DEFAULT_CONFIG_PATH.is_file():
        path = DEFAULT_CONFIG_PATH
    data: dict[str, Any] = {}
    origin = "config"
    if path is not None:
        origin = str(path)
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read: {e}") from None
        _absolutize(data, path.resolve().parent)
    env_data, env_sources = _env_overrides(env)
    if env_data:
        origin = f"{origin} + PREFETCHD_* environment" if path else "PREFETCHD_* environment"
    options = {key: str(Path(value).absolute())
               for key, value in (("root", root), ("state_dir", state_dir)) if value is not None}
    settings = _validate(data, env_data, options, env_sources, origin, warn or _warn)
    if settings.default_provider and settings.provider_config(settings.default_provider) is None:
        raise ConfigError(
            f"{origin}: default_provider: no provider named {settings.default_provider!r}"
        )
    return settings
