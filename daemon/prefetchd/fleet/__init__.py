"""The fleet: many hosts, one wanted-set per group, one origin download per file,
through Supabase (PostgreSQL + Storage). See config/supabase/002_fleet.sql.

remote (the tables and functions), tier (where a download's bytes come from),
upload (the resumable Storage upload), sync (wanted-set in, states out), admin
(`prefetchd fleet ...`).
"""

from __future__ import annotations

from .remote import Remote, id_key
from .sync import Sync
from .tier import Tier

__all__ = ["Remote", "Sync", "Tier", "id_key"]
