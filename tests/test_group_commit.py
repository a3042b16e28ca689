"""Group commit: a download hands its sealed file to the committer and its worker slot
to the next download at once; each group is what arrived during the previous flush;
one syncfs per group; nothing is recorded ready before its group is durable.

Real parts throughout (the `dir` provider, the store on the test's filesystem, SQLite);
the one seam is a wrapper around the store's syncfs call, which still calls it, and
which holds the first flush until the other downloads have arrived (a slow flush)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import prefetchd.store as store_mod
from prefetchd.fetch import Engine
from prefetchd.manifest import WantSpec
from prefetchd.records import State

N = 30


class Flushes:
    """Counts syncfs calls and remembers which of `dests` existed when each began (so
    were durable once it returned); the first call waits until `hold()` says go."""

    def __init__(self, root: Path, dests: list[str]) -> None:
        self.root, self.dests = root, dests
        self.calls = 0
        self.durable: set[str] = set()
        self.release = threading.Event()
        self.first_started = threading.Event()
        self.real = store_mod._call_syncfs

    def __call__(self, fd: int) -> None:
        present = {d for d in self.dests if os.path.lexists(self.root / d)}
        self.calls += 1
        if self.calls == 1:
            self.first_started.set()
            self.release.wait(30)
        self.real(fd)
        self.durable |= present


def _engine_run(p: Any, ids: list[str], flushes: Flushes, arrived: int,
                rows: dict[str, Any] | None = None,
                ) -> tuple[Engine, list[Any], list[int], list[str]]:
    """Fetch `ids`; the first flush is held until `arrived` files wait for the next one.
    Returns the engine, the outcomes, the queue lengths seen and the record violations."""
    violations: list[str] = []
    real_record_many = p.manifest.record_many

    def record_many(changes: Any, now: float | None = None) -> None:
        for fid, _event, fields in changes:
            if fields.get("state") == State.READY and fields["path"] not in flushes.durable:
                violations.append(f"{fid} recorded ready before a flush made {fields['path']}"
                                  " durable")
        real_record_many(changes, now)

    p.manifest.record_many = record_many
    seen: list[int] = []

    async def go() -> tuple[Engine, list[Any]]:
        eng = Engine(p.settings, p.manifest, p.store)

        async def let_go() -> None:
            await asyncio.to_thread(flushes.first_started.wait, 30)
            deadline = time.monotonic() + 30
            while len(eng.commits._queue) < arrived and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            seen.append(len(eng.commits._queue))
            flushes.release.set()

        try:
            releaser = asyncio.ensure_future(let_go())
            outs = await asyncio.gather(*(eng.fetch(f, (rows or {}).get(f)) for f in ids))
            await releaser
            return eng, outs
        finally:
            await eng.aclose()

    eng, outs = asyncio.run(go())
    return eng, outs, seen, violations


def test_files_arriving_during_one_flush_make_one_group(env, monkeypatch):
    """Two download slots, 30 files: while the first flush runs, the slots keep
    downloading, so the other 29 files wait sealed in the committer's queue, and the
    next round takes them as one group. Three syncfs in all: the first group's bytes,
    the second's bytes (and the first's links), the second's links."""
    env.write_config(download="concurrency = 2\nper_provider_concurrency = 2")
    ids = [f"g{i:02d}" for i in range(N)]
    data = {f: os.urandom(1000 + i) for i, f in enumerate(ids)}
    for f, b in data.items():
        (env.src / f).write_bytes(b)
    dests = [f"grp/{f}.bin" for f in ids]
    flushes = Flushes(env.root, dests)
    monkeypatch.setattr(store_mod, "_call_syncfs", flushes)
    with env.prefetch() as p:
        assert p.store.batches, "this test needs syncfs (Linux)"
        p.manifest.want([WantSpec(f, provider="local", dest=d)
                         for f, d in zip(ids, dests, strict=True)])
        eng, outs, seen, violations = _engine_run(p, ids, flushes, arrived=N - 2)
        # More files waited for the flush than there are download slots: the workers
        # handed their files over and went on.
        assert seen[0] >= N - 2 > 2
        sizes = eng.commits.sizes
        assert sum(sizes) == N and len(sizes) == 2 and sizes[1] >= N - 2, sizes
        assert eng.commits.groups == 2
        assert flushes.calls == eng.commits.groups + 1
        assert violations == []
        rows = p.manifest.rows_for(ids)
        assert {r.state for r in rows.values()} == {State.READY}
    for out, f, d in zip(outs, ids, dests, strict=True):
        assert out.path == env.root / d and out.path.read_bytes() == data[f]
    assert os.listdir(env.root / ".prefetchd" / "tmp") == []


