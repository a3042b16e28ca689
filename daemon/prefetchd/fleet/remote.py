"""The fleet's tables and functions on Supabase, through supabase-py (PostgREST).

Blocking calls (run them on a thread). Every write goes through one of the SQL
functions of `config/supabase/002_fleet.sql`; reads are plain selects that row-level
security limits to this host's group when the key is a `prefetchd_host` key. Errors
become TransientError with the function or table named, never the key.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from typing import Any

import httpx

from ..config import FleetSettings, Settings
from ..errors import ConfigError
from ..supa import (
    api_error,
    api_errors,
    check_fleet_identity,
    credentials,
    fleet_group,
    host_name,
    make_client,
)


def id_key(provider: str, file_id: str) -> str:
    """The fleet's name for (provider, file_id): a hash, so a file_id that carries a
    secret (a URL's password, a signed query) never reaches a shared table."""
    return hashlib.sha256(f"{provider}\n{file_id}".encode()).hexdigest()[:40]


def file_key(file_id: str) -> str:
    """A host's state row key for a file_id (its manifest has one row per id)."""
    return id_key("", file_id)


def blob_path(group: str, sha: str) -> str:
    """Where a blob lives in the cache bucket: under the group, by content."""
    return f"{group}/sha256/{sha[:2]}/{sha}"


class _Refused(Exception):
    """PostgREST's refusal: its JSON error's code and message (postgrest's APIError)."""

    def __init__(self, r: httpx.Response) -> None:
        body = r.json()  # not JSON: a ValueError, "the answer is not JSON"
        if not isinstance(body, dict):
            raise ValueError("not a PostgREST error")
        super().__init__(body.get("message"))
        self.code = body.get("code") or r.status_code
        self.message = body.get("message")
        self.response = r


@dataclass(frozen=True)
class Lease:
    """A live download lease of another host, in seconds from the database's now."""

    host: str
    expires_in: float
    done: float | None  # bytes of the blob in Storage, as the holder last said
    size: float | None
    progress_age: float | None  # since the holder last said
    eta_in: float | None  # until the holder expects the blob complete (may be < 0)


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) else None


