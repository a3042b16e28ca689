"""Cache hits: a file made ready without the network, because its bytes are stored.

Either the entry is ready and its link intact, or an object with the expected
sha256 (or the entry's last one) is already in the store, perhaps under another
file_id: it is linked at the entry's destination.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from ..manifest import Manifest
from ..records import Entry, State
from ..resolve import Source
from ..store import Store, id_component, key_of, safe_name
from .ledger import Ledger, Outcome, Placed


def destination(row: Entry, name: str | None) -> str:
    """Where an entry's file goes: its `dest`, else downloads/<id>/<name>."""
    if row.dest:
        return row.dest
    comp = id_component(row.file_id)
    return f"downloads/{comp}/{safe_name(name, comp)}"


async def cache_hit(row: Entry, src: Source, *, store: Store, manifest: Manifest,
                    ledger: Ledger) -> Outcome | None:
    """Ready and intact, or the same bytes already stored under another file_id
    (recorded through `ledger`)."""
    expected = src.expected
    sha = row.sha256 if row.state == State.READY else None
    if (sha and (expected is None or expected == sha) and row.path
            and (row.dest is None or row.dest == row.path)
            and await asyncio.to_thread(store.linked, sha, row.path)):
        return ledger.cache_hit(row, src.label, Placed(sha, row.size or 0, row.name, row.path),
                                started=time.monotonic(), record_state=False)
    target = expected or sha
    st = await asyncio.to_thread(store.object_stat, target) if target else None
    if not target or st is None:
        return None
    name = (row.name or src.name
            or await asyncio.to_thread(_earlier_name, store, manifest, row, target)
            or row.file_id.rsplit("/", 1)[-1])
    rel = destination(row, name)
    await asyncio.to_thread(store.link, target, rel)
    return ledger.cache_hit(row, src.label, Placed(target, st.st_size, name, rel),
                            started=time.monotonic())


def _earlier_name(store: Store, manifest: Manifest, row: Entry, sha: str) -> str | None:
    """The name a download of these bytes would give them, without the network:
    the provider's name saved beside a partial of this file_id, else this
    file_id's last download of them (events outlive a forgotten row), else any
    entry's name for the same bytes. For Kimi that is `<original>.extracted.txt`."""
    file_id = row.file_id
    meta = store.partial_meta(key_of(file_id))
    if meta.get("file_id") == file_id and meta.get("name"):
        return str(meta["name"])
    dest = manifest.download_destination(file_id, sha)
    if dest is not None:
        p = Path(dest)
        if p.parent == Path("downloads", id_component(file_id)):  # relative to the root
            return p.name
    return manifest.known_name(file_id, sha)
