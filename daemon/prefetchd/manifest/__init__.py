"""The SQLite manifest: schema, migrations, and every query (wanted, file states, events).

One row per file_id in `files` holds what is (state, stored hash, path, error) and
what its claims ask together; `claims` holds each requester's own claim on a file
(holder, provider, expected hash and size, dest, pin, ttl, its own error). `events`
is the download history and the outbox that `stats` mirrors. Writes use
`BEGIN IMMEDIATE` so that concurrent processes queue on `busy_timeout` instead of
failing with "database is locked" on a read-to-write upgrade.

The parts: `schema` (migrations, opening), `base` (the connection and its
transaction), `wanted` (claims made and dropped), `claims` (claims read, and what
they make of their file), `entries` (what is), `events` (the history and the
outbox). `Manifest` is all of them over one connection.
"""

from __future__ import annotations

from ..records import State
from .claims import Claims
from .entries import Entries
from .events import MIRRORED_KINDS, Events
from .schema import BUSY_TIMEOUT_MS, MIGRATIONS, NoStateError
from .wanted import Wanted, WantSpec, own_holder

STATES = tuple(State)

__all__ = ["BUSY_TIMEOUT_MS", "MIGRATIONS", "MIRRORED_KINDS", "STATES", "Manifest",
           "NoStateError", "WantSpec", "own_holder"]


class Manifest(Wanted, Claims, Entries, Events):
    """A connection to prefetchd.db; one per process (or per thread that needs one)."""
