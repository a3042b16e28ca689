"""Loading: TOML file < `PREFETCHD_*` environment < command-line options -> Settings.

Errors name the key they are about, and the file or variable it came from.

Without a config file, a user other than root gets per-user places instead of
/var/lib/prefetchd and /mnt/project, which it could not write: state in
`$XDG_STATE_HOME/prefetchd` (~/.local/state/prefetchd) and the root in
`$XDG_DATA_HOME/prefetchd` (~/.local/share/prefetchd), as the XDG Base Directory
spec places a program's state and data. A config file (the system's
/etc/prefetchd/config.toml included) keeps the system defaults: the daemon's own
user, which has one, is not root either.
"""

from __future__ import annotations

import os
import pwd
import tomllib
import typing
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..errors import ConfigError
from .models import AnyProviderConfig, Settings
from .words import did_you_mean, one_of, say

DEFAULT_CONFIG_PATH = Path("/etc/prefetchd/config.toml")

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


def _absolute(path: str, base: Path) -> str:
    """`path` from `base`, normalized: logs and messages say /srv/demo/state, never
    /srv/config/../demo/state (normpath, as the shell's `cd` does, not resolve():
    a symlink the user named stays as named)."""
    return os.path.normpath(base / path)


def _absolutize(data: dict[str, Any], base: Path) -> None:
    """Relative paths in a config file are relative to the file's folder, not the cwd."""
    for key in ("root", "state_dir"):
        if isinstance(data.get(key), str):
            data[key] = _absolute(data[key], base)
    for section, key in (("inbox", "path"), ("api", "socket")):
        table = data.get(section)
        if isinstance(table, dict) and isinstance(table.get(key), str):
            table[key] = _absolute(table[key], base)
    for prov in (data.get("providers") or {}).values():
        if isinstance(prov, dict) and isinstance(prov.get("path"), str):
            prov["path"] = _absolute(prov["path"], base)


def _loc(error: Any) -> str:
    """A pydantic error's location as the dotted config key it is about.

    A provider's loc carries the union tag pydantic inserts after its name
    (`providers.web.http.bogus`): it goes, and only there, so that a provider named
    like a type (`[providers.http]`) keeps its name.
    """
    parts = [str(p) for p in error["loc"] if not str(p).startswith("function-")]
    if len(parts) > 2 and parts[0] == "providers" and parts[2] in _PROVIDER_TYPES:
        del parts[2]
    return ".".join(parts)


#: the provider types, in the order the discriminated union lists them
_PROVIDER_TYPES = [typing.get_args(m.model_fields["type"].annotation)[0]
                   for m in typing.get_args(AnyProviderConfig)]


def _keys_at(loc: list[str], error: Any) -> list[str]:
    """The keys of the section holding the unknown key at `loc` (for "did you mean")."""
    model: Any = Settings
    raw = [str(p) for p in error["loc"]]
    section = loc[:-1]
    i = 0
    while i < len(section):
        if model is Settings and section[i] == "providers":  # providers.<name>: by its type
            types = dict(zip(_PROVIDER_TYPES, typing.get_args(AnyProviderConfig), strict=True))
            model = types.get(raw[i + 2]) if len(raw) > i + 2 else None
            i += 2
        else:
            field = model.model_fields.get(section[i])
            annotation = field.annotation if field is not None else None
            model = next((a for a in (annotation, *typing.get_args(annotation))
                          if isinstance(a, type) and issubclass(a, BaseModel)), None)
            i += 1
        if model is None:
            return []
    fields = model.model_fields
    return [*fields, *(f.alias for f in fields.values() if f.alias)]


def _say(error: Any, loc: str) -> tuple[str, str]:
    """(the dotted key, what is wrong with it) in prefetchd's words."""
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "union_tag_not_found":
        name = loc.rsplit(".", 1)[-1]
        hint = (f'use type = "{name}"' if name in _PROVIDER_TYPES
                else f"type = one of {one_of(_PROVIDER_TYPES)}")
        return loc, f"missing type ({hint})"
    if kind == "union_tag_invalid":
        return f"{loc}.type", f"{ctx.get('tag')!r} is not one of {one_of(_PROVIDER_TYPES)}"
    if kind == "extra_forbidden":
        parts = loc.split(".")
        return loc, "unknown key" + did_you_mean(parts[-1], _keys_at(parts, error))
    return loc, say(error)


def _format_validation(err: ValidationError, origin: str, env_sources: dict[str, str]) -> str:
    """Every error of `err` on one line: `<origin>: <key>: <what is wrong>; <key>: ...`,
    each naming the variable instead when the environment set that key."""
    said: list[tuple[str, str]] = []
    for error in err.errors():
        where, loc = origin, _loc(error)
        for key, var in env_sources.items():
            if key == loc or key.startswith(loc + "."):
                where, loc = var, key
        loc, message = _say(error, loc)
        said.append((where, f"{loc or 'config'}: {message}"))
    first = said[0][0]
    return f"{first}: " + "; ".join(text if where == first else f"{where}: {text}"
                                    for where, text in dict.fromkeys(said))


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


def _xdg_home(env: dict[str, str], var: str, fallback: str) -> Path:
    """`$var` when it is an absolute path (the spec says to ignore a relative one),
    else `fallback` under the home directory ($HOME, else the password database's)."""
    value = env.get(var, "")
    if os.path.isabs(value):
        return Path(value)
    home = env.get("HOME")
    if not home:
        try:
            home = pwd.getpwuid(os.geteuid()).pw_dir
        except KeyError:
            raise ConfigError(f"no HOME and no {var} to put per-user state in: set one, "
                              "or give --root and --state-dir") from None
    return Path(home) / fallback


#: per-user places: the variable that names the base folder, and its fallback under HOME
_XDG = {"root": ("XDG_DATA_HOME", ".local/share"), "state_dir": ("XDG_STATE_HOME", ".local/state")}


def user_defaults(env: dict[str, str], keys: Iterable[str] = ("root", "state_dir")
                  ) -> dict[str, str]:
    """The per-user `keys` (root, state_dir) of a user other than root (for root: none)."""
    if os.geteuid() == 0:
        return {}
    return {key: str(_xdg_home(env, *_XDG[key]) / "prefetchd") for key in keys}


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
    else:
        absent = [key for key, given in (("root", root), ("state_dir", state_dir)) if not given]
        data = user_defaults(env, absent)
    env_data, env_sources = _env_overrides(env)
    if env_data:
        origin = f"{origin} + PREFETCHD_* environment" if path else "PREFETCHD_* environment"
    options = {key: os.path.normpath(Path(value).absolute())
               for key, value in (("root", root), ("state_dir", state_dir)) if value is not None}
    settings = _validate(data, env_data, options, env_sources, origin, warn or _warn)
    if settings.default_provider and settings.provider_config(settings.default_provider) is None:
        raise ConfigError(
            f"{origin}: default_provider: no provider named {settings.default_provider!r}"
        )
    return settings
