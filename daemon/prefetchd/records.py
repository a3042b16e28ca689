"""Typed records shared by every room: entry states, event kinds, a manifest entry, events.

The lowest room: it imports nothing of prefetchd, so the manifest, the operations and
the fronts can all name the same types without importing each other.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any


class State(StrEnum):
    """Where an entry is: `queued -> downloading -> ready`, or one of the others."""

    QUEUED = "queued"
    DOWNLOADING = "downloading"
    READY = "ready"
    FAILED = "failed"  # permanent, with the error
    RETRYING = "retrying"  # transient, with the next attempt time
    WAITING_SPACE = "waiting_space"
    EVICTED = "evicted"
    QUARANTINED = "quarantined"  # the stored object no longer hashes to its sha256


class EventKind(StrEnum):
    """What an event row records; `download` and `cache_hit` are mirrored to Supabase."""

    DOWNLOAD = "download"
    CACHE_HIT = "cache_hit"
    FAILURE = "failure"
    EVICT = "evict"
    QUARANTINE = "quarantine"
    FORGET = "forget"


class WantSource(StrEnum):
    """Which kind of holder still claims a file a forget or release kept: the fleet's
    (`fleet:<group>`) or a local one (a user or job). `files.local_want` and
    `files.fleet_want` say which kinds want a file; `wanted` is their OR."""

    LOCAL = "local"  # a user or job on this host (CLI, API, inbox, socket, MCP)
    FLEET = "fleet"  # the group's shared wanted-set, applied by the fleet sync


# Why a forget or release from one side left an entry, keyed by the side that wants it.
KEPT_BECAUSE = {WantSource.FLEET: "the fleet still wants it",
                WantSource.LOCAL: "another holder's claim still holds it"}


class Removal(list[str]):
    """What a forget or release returns: the list it always returned (the ids it did
    not find, or the paths it removed), and `kept`: file_id -> the other source that
    still wants the entry, whose row, options and file therefore stayed.

    A list, so that every caller written before the fleet keeps working unchanged."""

    def __init__(self, items: Iterable[str] = (),
                 kept: Mapping[str, WantSource] | None = None) -> None:
        super().__init__(items)
        self.kept: dict[str, WantSource] = dict(kept or {})

    @classmethod
    def of_json(cls, body: Mapping[str, Any]) -> Removal:
        """A forget's or release's answer from the local API (`removed`, `kept`)."""
        return cls(body["removed"], {fid: WantSource(src)
                                     for fid, src in (body.get("kept") or {}).items()})

    def kept_lines(self) -> list[str]:
        """One line per kept entry, as the CLI prints them: `kept ID: the fleet still
        wants it`."""
        return [f"kept {fid}: {KEPT_BECAUSE[src]}" for fid, src in self.kept.items()]


FLEET_PREFIX = "fleet:"
UID_PREFIX = "uid:"
_SUB = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def uid_holder(uid: int, sub: str | None = None) -> str:
    """The holder of a Unix user's claims (`uid:1000`), or of one of its jobs'
    (`uid:1000/job-42`)."""
    return f"{UID_PREFIX}{int(uid)}" + (f"/{sub}" if sub else "")


def fleet_holder(group: str) -> str:
    """The holder of a fleet group's claims (`fleet:<group>`)."""
    return f"{FLEET_PREFIX}{group}"


def holder_uid(holder: str) -> int | None:
    """The uid a holder belongs to (a sub-holder belongs to its user); None for the
    fleet's holders."""
    if not holder.startswith(UID_PREFIX):
        return None
    num = holder[len(UID_PREFIX):].split("/", 1)[0]
    return int(num) if num.isdigit() else None


def is_fleet(holder: str) -> bool:
    return holder.startswith(FLEET_PREFIX)


def check_sub_holder(name: str) -> str:
    """A sub-holder name as `--holder NAME` gives it: a letter or digit, then up to 63
    letters, digits, dots, dashes or underscores. ValueError names what is wrong."""
    if not isinstance(name, str) or not _SUB.fullmatch(name):
        raise ValueError(f"holder {str(name)[:80]!r}: a name of letters, digits, '.', '-'"
                         " or '_' (at most 64), like job-42")
    return name


def parse_holder(given: str, uid: int) -> str:
    """What `--holder` names, asked by `uid`: a bare name is one of the caller's own
    sub-holders (`job-42` -> `uid:1000/job-42`); `uid:N` or `uid:N/NAME` names a
    holder exactly (another user's needs an admin: the caller checks). The fleet's
    holders are never named here: `prefetchd fleet` changes the fleet's claim."""
    if given.startswith(UID_PREFIX):
        rest = given[len(UID_PREFIX):]
        num, _, sub = rest.partition("/")
        if not num.isdigit() or (sub and not _SUB.fullmatch(sub)):
            raise ValueError(f"holder {given[:80]!r}: expected uid:N or uid:N/NAME")
        return uid_holder(int(num), sub or None)
    if given.startswith(FLEET_PREFIX):
        raise ValueError(f"holder {given[:80]!r}: the fleet's claim changes only through"
                         " `prefetchd fleet want|unwant|forget`")
    return uid_holder(uid, check_sub_holder(given))