def test_one_syncfs_per_group_without_holding_a_flush(env, monkeypatch):
    """Unheld, with 8 slots: whatever the grouping, every syncfs either links a group
    or closes one (makes the last group durable; on a busy machine the queue may be
    empty as a round begins, so there can be several), fewer than one per file, and
    every file was durable before it was recorded ready."""
    env.write_config(download="concurrency = 8\nper_provider_concurrency = 8")
    ids = [f"u{i:03d}" for i in range(120)]
    for f in ids:
        (env.src / f).write_bytes(os.urandom(2048))
    dests = [f"downloads/{f}/{f}" for f in ids]
    flushes = Flushes(env.root, dests)
    flushes.release.set()
    monkeypatch.setattr(store_mod, "_call_syncfs", flushes)
    with env.prefetch() as p:
        p.manifest.want([WantSpec(f, provider="local") for f in ids])
        eng, outs, _seen, violations = _engine_run(p, ids, flushes, arrived=0)
        assert violations == []
        assert sum(eng.commits.sizes) == len(ids)
        c = eng.commits
        assert flushes.calls == c.groups + c.closings < len(ids)
        assert 1 <= c.closings <= c.groups
    assert [o.path for o in outs] == [env.root / d for d in dests]


class Statements:
    """The SQL a connection runs (its trace callback), by kind."""

    def __init__(self) -> None:
        self.all: list[str] = []

    def __call__(self, sql: str) -> None:
        self.all.append(" ".join(sql.split()))

    def begins(self) -> int:
        return sum(s.startswith("BEGIN") for s in self.all)

    def others(self) -> list[str]:
        return [s for s in self.all if not s.startswith(("BEGIN", "COMMIT", "ROLLBACK"))]


def test_a_group_is_recorded_in_one_transaction_of_a_few_statements(env, monkeypatch):
    """30 files in two groups (the first flush held, as above): each group is recorded
    ready in one transaction whose statements do not grow with the group (the rows,
    the events, the claims checked: one each), and the group's links are checked with
    one read. No statement is run once per file (with the rows given to the engine,
    as `get` gives them: one read for all)."""
    env.write_config(download="concurrency = 2\nper_provider_concurrency = 2")
    ids = [f"t{i:02d}" for i in range(N)]
    for f in ids:
        (env.src / f).write_bytes(os.urandom(1500))
    dests = [f"downloads/{f}/{f}" for f in ids]
    flushes = Flushes(env.root, dests)
    monkeypatch.setattr(store_mod, "_call_syncfs", flushes)
    with env.prefetch() as p:
        p.manifest.want([WantSpec(f, provider="local") for f in ids])
        rows = p.manifest.rows_for(ids)
        sql = Statements()
        p.manifest.conn.set_trace_callback(sql)
        eng, _outs, _seen, violations = _engine_run(p, ids, flushes, arrived=N - 2, rows=rows)
        p.manifest.conn.set_trace_callback(None)
        assert violations == []
        assert eng.commits.groups == 2
        assert sql.begins() == eng.commits.groups  # one transaction records a group
        others = sql.others()
        # per group: the rows, the events, the claims to check; the claims' places
        assert len(others) <= 4 * eng.commits.groups < N, others
        assert {e.state for e in p.manifest.rows_for(ids).values()} == {State.READY}
        events = p.manifest.conn.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM events WHERE kind = 'download'"
            " AND file_id LIKE 't%'").fetchone()
        assert tuple(events) == (N, N)  # one event a download, each its own id


