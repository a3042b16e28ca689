"""The group's wanted-set and its status, for `prefetchd fleet ...` and Python.

These talk to Supabase directly (no daemon needed): a want is a row in the group's
table that every host of the group applies on its next poll. Writing needs a key
that may write the wanted-set (the service key, or any role an administrator gave
the right to); a `prefetchd_host` key only reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from ..config import Settings
from ..errors import UsageError
from ..redact import display_id
from ..requests import MAX_FILE_ID, Options, check_count, spec
from .remote import Remote

ACTIONS = ("want", "unwant", "forget")


def change(settings: Settings, action: str, file_ids: Sequence[str], *,
           group: str | None = None, options: Options | None = None) -> int:
    """Want, unwant or forget file_ids in the group's wanted-set, all in one call (one
    transaction); returns the revision written. Checked like a local request
    (requests.spec), except the provider, which only the hosts need to know."""
    opts = options or Options()
    if action not in ACTIONS:
        raise UsageError(f"fleet: {action!r} is not one of {', '.join(ACTIONS)}")
    check_count(file_ids, opts if action == "want" else Options())
    if action != "want" and opts.any_given():
        raise UsageError(f"fleet {action} takes only file_ids (and --group)")
    entries: list[dict[str, Any]] = []
    for fid in dict.fromkeys(file_ids):
        s = spec(None, fid, opts)
        e: dict[str, Any] = {"file_id": fid, "action": action}
        if action == "want":
            e.update(provider=s.provider, sha256=s.sha256, size=s.size, dest=s.dest,
                     pin=s.pin, ttl=f"{s.ttl}s" if s.ttl is not None else None)
            e = {k: v for k, v in e.items() if v is not None and v is not False}
        entries.append(e)
    return Remote(settings, group).want(entries)


def status(settings: Settings, *, group: str | None = None,
           file_id: str | None = None) -> dict[str, Any]:
    """The group's hosts (last seen, counts, bytes), the files too big for the Storage
    cache (each fetched from the origin by every host) and, for a file_id, which hosts
    have it in which state."""
    remote = Remote(settings, group)
    now = datetime.now(UTC)
    hosts = [{**h, "seen_ago_s": _age(h.get("last_seen"), now)} for h in remote.hosts()]
    out: dict[str, Any] = {"group": remote.group, "hosts": hosts,
                           "uncacheable": remote.uncacheable_files()}
    if file_id is not None:
        if len(file_id) > MAX_FILE_ID:
            raise UsageError("file_id is too long")
        out["file"] = {"file_id": display_id(file_id), "hosts": remote.holders(file_id)}
    return out


def _age(ts: str | None, now: datetime) -> float | None:
    if not ts:
        return None
    return round((now - datetime.fromisoformat(ts)).total_seconds(), 1)
