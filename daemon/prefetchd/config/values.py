"""Values a setting can take: durations, sizes and secret references.

Each parser accepts what a person writes in TOML or an environment variable ('90s',
'500MB', 'env:NAME') and says in its error what it expected. A secret reference is
resolved only when a provider is built; its value never enters a message.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, ByteSize, SecretStr, TypeAdapter, ValidationError

from ..errors import ConfigError

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