def test_a_second_claim_still_gets_its_link(env, monkeypatch):
    """The group commit skips links.sync only when the claims name no other place: a
    file two holders want at two dests is linked at both, and recorded at the first."""
    data = os.urandom(5000)
    (env.src / "two").write_bytes(data)
    (env.src / "one").write_bytes(data[::-1])
    with env.prefetch() as p:
        p.manifest.want([WantSpec("two", provider="local", dest="a/two.bin", holder="uid:0/x"),
                         WantSpec("two", provider="local", dest="b/two.bin", holder="uid:0/y"),
                         WantSpec("one", provider="local", dest="c/one.bin")])
        called: list[str] = []
        import prefetchd.fetch.ledger as ledger
        real_sync = ledger.sync

        def sync(manifest: Any, store: Any, file_id: str, **kw: Any) -> list[str]:
            called.append(file_id)
            return real_sync(manifest, store, file_id, **kw)

        monkeypatch.setattr(ledger, "sync", sync)

        async def go() -> None:
            eng = Engine(p.settings, p.manifest, p.store)
            try:
                await asyncio.gather(eng.fetch("two"), eng.fetch("one"))
            finally:
                await eng.aclose()

        asyncio.run(go())
        assert p.manifest.get("two").path == "a/two.bin"
    assert (env.root / "a/two.bin").read_bytes() == data
    assert (env.root / "b/two.bin").read_bytes() == data
    assert os.path.samefile(env.root / "a/two.bin", env.root / "b/two.bin")
    assert called == ["two"]  # "one" has one claim: its links were complete


@pytest.mark.parametrize("slots", [1])
def test_a_failed_publish_takes_its_slots_back_before_retrying(env, slots):
    """A dest the store refuses fails that file only; the slots it handed over are
    taken back and given back once (a second download still runs on the one slot)."""
    env.write_config(download=f"concurrency = {slots}\nper_provider_concurrency = {slots}")
    (env.src / "bad").write_bytes(b"x" * 100)
    (env.src / "good").write_bytes(b"y" * 100)
    (env.root / "taken").mkdir(parents=True)
    (env.root / "taken" / "bad.bin").write_bytes(b"somebody else's")
    with env.prefetch() as p:
        p.manifest.want([WantSpec("bad", provider="local", dest="taken/bad.bin"),
                         WantSpec("good", provider="local", dest="ok/good.bin")])

        async def go() -> tuple[list[Any], int, int]:
            eng = Engine(p.settings, p.manifest, p.store)
            try:
                res = await asyncio.gather(eng.fetch("bad"), eng.fetch("good"),
                                           return_exceptions=True)
                return (list(res), eng.global_limit._value,
                        eng.semaphore("local")._value)
            finally:
                await eng.aclose()

        res, free_global, free_local = asyncio.run(go())
        assert isinstance(res[0], Exception) and "taken/bad.bin" in str(res[0])
        assert res[1].path == env.root / "ok/good.bin"
        assert (free_global, free_local) == (slots, slots)
        assert p.manifest.get("bad").state == State.FAILED


