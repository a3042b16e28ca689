"""Supabase through supabase-py: the client, and the provider_file_uploads lookup.

Without a [supabase] section nothing here is used. Errors become PrefetchError
subclasses with the status and table named, never the key.
"""

from __future__ import annotations

import base64
import functools
import json
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from .config import Settings, resolve_secret
from .errors import ConfigError, TransientError
from .log import add_secrets


def make_client(settings: Settings) -> Any:
    """A supabase-py client for [supabase] (retries off: callers back off themselves)."""
    cfg = settings.supabase
    if cfg is None:
        raise ConfigError("supabase: no [supabase] section in the config")
    from supabase import ClientOptions, create_client

    key, bearer = credentials(settings)
    return create_client(cfg.url, key, options=ClientOptions(
        schema=cfg.db_schema, postgrest_client_timeout=cfg.timeout,
        postgrest_client_retry=False, auto_refresh_token=False, persist_session=False,
        headers={"Authorization": f"Bearer {bearer}"},
    ))


def credentials(settings: Settings) -> tuple[str, str]:
    """(apikey, bearer token) for [supabase]: the key for both, unless a `token` (a
    fleet host's JWT) is the bearer. Both are registered as secrets for redaction."""
    cfg = settings.supabase
    if cfg is None:
        raise ConfigError("supabase: no [supabase] section in the config")
    key = resolve_secret(cfg.key, "supabase.key").get_secret_value()
    token = (resolve_secret(cfg.token, "supabase.token").get_secret_value()
             if cfg.token is not None else key)
    add_secrets([key, token])
    return key, token


def host_name(settings: Settings) -> str:
    """This host's name in events and in the fleet: [fleet] host, else the host key's
    `host` claim, else [supabase] host, else the hostname."""
    f, s = settings.fleet, settings.supabase
    return ((f.host if f is not None else None) or token_claims(settings).get("host")
            or (s.host if s is not None else None) or socket.gethostname())


def fleet_group(settings: Settings) -> str:
    """The fleet group: [fleet] group, else the host key's `group` claim, else
    `default`."""
    f = settings.fleet
    return (f.group if f is not None else None) or token_claims(settings).get("group") or (
        "default")


def token_claims(settings: Settings) -> dict[str, str]:
    """The `group` and `host` claims of [supabase] token (a fleet host key), read
    without checking its signature (Supabase does that): only to name this host and
    its group by default, and to refuse a config that says otherwise."""
    cfg = settings.supabase
    if cfg is None or cfg.token is None:
        return {}
    token = resolve_secret(cfg.token, "supabase.token").get_secret_value()
    add_secrets([token])
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return {}
    if not isinstance(claims, dict):
        return {}
    return {k: v for k in ("group", "host") if isinstance(v := claims.get(k), str) and v}


def check_fleet_identity(settings: Settings) -> None:
    """A [fleet] group or host that differs from the host key's claims would have every
    claim and report refused by row-level security: an error at start instead."""
    f, claims = settings.fleet, token_claims(settings)
    if f is None:
        return
    for what, mine in (("group", f.group), ("host", f.host)):
        theirs = claims.get(what)
        if mine and theirs and mine != theirs:
            raise ConfigError(f"fleet.{what}: {mine!r} is not the host key's {what} claim "
                              f"{theirs!r} (leave it out to use the key's)")


@functools.cache
def api_errors() -> tuple[type[Exception], ...]:
    """What supabase-py raises for a failed call (imported only when one fails)."""
    import httpx
    from postgrest.exceptions import APIError

    return (APIError, httpx.HTTPError, ValueError)  # ValueError: a body that is not JSON


def api_error(e: Exception, what: str) -> TransientError:
    """An error from supabase-py/postgrest/httpx as one line; retrying may help."""
    code = getattr(e, "code", None) or getattr(getattr(e, "response", None), "status_code", None)
    msg = getattr(e, "message", None)
    if not msg:  # httpx's errors, a body that is not JSON: in words, not a class name
        from .providers.transport import in_words

        msg = ("the answer is not JSON" if isinstance(e, ValueError)
               else in_words(e, "supabase.timeout"))
    if msg.startswith(f"{what}: "):  # our SQL functions name themselves already
        msg = msg[len(what) + 2:]
    return TransientError(f"supabase {what}: {msg}" + (f" ({code})" if code else ""))


@dataclass(frozen=True)
class Upload:
    """A row of provider_file_uploads."""

    provider: str
    provider_file_id: str
    sha256: str | None
    filename: str | None
    size: int | None
    storage_path: str | None  # supabase_file_id


class UploadIndex:
    """Looks file_ids up in provider_file_uploads, with a short-lived cache."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ttl = settings.supabase.lookup_cache_ttl if settings.supabase else 0.0
        self._client: Any = None
        self._cache: dict[tuple[str, str | None], tuple[float, Upload | None]] = {}
        self._lock = threading.Lock()

    def _table(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = make_client(self.settings)
            return self._client.table("provider_file_uploads")

    def lookup(self, file_id: str, provider: str | None = None) -> Upload | None:
        """The upload row for a file_id (blocking; call from a thread)."""
        now = time.monotonic()
        hit = self._cache.get((file_id, provider))
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        try:
            q = self._table().select(
                "provider,provider_file_id,sha256,filename,file_size_bytes,supabase_file_id"
            ).eq("provider_file_id", file_id)
            if provider:
                q = q.eq("provider", provider)
            rows = q.limit(20).execute().data
        except api_errors() as e:
            raise api_error(e, "provider_file_uploads lookup") from None
        upload = self._choose(rows)
        self._cache[(file_id, provider)] = (now, upload)
        return upload

    def _choose(self, rows: list[dict[str, Any]]) -> Upload | None:
        """Prefer a row whose provider is configured here; else the first."""
        if not rows:
            return None
        rows = sorted(rows, key=lambda r: self.settings.provider_config(r["provider"]) is None)
        r = rows[0]
        return Upload(r["provider"], r["provider_file_id"], (r.get("sha256") or "").lower() or None,
                      r.get("filename"), r.get("file_size_bytes"), r.get("supabase_file_id"))

    def storage_id(self, upload: Upload) -> str | None:
        """`bucket/path` of the upload's Storage copy, if it has one."""
        path = upload.storage_path
        if not path:
            return None
        bucket = self.settings.supabase.bucket if self.settings.supabase else None
        if bucket and not path.startswith(bucket + "/"):
            return f"{bucket}/{path.lstrip('/')}"
        return path
