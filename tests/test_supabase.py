"""Supabase: the SQL on real PostgreSQL, resolution and fallback through supabase-py,
Storage downloads with resume, and the stats mirror across an outage."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import inspect
import json
import os
import uuid
from pathlib import Path

import pytest

from prefetchd.errors import PermanentError, PrefetchError
from prefetchd.fetch import Engine
from prefetchd.records import EventKind, NewEvent
from tests import supa_env
from tests.conftest import REPO, SleepRecorder, fetch, sha
from tests.daemon_helpers import DaemonProc, wait_until
from tests.supa_env import ANON_KEY, BUCKET, SERVICE_KEY, migrate
from tests.support.rows import event_rows

psycopg = pytest.importorskip("psycopg")
# The fixtures live in tests/supa_env.py (a plugin, see conftest.py); test_secrets.py
# still imports them from here.
db, pg_admin, schema, supa = supa_env.db, supa_env.pg_admin, supa_env.schema, supa_env.supa
SQL = REPO / "config" / "supabase" / "001_prefetchd.sql"


def events(n, provider="files", file_id="f", start=0):
    return [{"event_id": str(uuid.UUID(int=start + i + 1)), "host": "h", "provider": provider,
             "file_id": file_id, "destination": "/x", "bytes": 10, "duration_ms": 5,
             "cache_hit": False, "sha256": "0" * 64,
             "downloaded_at": f"2026-01-0{1 + (start + i) % 9}T00:00:00Z"} for i in range(n)]


# -- the SQL ---------------------------------------------------------------------------------


def test_migration_extends_an_existing_table(pg_admin, schema):
    pg_admin.execute(f"""CREATE TABLE {schema}.provider_file_uploads (
        id bigserial primary key, provider text not null, provider_file_id text not null,
        sha256 text, filename text, file_size_bytes bigint, supabase_file_id text,
        unique (provider, provider_file_id))""")
    pg_admin.execute(f"INSERT INTO {schema}.provider_file_uploads (provider, provider_file_id)"
                     " VALUES ('kimi', 'old')")
    migrate(pg_admin, schema, (SQL,))
    migrate(pg_admin, schema, (SQL,))
    row = pg_admin.execute(f"SELECT provider_file_id, download_count, last_downloaded_at FROM "
                           f"{schema}.provider_file_uploads").fetchall()
    assert row == [("old", 0, None)]
    rls = pg_admin.execute(
        "SELECT relname, relrowsecurity FROM pg_class c JOIN pg_namespace n ON n.oid ="
        " c.relnamespace WHERE nspname = %s AND relkind = 'r' ORDER BY relname", [schema]
    ).fetchall()
    assert rls == [("file_download_history", True), ("provider_file_uploads", True)]


def test_record_downloads_is_idempotent(supa):
    supa.upload("files", "f", b"data")
    def run(evs):  # as the service role, like the daemon
        return supa.srv.run_sql("service_role", "SELECT prefetchd_record_downloads(%s::jsonb)",
                                [json.dumps(evs)])[0][0]

    batch = events(3) + events(2, file_id="no-upload-row", start=10)
    assert run(batch) == 5
    assert run(batch) == 0
    assert run(batch[:2] + events(1, start=20)) == 1  # overlapping batch: only the new one
    assert run(events(1, start=30) * 2) == 1  # the same event twice in one batch
    count, last = supa.one("SELECT download_count, last_downloaded_at FROM "
                           "{s}.provider_file_uploads WHERE provider_file_id = 'f'")
    assert count == 5
    assert last.isoformat().startswith("2026-01-04")  # the latest downloaded_at seen
    assert supa.one("SELECT count(*) FROM {s}.file_download_history")[0] == 7
    assert supa.one("SELECT count(*) FROM {s}.file_download_history WHERE file_id ="
                    " 'no-upload-row'")[0] == 2


def test_rpc_for_service_role_only(supa):
    from supabase import ClientOptions, create_client

    opts = ClientOptions(schema=supa.schema, postgrest_client_retry=False)
    svc = create_client(supa.srv.url, SERVICE_KEY, options=opts)
    assert svc.rpc("prefetchd_record_downloads", {"events": events(2)}).execute().data == 2
    anon = create_client(supa.srv.url, ANON_KEY, options=opts)
    with pytest.raises(Exception, match="permission denied"):
        anon.rpc("prefetchd_record_downloads", {"events": events(1, start=50)}).execute()
    with pytest.raises(Exception, match="permission denied"):
        anon.table("provider_file_uploads").select("*").execute()
    with pytest.raises(Exception, match="must be a JSON array"):
        svc.rpc("prefetchd_record_downloads", {"events": {"not": "a list"}}).execute()


# -- resolution and fallback -----------------------------------------------------------------


def test_lookup_resolves_provider_and_expected_hash(env, server, supa):
    good = os.urandom(5000)
    server.add("up-1", good, "one.pdf")
    supa.upload("files", "up-1", good, filename="one.pdf")
    server.add("up-2", b"tampered", "two.bin")
    supa.upload("files", "up-2", sha256=sha(b"what was uploaded"))
    kimi_id = "k0000000000000000001"
    server.add(kimi_id, b"extracted text", "q3.pdf")
    supa.upload("kimi", kimi_id, sha256=sha(b"the original pdf"))
    with env.prefetch() as p:
        out = fetch(p, "up-1")
        assert out.provider == "files" and out.path.read_bytes() == good
        # The upload's hash is checked where the provider returns original bytes...
        with pytest.raises(PermanentError, match="does not match"):
            fetch(p, "up-2", sleep=SleepRecorder())
        # ...and never against Moonshot's extracted content.
        out = fetch(p, kimi_id)
        assert out.path.read_bytes() == b"extracted text"
        assert out.path.name == "q3.pdf.extracted.txt"


def test_lookup_is_cached_briefly(env, server, supa):
    server.add("up-c", b"c")
    supa.upload("files", "up-c", b"c")
    with env.prefetch() as p:
        p.want(["up-c"])

        async def twice():
            eng = Engine(p.settings, p.manifest, p.store)
            try:
                await eng.fetch("up-c")
                p.release(["up-c"])
                p.want(["up-c"])
                return await eng.fetch("up-c")
            finally:
                await eng.aclose()

        assert asyncio.run(twice()).cache_hit is False
    lookups = [r for r in supa.srv.requests if "provider_file_uploads" in r["path"]]
    assert len(lookups) == 1


def test_glm_row_falls_back_to_storage(env, supa):
    data = os.urandom(20_000)
    supa.upload("glm", "glm-file-9", data, filename="report.docx", storage="u/42/report.docx")
    supa.put_object("u/42/report.docx", data)
    with env.prefetch() as p:
        out = fetch(p, "glm-file-9")
        assert out.path.read_bytes() == data
        assert out.path.name == "report.docx"
        assert out.provider == "glm"  # events count against the upload row
        kinds = [(e.kind, e.provider) for e in event_rows(p.manifest, "glm-file-9")]
        assert kinds[-1] == ("download", "glm")


def test_permanent_failure_falls_back_and_verifies(env, server, supa):
    data = os.urandom(30_000)
    supa.upload("files", "gone-1", data, storage="gone-1.bin")
    supa.put_object("gone-1.bin", data)
    supa.upload("files", "gone-2", sha256=sha(b"other bytes"), storage="gone-2.bin")
    supa.put_object("gone-2.bin", data)
    with env.prefetch() as p:
        assert fetch(p, "gone-1").path.read_bytes() == data  # 404 at the files API
        with pytest.raises(PermanentError, match="does not match"):
            fetch(p, "gone-2", sleep=SleepRecorder())
    # An explicit provider still falls back when the upload table has a copy.
    with env.prefetch() as p:
        p.release(["gone-1"])
        assert fetch(p, "gone-1", provider="files").path.read_bytes() == data


def test_no_upload_row_means_plain_failure(env, supa):
    with env.prefetch() as p:
        with pytest.raises(PrefetchError, match="404"):
            fetch(p, "nowhere-1")


def test_storage_download_resumes_after_cut(env, supa):
    data = os.urandom(3 * 1024 * 1024)
    supa.put_object("big/blob.bin", data)
    supa.srv.storage_faults[f"{BUCKET}/big/blob.bin"] = __import__("collections").deque(
        [{"cut_after": 1_200_000}])
    with env.prefetch() as p:
        out = fetch(p, f"{BUCKET}/big/blob.bin", sleep=SleepRecorder())
        assert out.provider == "supabase"
        assert hashlib.sha256(out.path.read_bytes()).hexdigest() == sha(data)
    gets = [r for r in supa.srv.requests if "/storage/v1/object/authenticated/" in r["path"]]
    assert len(gets) == 2
    assert gets[1]["headers"]["range"] == "bytes=1200000-"
    assert gets[1]["headers"]["apikey"] == SERVICE_KEY


def test_storage_streams_with_flat_memory_path(env, supa):
    """The provider never calls storage3's download(): it streams through httpx."""
    from prefetchd.providers.supabase import SupabaseStorageProvider

    assert "download" not in SupabaseStorageProvider.__dict__
    assert not any("storage3" in line for line in
                   Path(inspect.getfile(SupabaseStorageProvider))
                   .read_text().splitlines() if line.startswith(("import", "from")))