class Remote:
    """One host's (or one CLI call's) way to the fleet tables of `group`."""

    def __init__(self, settings: Settings, group: str | None = None) -> None:
        if settings.fleet is None or settings.supabase is None:
            raise ConfigError("fleet: needs [fleet] and [supabase] sections in the config")
        self.settings = settings
        check_fleet_identity(settings)
        self.cfg: FleetSettings = settings.fleet
        self.group = group or fleet_group(settings)
        self.host = host_name(settings)
        self._client: Any = None
        self._http: httpx.Client | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = make_client(self.settings)
            return self._client

    @property
    def http(self) -> httpx.Client:
        """The client of the SQL functions' calls: PostgREST's RPC, spoken directly."""
        with self._lock:
            if self._http is None:
                cfg = self.settings.supabase
                assert cfg is not None
                key, bearer = credentials(self.settings)
                self._http = httpx.Client(
                    base_url=f"{cfg.url.rstrip('/')}/rest/v1/rpc/",
                    headers={"apikey": key, "Authorization": f"Bearer {bearer}",
                             "Accept-Profile": cfg.db_schema,
                             "Content-Profile": cfg.db_schema},
                    timeout=cfg.timeout)
            return self._http

    def _rpc(self, fn: str, args: dict[str, Any]) -> Any:
        """One SQL function through PostgREST (POST /rpc/<fn>, named arguments), as
        supabase-py's `rpc(...).execute()` sends it, without supabase-py: a `fleet
        want` from the command line then costs no import of it (0.3 to 0.4 s of every
        such call, measured). Errors read as supabase-py's do (supa.api_error)."""
        try:
            r = self.http.post(fn, json=args)
            if not 200 <= r.status_code <= 299:  # noqa: PLR2004 - PostgREST's success
                raise _Refused(r)
            return r.json() if r.content else None
        except (httpx.HTTPError, ValueError, _Refused) as e:
            raise api_error(e, fn) from None

    def _select(self, table: str, what: str, build: Any) -> list[dict[str, Any]]:
        try:
            q = build(self.client.table(table).select(what).eq("group_name", self.group))
            return list(q.execute().data or [])
        except api_errors() as e:
            raise api_error(e, f"{table} read") from None

    # -- the wanted-set --------------------------------------------------------------------

    def changes(self, since: int, limit: int) -> list[dict[str, Any]]:
        """Wanted-set rows written after revision `since`, oldest first."""
        return self._select(
            "fleet_wants", "file_id,provider,sha256,size,dest,pin,ttl,action,revision",
            lambda q: q.gt("revision", since).order("revision").limit(limit))

    def want(self, entries: list[dict[str, Any]]) -> int:
        """Write entries into the group's wanted-set; returns the last revision."""
        return int(self._rpc("prefetchd_fleet_want",
                             {"group_name": self.group, "entries": entries}) or 0)

    # -- claims and the cache ----------------------------------------------------------------

    def claim(self, key: str) -> bool:
        """Take (or renew) the download lease on `key`; False while another host holds it."""
        return bool(self._rpc("prefetchd_fleet_claim", {
            "key": key, "host": self.host, "lease_seconds": max(1, round(self.cfg.lease)),
            "group_name": self.group}))

    def release(self, key: str) -> None:
        self._rpc("prefetchd_fleet_release",
                  {"key": key, "host": self.host, "group_name": self.group})

    def progress(self, key: str, done: int, size: int, eta: float) -> bool:
        """Say how far this host's upload of the claimed blob got (for waiting hosts)."""
        return bool(self._rpc("prefetchd_fleet_progress", {
            "key": key, "host": self.host, "done": done, "size": size,
            "eta_seconds": round(eta, 3), "group_name": self.group}))

    def lease(self, key: str) -> Lease | None:
        """The live lease on `key` as a waiting host sees it, or None when nobody holds
        it (released, or expired)."""
        row = self._rpc("prefetchd_fleet_lease", {"key": key, "group_name": self.group})
        if not isinstance(row, dict):
            return None
        return Lease(str(row.get("host") or ""), float(row.get("expires_in") or 0.0),
                     _num(row.get("done")), _num(row.get("size")),
                     _num(row.get("progress_age")), _num(row.get("eta_in")))

    def known(self, provider: str, key: str) -> tuple[str | None, str | None]:
        """The sha256 and name another host learned for (provider, file_id), if any
        (the name, so every host publishes the file under the origin's name)."""
        rows = self._select("fleet_ids", "sha256,name",
                            lambda q: q.eq("provider", provider).eq("id_key", key).limit(1))
        return (rows[0]["sha256"], rows[0].get("name")) if rows else (None, None)

    def blob(self, sha: str) -> dict[str, Any] | None:
        rows = self._select("fleet_blobs", "sha256,size,object_path,name",
                            lambda q: q.eq("sha256", sha).limit(1))
        return rows[0] if rows else None

    def record_blob(self, sha: str, size: int, path: str, provider: str, key: str,  # noqa: PLR0913
                    display: str, name: str | None) -> None:
        self._rpc("prefetchd_fleet_record_blob", {
            "sha256": sha, "size": size, "object_path": path, "host": self.host,
            "provider": provider, "id_key": key, "file_id": display, "name": name,
            "group_name": self.group})

    def uncacheable(self, provider: str, key: str) -> dict[str, Any] | None:
        """The group's record that (provider, file) is too big for the cache, if any."""
        rows = self._select("fleet_uncacheable", "sha256,size,reason,recorded_by",
                            lambda q: q.eq("provider", provider).eq("id_key", key).limit(1))
        return rows[0] if rows else None

    def record_uncacheable(self, provider: str, key: str, reason: str, *,  # noqa: PLR0913
                           display: str, sha: str | None, size: int | None) -> bool:
        """Record that (provider, file) is too big for the cache; True when this host was
        the first to (so it says so, once for the group)."""
        return bool(self._rpc("prefetchd_fleet_record_uncacheable", {
            "provider": provider, "id_key": key, "host": self.host, "reason": reason,
            "file_id": display, "sha256": sha, "size": size, "group_name": self.group}))

    def uncacheable_files(self, limit: int = 1000) -> list[dict[str, Any]]:
        """The group's files that are too big for the cache (for `fleet status`)."""
        return self._select("fleet_uncacheable", "file_id,sha256,size,reason,recorded_by,"
                            "recorded_at", lambda q: q.order("recorded_at").limit(limit))

    # -- states and status -------------------------------------------------------------------

    def report(self, states: list[dict[str, Any]], heartbeat: dict[str, Any]) -> int:
        return int(self._rpc("prefetchd_fleet_report", {
            "host": self.host, "states": states, "heartbeat": heartbeat,
            "group_name": self.group}) or 0)

    def hosts(self) -> list[dict[str, Any]]:
        return self._select("fleet_hosts", "host,last_seen,version,ready,queued,failed,bytes",
                            lambda q: q.order("host").limit(10_000))

    def holders(self, file_id: str) -> list[dict[str, Any]]:
        """Which hosts have a file_id, and in which state (by its key: exact, indexed)."""
        return self._select("fleet_states", "host,state,sha256,size,updated_at",
                            lambda q: q.eq("id_key", file_key(file_id)).order("host")
                            .limit(10_000))