def holder_label(holder: str) -> str:
    """A holder as messages name it: `uid 1000`, `uid 1000 (job-42)`, `fleet group g`."""
    if is_fleet(holder):
        return f"fleet group {holder[len(FLEET_PREFIX):]}"
    uid = holder_uid(holder)
    sub = holder.split("/", 1)[1] if "/" in holder else None
    return f"uid {uid}" + (f" ({sub})" if sub else "")


@dataclass(frozen=True, slots=True)
class Claim:
    """One requester's interest in one file_id, with that requester's own options.

    The file (its download state, object, learned hash) is shared by every claim on
    it; a claim's `error` says why this claim alone failed (its sha256 or size does
    not match the file), while other claims on the same file stay ready.
    """

    file_id: str
    holder: str
    wanted: bool
    provider: str | None
    sha256: str | None
    size: int | None
    dest: str | None
    pin: bool
    ttl: float | None
    requested_at: float
    created_at: float
    given_at: float | None  # when the sha256 or size was last given
    error: str | None
    updated_at: float

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Claim:
        values: dict[str, Any] = {f: row.get(f) for f in _CLAIM_FIELDS}
        values["wanted"] = bool(values["wanted"])
        values["pin"] = bool(values["pin"])
        return cls(**values)


_CLAIM_FIELDS = tuple(f.name for f in fields(Claim))


class BytesSource(StrEnum):
    """Where the bytes of a ready file came from (`events.source`), and so where a
    download takes them from (`resolve.Source.via`: the origin or the Storage cache)."""

    ORIGIN = "origin"    # the provider (or its fallback) over the network
    STORAGE = "storage"  # the fleet's Storage cache
    LOCAL = "local"      # this host's store (a cache hit: no bytes moved)


@dataclass(frozen=True, slots=True)
class Entry:
    """One row of `files`: what its claims ask together (wanted .. ttl, local_want,
    fleet_want: see manifest.claims) and what is (state .. min_size, note).

    `wanted` is `local_want or fleet_want` (the manifest keeps it so from the claims);
    `requested_by` is no longer written (each claim names its holder).

    Built once by the manifest from a row; never changed in place (the manifest's
    writes return nothing, a caller reads the entry again).
    """

    file_id: str
    wanted: bool
    provider: str | None
    expected_sha256: str | None
    expected_size: int | None
    dest: str | None
    pin: bool
    ttl: float | None
    requested_at: float | None
    state: State
    resolved_provider: str | None
    sha256: str | None
    size: int | None
    name: str | None
    path: str | None
    error: str | None
    attempts: int
    next_attempt_at: float | None
    updated_at: float | None
    ready_at: float | None
    min_size: int | None
    requested_by: int | None  # the uid whose want made the entry wanted (None: unknown)
    local_want: bool = False  # a local user or job wants it
    fleet_want: bool = False  # the group's wanted-set wants it
    note: str | None = None  # why a queued entry waits (a deferral: "waiting for host X")
    error_detail: str | None = None  # `error` as JSON with its code (errors.to_json)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Entry:
        values: dict[str, Any] = {f: row.get(f) for f in _ENTRY_FIELDS}
        values["wanted"] = bool(values["wanted"])
        values["pin"] = bool(values["pin"])
        values["local_want"] = bool(values["local_want"])
        values["fleet_want"] = bool(values["fleet_want"])
        values["attempts"] = values["attempts"] or 0
        values["state"] = State(values["state"])
        return cls(**values)


_ENTRY_FIELDS = tuple(f.name for f in fields(Entry))


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append: what its writer knows. The manifest adds the rest (the row
    id, a unique event_id, the file_id it is about, the time). Every writer builds one
    of these; the manifest refuses anything else (a dict included).

    `destination` is relative to the root, like `files.path` and a claim's `dest`; the
    edges that show it (the download log line's `path`, what `get` returns, the
    Supabase mirror) join it to the root."""

    kind: EventKind
    provider: str | None = None  # the provider's name as events record it (Source.label)
    destination: str | None = None  # relative to the root
    bytes: int | None = None
    duration_ms: int | None = None
    cache_hit: bool = False
    sha256: str | None = None
    error: str | None = None
    source: BytesSource | None = None  # downloads and cache hits: where the bytes came from
    resumed_from: int | None = None  # a download: the bytes a resume found on disk


@dataclass(frozen=True, slots=True)
class Event:
    """One row of `events`: the download history and the outbox that `stats` mirrors.

    Built once by the manifest from a row, like Entry; an event is never changed
    except for `pushed_at`, which the mirror sets (and a later read shows).
    `destination` is relative to the root (see NewEvent); only a row written before
    manifest v10 under a root that v10 could not tell may still hold an absolute one.
    """

    id: int
    event_id: str
    kind: EventKind
    file_id: str
    provider: str | None
    destination: str | None  # relative to the root
    bytes: int | None
    duration_ms: int | None
    cache_hit: bool
    sha256: str | None
    error: str | None
    at: float
    pushed_at: float | None
    source: BytesSource | None = None  # where the bytes came from, when known
    resumed_from: int | None = None  # a download: the bytes a resume found on disk

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Event:
        values: dict[str, Any] = {f: row.get(f) for f in _EVENT_FIELDS}
        values["kind"] = EventKind(values["kind"])
        values["cache_hit"] = bool(values["cache_hit"])
        values["source"] = BytesSource(values["source"]) if values["source"] else None
        return cls(**values)


_EVENT_FIELDS = tuple(f.name for f in fields(Event))
