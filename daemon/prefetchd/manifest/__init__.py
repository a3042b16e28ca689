"""The SQLite manifest: schema, migrations, and every query (wanted, file states, events).

One row per file_id in `files` holds both what was asked (wanted, provider, expected
hash and size, dest, pin, ttl) and what is (state, stored hash, path, error). `events`
is the download history and the outbox that `stats` mirrors. Writes use
`BEGIN IMMEDIATE` so that concurrent processes queue on `busy_timeout` instead of
failing with "database is locked" on a read-to-write upgrade.

The parts: `schema` (migrations, opening), `base` (the connection and its
transaction), `wanted` (what was asked), `entries` (what is), `events` (the history
and the outbox). `Manifest` is all of them over one connection.
"""

from __future__ import annotations

from ..records import State
from .entries import Entries
from .events import MIRRORED_KINDS, Events
from .schema import BUSY_TIMEOUT_MS, MIGRATIONS, NoStateError
from .wanted import Wanted, WantSpec

STATES = tuple(State)

__all__ = ["BUSY_TIMEOUT_MS", "MIGRATIONS", "MIRRORED_KINDS", "STATES", "Manifest",
           "NoStateError", "WantSpec"]


class Manifest(Wanted, Entries, Events):
    """A connection to prefetchd.db; one per process (or per thread that needs one)."""