def test_small_bodies_are_held_on_the_loop_and_written_by_the_committer(env, monkeypatch):
    """A body that arrived whole and is at most INLINE_SEAL_MAX is hashed and verified
    on the event loop's thread and held in memory: its temp is written by the group
    commit's thread, right before the flush that makes it durable (the loop makes no
    system call for it). A larger one is sealed on a worker. Both go through the group
    commit (one syncfs, then linked)."""
    from prefetchd.fetch import download as download_mod
    from prefetchd.store.temps import Partial

    small, large = os.urandom(3000), os.urandom(download_mod.INLINE_SEAL_MAX + 1)
    (env.src / "small").write_bytes(small)
    (env.src / "large").write_bytes(large)
    threads: dict[str, int] = {}
    real_seal, real_held = download_mod.Download.seal, download_mod.Download.seal_held
    real_write_held = Partial.write_held

    def seal(self: Any, *a: Any) -> str:
        threads[f"seal {self.file_id}"] = threading.get_ident()
        return real_seal(self, *a)

    def seal_held(self: Any, *a: Any) -> str:
        threads[f"held {self.file_id}"] = threading.get_ident()
        return real_held(self, *a)

    def write_held(self: Any) -> None:
        threads[f"written {self.name}"] = threading.get_ident()
        real_write_held(self)

    monkeypatch.setattr(download_mod.Download, "seal", seal)
    monkeypatch.setattr(download_mod.Download, "seal_held", seal_held)
    monkeypatch.setattr(Partial, "write_held", write_held)
    with env.prefetch() as p:
        p.manifest.want([WantSpec("small", provider="local"),
                         WantSpec("large", provider="local")])

        async def go() -> tuple[int, int]:
            eng = Engine(p.settings, p.manifest, p.store)
            try:
                await asyncio.gather(eng.fetch("small"), eng.fetch("large"))
                return threading.get_ident(), sum(eng.commits.sizes)
            finally:
                await eng.aclose()

        loop_thread, committed = asyncio.run(go())
        assert committed == 2  # both published by the group commit
    assert threads.pop("held small") == loop_thread
    assert threads.pop("seal large") != loop_thread
    (written,) = threads.values()  # only the small body was held, then written
    assert written != loop_thread
    assert (env.root / "downloads/small/small").read_bytes() == small
    assert (env.root / "downloads/large/large").read_bytes() == large
    assert os.stat(env.root / "downloads/small/small").st_mode & 0o777 == 0o444
    assert os.listdir(env.root / ".prefetchd" / "tmp") == []


def test_a_group_links_each_dest_to_the_one_object(env):
    """sync_then_link links a free dest straight from the temp that became the object;
    when the same bytes are stored already (here: earlier in the same group), the dest
    links that object, not the dropped temp; a dest holding an older link of ours is
    replaced. Each dest ends a hard link of its object, and tmp/ is empty."""
    from prefetchd.store import key_of

    with env.prefetch() as p:
        store = p.store

        def sealed(file_id: str, data: bytes) -> tuple[Any, str]:
            part = store.new_partial(key_of(file_id))
            part.write(data)
            return part, part.finish(sync=False)

        same, old, new = os.urandom(4096), os.urandom(4096), os.urandom(4096)
        (a, sha), (b, sha_b), (c, old_sha) = (sealed("a", same), sealed("b", same),
                                              sealed("c", old))
        assert sha == sha_b
        assert store.sync_then_link([(a, sha, "x/a.bin"), (b, sha, "y/b.bin"),
                                     (c, old_sha, "z/c.bin")]) == [None, None, None]
        obj = store.object_path(sha)
        assert os.path.samefile(env.root / "x/a.bin", obj)
        assert os.path.samefile(env.root / "y/b.bin", obj)
        assert os.stat(obj).st_nlink == 3  # the object and its two dests
        d, new_sha = sealed("c", new)
        assert store.sync_then_link([(d, new_sha, "z/c.bin")]) == [None]
        assert (env.root / "z/c.bin").read_bytes() == new
        assert os.path.samefile(env.root / "z/c.bin", store.object_path(new_sha))
        assert os.stat(store.object_path(old_sha)).st_nlink == 1  # no dest links it now
        assert sorted(store.take_made_dirs()) == ["x", "y", "z"]
    assert os.listdir(env.root / ".prefetchd" / "tmp") == []