# -- the stats mirror --------------------------------------------------------------------------


def test_outage_loses_nothing_and_counts_once(env, supa):
    for i in range(5):
        (env.src / f"f{i}").write_bytes(f"file {i}".encode())
        supa.upload("local", f"f{i}", f"file {i}".encode())
    with env.prefetch() as p:
        for i in range(3):
            fetch(p, f"f{i}", provider="local")
        supa.srv.stop()  # Supabase goes down
        with pytest.raises(PrefetchError, match="supabase"):
            p.push_stats()
        st = p.status()
        assert st["outbox_backlog"] == 3 and st["mirror"]["last_error"]
        for i in range(3, 5):
            fetch(p, f"f{i}", provider="local")
        fetch(p, "f0", provider="local")  # a cache hit is an event too
        assert p.status()["outbox_backlog"] == 6
        supa.restart()  # and comes back
        assert p.push_stats() == 6
        assert p.push_stats() == 0
        st = p.status()
        assert st["outbox_backlog"] == 0 and st["mirror"]["last_push_at"]
        pushed = [e.event_id for e in event_rows(p.manifest) if e.kind != "failure"]
    assert supa.one("SELECT count(*) FROM {s}.file_download_history")[0] == 6
    counts = dict(supa.pg.execute(f"SELECT provider_file_id, download_count FROM "
                                  f"{supa.schema}.provider_file_uploads").fetchall())
    assert counts == {"f0": 2, "f1": 1, "f2": 1, "f3": 1, "f4": 1}
    # The history's destination is the absolute path, as it always was (the manifest
    # keeps it relative to the root since v10; the mirror joins the root).
    dests = {r[0] for r in supa.pg.execute(
        f"SELECT destination FROM {supa.schema}.file_download_history").fetchall()}
    assert dests == {str(env.root.resolve() / f"downloads/f{i}/f{i}") for i in range(5)}
    # A replay of the same batch (as after a crash between send and mark) changes nothing.
    from prefetchd.mirror import payload

    with env.prefetch() as p:
        rows = [dataclasses.asdict(e) for e in event_rows(p.manifest) if e.event_id in pushed]
        replay = payload(rows, "h", p.store.root)
    n = supa.srv.run_sql("service_role", "SELECT prefetchd_record_downloads(%s::jsonb)",
                         [json.dumps(replay)])[0][0]
    assert n == 0
    assert supa.one("SELECT count(*) FROM {s}.file_download_history")[0] == 6
    assert supa.one("SELECT sum(download_count) FROM {s}.provider_file_uploads")[0] == 6