def test_bodies_held_in_memory_stay_under_a_cap(env, monkeypatch):
    """While the committer is behind (its first flush held here), small bodies wait in
    memory only up to HOLD_MAX bytes; the next ones are written to their temps on the
    loop instead (seal), and every file is published the same way. Nothing stays
    counted as held at the end."""
    from prefetchd.fetch import commit as commit_mod
    from prefetchd.fetch import download as download_mod

    monkeypatch.setattr(commit_mod, "HOLD_MAX", 7000)
    env.write_config(download="concurrency = 4\nper_provider_concurrency = 4")
    ids = [f"h{i:02d}" for i in range(10)]
    data = {f: os.urandom(3000) for f in ids}
    for f, b in data.items():
        (env.src / f).write_bytes(b)
    how: dict[str, str] = {}
    real_held, real_seal = download_mod.Download.seal_held, download_mod.Download.seal

    def seal_held(self: Any, *a: Any) -> str:
        how[self.file_id] = "memory"
        return real_held(self, *a)

    def seal(self: Any, *a: Any) -> str:
        how[self.file_id] = "disk"
        return real_seal(self, *a)

    monkeypatch.setattr(download_mod.Download, "seal_held", seal_held)
    monkeypatch.setattr(download_mod.Download, "seal", seal)
    dests = [f"downloads/{f}/{f}" for f in ids]
    flushes = Flushes(env.root, dests)
    monkeypatch.setattr(store_mod, "_call_syncfs", flushes)
    with env.prefetch() as p:
        p.manifest.want([WantSpec(f, provider="local") for f in ids])
        # up to 4 files (the slots) make the first group; the others queue behind it
        eng, outs, _seen, violations = _engine_run(p, ids, flushes, arrived=len(ids) - 4)
        assert violations == []
        assert eng.commits.held_bytes == 0
    # 7000 bytes hold two bodies of 3000: the others waited on disk
    assert list(how.values()).count("memory") <= 3 and "disk" in how.values()
    for out, f in zip(outs, ids, strict=True):
        assert out.path.read_bytes() == data[f]
    assert os.listdir(env.root / ".prefetchd" / "tmp") == []


def test_a_run_of_rounds_survives_its_directories_going_away(env, monkeypatch):
    """The committer keeps objects/<ab>/ and downloads/ open for its run of rounds; when
    one goes away meanwhile (removed by hand), the round opens them again and still
    publishes and links (bodies held in memory, written by the round)."""
    import shutil

    from prefetchd.store import OpenDirs, key_of

    resets: list[int] = []
    real_reset = OpenDirs.reset
    monkeypatch.setattr(OpenDirs, "reset", lambda self: resets.append(1) or real_reset(self))
    with env.prefetch() as p:
        store = p.store
        dirs = store.link_dirs()

        def held(file_id: str, data: bytes) -> tuple[Any, str]:
            part = store.new_partial(key_of(file_id))
            return part, part.hold(data)

        def one(file_id: str, data: bytes, prefix: str | None = None) -> tuple[str, bytes]:
            """Publish a body (one whose object goes in objects/<prefix>/, if given)."""
            n = 0
            while True:
                body = data + str(n).encode()
                part, sha = held(file_id, body)
                if prefix is None or sha[:2] == prefix:
                    break
                part.discard()
                n += 1
            assert store.sync_then_link([(part, sha, f"downloads/{file_id}/{file_id}")],
                                        dirs) == [None]
            return sha, body

        one("a", b"first")
        shutil.rmtree(env.root / "downloads")
        one("b", b"second")
        assert len(resets) == 1  # downloads/ went: opened again
        sha_c, _ = one("c", b"third")
        shutil.rmtree(env.root / ".prefetchd/objects/sha256" / sha_c[:2])
        sha_d, body_d = one("d", b"fourth", prefix=sha_c[:2])
        assert len(resets) == 2  # objects/<ab>/ went: opened again
        dirs.close()
        for f in ("b", "d"):
            assert (env.root / f"downloads/{f}/{f}").exists()
        assert (env.root / "downloads/d/d").read_bytes() == body_d
        assert os.path.samefile(env.root / "downloads/d/d", store.object_path(sha_d))
    assert os.listdir(env.root / ".prefetchd" / "tmp") == []