def test_batches_of_at_most_500(env, supa):
    with env.prefetch() as p:
        p.want(["x"], provider="local")
        for _ in range(1203):
            p.manifest.record("x", NewEvent(EventKind.CACHE_HIT, provider="local", bytes=1))
        assert p.push_stats() == 1203
    rpcs = [r for r in supa.srv.requests if "/rpc/" in r["path"]]
    assert len(rpcs) == 3
    assert supa.one("SELECT count(*) FROM {s}.file_download_history")[0] == 1203


def test_stats_push_cli_and_status(env, supa):
    (env.src / "a").write_bytes(b"a")
    assert env.invoke("get", "a", "--provider", "local").returncode == 0
    r = env.invoke("stats", "--push", "--json")
    assert r.returncode == 0, r.stderr
    assert "pushed 1 event(s)" in r.stderr
    assert json.loads(r.stdout)[0]["downloads"] == 1
    st = json.loads(env.invoke("status", "--json").stdout)
    assert st["outbox_backlog"] == 0 and st["mirror"]["configured"] is True
    supa.srv.stop()
    assert env.invoke("get", "a", "--provider", "local").returncode == 0
    r = env.invoke("stats", "--push")
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert SERVICE_KEY not in r.stderr
    assert "last error" in env.invoke("status").stdout
    supa.restart()


def test_daemon_mirrors_on_schedule_and_backs_off(env, supa):
    (env.src / "a").write_bytes(b"a")
    supa.upload("local", "a", b"a")
    d = DaemonProc(env).ready()
    try:
        assert env.invoke("get", "a", "--provider", "local").returncode == 0
        wait_until(lambda: supa.one("SELECT count(*) FROM {s}.file_download_history")[0] == 1,
                   timeout=10)
        assert supa.one("SELECT download_count FROM {s}.provider_file_uploads")[0] == 1
        assert SERVICE_KEY not in d.logtext()
    finally:
        assert d.stop() == 0


def test_no_supabase_section_everything_works(env):
    (env.src / "a").write_bytes(b"a")
    with env.prefetch() as p:
        assert p.settings.supabase is None
        assert fetch(p, "a", provider="local").path.exists()
        assert p.status()["mirror"]["configured"] is False
        with pytest.raises(PrefetchError, match=r"needs a \[supabase\] section"):
            p.push_stats()


def test_lookup_outage_falls_back_to_patterns(env, server, supa):
    server.add("file-p", b"pattern-resolved")
    supa.srv.stop()
    with env.prefetch() as p:
        assert fetch(p, "file-p").path.read_bytes() == b"pattern-resolved"  # default provider
    supa.restart()
