"""The fleet's SQL (config/supabase/002_fleet.sql) on the real PostgreSQL, through the
PostgREST + Storage stand-in with supabase-py, as the service key and as host keys."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from typing import Any

import httpx
import pytest

from tests.servers.supabase_api import TUS_PATH, tus_metadata
from tests.supa_env import (
    ANON_KEY,
    CACHE_BUCKET,
    DSN,
    SERVICE_KEY,
    SERVICE_ROLE,
    Supa,
    migrate,
    mint,
    storage_table,
)

psycopg = pytest.importorskip("psycopg")
HEX = "ab" * 32


def _api_error() -> type[Exception]:
    from postgrest.exceptions import APIError

    return APIError


def rpc(client: Any, fn: str, **args: Any) -> Any:
    return client.rpc(fn, args).execute().data


def refused(client: Any, fn: str, **args: Any) -> Any:
    """The APIError a call raises (PostgREST's code and one-line message)."""
    with pytest.raises(_api_error()) as e:
        rpc(client, fn, **args)
    return e.value


def host(supa: Supa, group: str, name: str) -> Any:
    return supa.client(mint(group, name))


def wait_for(pred: Any, what: str, timeout: float = 30) -> None:
    """Poll until pred() is true; the deadline only turns a hang into a failure."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


def test_migration_applies_twice_with_rls_everywhere(pg_admin, db):
    tables = pg_admin.execute(
        "SELECT relname, relrowsecurity FROM pg_class c JOIN pg_namespace n ON n.oid ="
        " c.relnamespace WHERE nspname = %s AND relkind = 'r' ORDER BY relname", [db]).fetchall()
    assert all(rls for _, rls in tables)
    assert {t for t, _ in tables} >= {"fleet_wants", "fleet_claims", "fleet_blobs", "fleet_ids",
                                      "fleet_hosts", "fleet_states", "objects"}
    # The Storage block ran against the schema's `objects` (storage.objects on Supabase).
    policies = pg_admin.execute("SELECT policyname, cmd, roles::text FROM pg_policies WHERE"
                                " schemaname = %s AND tablename = 'objects' ORDER BY 1",
                                [db]).fetchall()
    assert policies == [("prefetchd_fleet_blobs_insert", "INSERT", "{prefetchd_host}"),
                        ("prefetchd_fleet_blobs_select", "SELECT", "{prefetchd_host}")]
    col = pg_admin.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = %s"
                           " AND table_name = 'file_download_history' AND column_name ="
                           " 'source'", [db]).fetchone()
    assert col is not None


# -- leases ----------------------------------------------------------------------------------


def test_one_claim_wins_renews_and_is_taken_over_after_expiry(supa_server):
    supa = supa_server
    clients = [host(supa, "g", f"h{i}") for i in range(8)]
    start = threading.Barrier(len(clients))
    results: dict[int, bool] = {}

    def claim(i: int) -> None:
        start.wait()
        results[i] = rpc(clients[i], "prefetchd_fleet_claim", key="k1", host=f"h{i}",
                         lease_seconds=60)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, won in results.items() if won]
    assert len(results) == 8 and len(winners) == 1
    w = winners[0]
    other = (w + 1) % 8
    taken = supa.one("SELECT host, taken_at FROM {s}.fleet_claims WHERE key = 'k1'")
    assert taken[0] == f"h{w}"

    # The holder renews (taken_at stays); another host is refused while the lease lives.
    assert rpc(clients[w], "prefetchd_fleet_claim", key="k1", host=f"h{w}", lease_seconds=1)
    assert supa.one("SELECT taken_at FROM {s}.fleet_claims WHERE key = 'k1'")[0] == taken[1]
    # A non-holder's release changes nothing.
    assert rpc(clients[other], "prefetchd_fleet_release", key="k1", host=f"h{other}") is False
    assert supa.one("SELECT host FROM {s}.fleet_claims WHERE key = 'k1'")[0] == f"h{w}"

    # The 1-second lease expires (its holder "died"): another host takes it over.
    wait_for(lambda: rpc(clients[other], "prefetchd_fleet_claim", key="k1", host=f"h{other}",
                         lease_seconds=60), "takeover of an expired lease")
    row = supa.one("SELECT host, taken_at FROM {s}.fleet_claims WHERE key = 'k1'")
    assert row[0] == f"h{other}" and row[1] > taken[1]
    assert rpc(clients[w], "prefetchd_fleet_claim", key="k1", host=f"h{w}",
               lease_seconds=60) is False
    assert rpc(clients[w], "prefetchd_fleet_release", key="k1", host=f"h{w}") is False
    assert rpc(clients[other], "prefetchd_fleet_release", key="k1", host=f"h{other}") is True
    assert supa.one("SELECT count(*) FROM {s}.fleet_claims")[0] == 0


def test_a_lease_says_its_holders_progress_to_the_waiting_hosts(supa_server):
    """prefetchd_fleet_progress: only the holder of a live lease writes it;
    prefetchd_fleet_lease: any host of the group reads it, in seconds from the
    database's now; null when nobody holds the lease (the JSON null, as PostgREST
    answers a NULL scalar)."""
    supa = supa_server
    a, b, other = host(supa, "g", "a"), host(supa, "g", "b"), host(supa, "g2", "c")
    assert rpc(b, "prefetchd_fleet_lease", key="kp") is None
    assert rpc(a, "prefetchd_fleet_claim", key="kp", host="a", lease_seconds=60)
    lease = rpc(b, "prefetchd_fleet_lease", key="kp")
    assert lease["host"] == "a" and 0 < lease["expires_in"] <= 60
    assert (lease["done"], lease["size"], lease["eta_in"]) == (None, None, None)
    assert rpc(a, "prefetchd_fleet_progress", key="kp", host="a", done=100, size=1000,
               eta_seconds=30.0) is True
    lease = rpc(b, "prefetchd_fleet_lease", key="kp")
    assert (lease["done"], lease["size"]) == (100, 1000)
    assert 25 < lease["eta_in"] <= 30 and 0 <= lease["progress_age"] < 5
    # Another host's word changes nothing; another group sees nothing.
    assert rpc(b, "prefetchd_fleet_progress", key="kp", host="b", done=999, size=1000,
               eta_seconds=0.0) is False
    assert rpc(b, "prefetchd_fleet_progress", key="kp", host="a", done=999, size=1000,
               eta_seconds=0.0) is False  # row-level security hides a's live lease from b
    assert rpc(b, "prefetchd_fleet_lease", key="kp")["done"] == 100
    assert rpc(other, "prefetchd_fleet_lease", key="kp") is None
    assert rpc(a, "prefetchd_fleet_release", key="kp", host="a")
    assert rpc(b, "prefetchd_fleet_lease", key="kp") is None


def test_claim_group_comes_from_the_key(supa_server):
    supa = supa_server
    svc, a1 = supa.client(), host(supa, "A", "a1")
    e = refused(a1, "prefetchd_fleet_claim", key="k", host="a1", lease_seconds=5, group_name="B")
    assert e.code == "42501" and "group A, not B" in e.message
    e = refused(svc, "prefetchd_fleet_claim", key="k", host="x", lease_seconds=5)
    assert e.code == "22023" and "no group" in e.message
    assert rpc(svc, "prefetchd_fleet_claim", key="k", host="x", lease_seconds=5, group_name="B")
    # The same key in group A is another lease.
    assert rpc(a1, "prefetchd_fleet_claim", key="k", host="a1", lease_seconds=5, group_name="A")
    assert sorted(supa.pg.execute(f"SELECT group_name, host FROM {supa.schema}.fleet_claims")
                  .fetchall()) == [("A", "a1"), ("B", "x")]
    e = refused(a1, "prefetchd_fleet_claim", key="k", host="x", lease_seconds=0,
                group_name="A")
    assert e.code == "22023" and "lease_seconds" in e.message


# -- the wanted-set --------------------------------------------------------------------------


def want(client: Any, group: str, *entries: dict[str, Any]) -> int:
    return rpc(client, "prefetchd_fleet_want", group_name=group, entries=list(entries))


def row(supa: Supa, file_id: str, group: str = "g") -> dict[str, Any]:
    r = supa.pg.execute(f"SELECT row_to_json(w) FROM {supa.schema}.fleet_wants w WHERE"
                        " group_name = %s AND file_id = %s", [group, file_id]).fetchone()
    return {k: v for k, v in r[0].items() if k not in ("group_name", "updated_at")}


def test_want_replaces_given_fields_keeps_the_rest_and_forget_starts_afresh(supa_server):
    supa, svc = supa_server, supa_server.client()
    full = {"file_id": "a", "provider": "kimi", "sha256": HEX, "size": 3, "dest": "d/a.pdf",
            "pin": True, "ttl": "1h"}
    r1 = want(svc, "g", full)
    assert row(supa, "a") == {**full, "action": "want", "revision": r1}
    r2 = want(svc, "g", {"file_id": "a", "ttl": "2h"})
    assert r2 > r1 and row(supa, "a") == {**full, "ttl": "2h", "action": "want", "revision": r2}
    r3 = want(svc, "g", {"file_id": "a", "action": "unwant", "dest": None})
    assert row(supa, "a") == {**full, "ttl": "2h", "dest": None, "action": "unwant",
                              "revision": r3}
    r4 = want(svc, "g", {"file_id": "a", "action": "forget"})
    assert row(supa, "a") == {"file_id": "a", "provider": None, "sha256": None, "size": None,
                              "dest": None, "pin": False, "ttl": None, "action": "forget",
                              "revision": r4}
    r5 = want(svc, "g", {"file_id": "a", "provider": "files"})
    assert row(supa, "a")["provider"] == "files" and row(supa, "a")["action"] == "want"
    # Several entries: one revision each, the highest returned.
    r6 = want(svc, "g", {"file_id": "b"}, {"file_id": "c"})
    assert r1 < r2 < r3 < r4 < r5 < r6 and row(supa, "b")["revision"] == r6 - 1
    assert want(svc, "g") == 0


@pytest.mark.parametrize(("entry", "words"), [
    ({"file_id": "x", "sha256": "ABC"}, "sha256 must be 64 lowercase hex digits"),
    ({"file_id": "x", "action": "delete"}, "action must be want, unwant or forget, not delete"),
    ({"file_id": "x", "size": -1}, "size must be a non-negative integer"),
    ({"file_id": "x", "pin": "yes"}, "pin must be true or false"),
    ({"file_id": "x", "colour": "red"}, "unknown key colour"),
    ({"provider": "kimi"}, "file_id must be a non-empty string"),
])
def test_bad_wants_are_one_line_22023_and_nothing_is_written(supa_server, entry, words):
    svc = supa_server.client()
    e = refused(svc, "prefetchd_fleet_want", group_name="g",
                entries=[{"file_id": "ok"}, entry])
    assert e.code == "22023" and words in e.message and "\n" not in e.message
    assert e.message.startswith("prefetchd_fleet_want: entry 2")
    assert supa_server.one("SELECT count(*) FROM {s}.fleet_wants")[0] == 0


SECRET_ID = "https://user:s3cret-pw@example.org/f.pdf?sig=t0ken"


@pytest.mark.parametrize(("entry", "words"), [
    ({"sha256": "ABC"}, "sha256 must be 64 lowercase hex digits"),
    ({"action": "delete"}, "action must be want, unwant or forget, not delete"),
    ({"size": -1}, "size must be a non-negative integer"),
    ({"pin": "yes"}, "pin must be true or false"),
    ({"dest": 5}, "dest must be a string"),
])
def test_bad_want_messages_name_the_entry_by_index_not_its_file_id(supa_server, entry, words):
    """A file_id may carry a password or a presigned token: an error (which reaches the
    caller and the Postgres log) names the entry by its position only."""
    e = refused(supa_server.client(), "prefetchd_fleet_want", group_name="g",
                entries=[{"file_id": "ok"}, {"file_id": SECRET_ID, **entry}])
    assert e.code == "22023"
    assert e.message == f"prefetchd_fleet_want: entry 2: {words}"
    assert "s3cret" not in str(e.details) + str(e.hint) + e.message
    assert supa_server.one("SELECT count(*) FROM {s}.fleet_wants")[0] == 0


def test_want_needs_an_array_and_a_group(supa_server):
    svc = supa_server.client()
    e = refused(svc, "prefetchd_fleet_want", group_name="g", entries={"file_id": "x"})
    assert e.code == "22023" and "entries must be a JSON array" in e.message
    e = refused(svc, "prefetchd_fleet_want", group_name="", entries=[])
    assert e.code == "22023" and "group_name is required" in e.message


def _service_conn(schema: str) -> Any:
    conn = psycopg.connect(DSN)
    conn.execute(f"SET ROLE {SERVICE_ROLE}")
    conn.execute(f"SET search_path = {schema}")
    conn.commit()
    return conn


def _waiting_on_lock(pg_admin: Any, pid: int) -> bool:
    return pg_admin.execute("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE"
                            " pid = %s", [pid]).fetchone()[0]


def test_writers_of_a_group_commit_in_revision_order(pg_admin, supa_server):
    """T1 draws a revision and holds its transaction open; T2 (same group) cannot draw
    one until T1 commits, so no revision can become visible below one already seen."""
    t1, t2, t3 = (_service_conn(supa_server.schema) for _ in range(3))
    try:
        q = "SELECT prefetchd_fleet_want(%s, %s::jsonb)"
        r1 = t1.execute(q, ["g", json.dumps([{"file_id": "one"}])]).fetchone()[0]
        got: dict[str, int] = {}
        second = threading.Thread(target=lambda: got.update(
            r2=t2.execute(q, ["g", json.dumps([{"file_id": "two"}])]).fetchone()[0]))
        second.start()
        wait_for(lambda: _waiting_on_lock(pg_admin, t2.info.backend_pid),
                 "the second writer waits for the group's lock")
        # Another group is not held up by it.
        t3.execute("SET statement_timeout = '20s'")
        r3 = t3.execute(q, ["other", json.dumps([{"file_id": "x"}])]).fetchone()[0]
        t3.commit()
        assert r3 > r1
        # A poller sees nothing of group g yet (T1 is uncommitted, T2 has no revision).
        assert supa_server.client().table("fleet_wants").select("file_id").eq(
            "group_name", "g").execute().data == []
        assert "r2" not in got
        t1.commit()
        second.join(timeout=30)
        t2.commit()
        assert got["r2"] > r3 > r1  # drawn only after T1 committed
    finally:
        for c in (t1, t2, t3):
            c.close()


def test_a_poller_never_misses_a_row_under_concurrent_writers(supa_server):
    supa = supa_server
    writers, per_writer = 4, 25
    written: list[int] = []
    done = threading.Event()
    seen: dict[str, int] = {}
    errors: list[BaseException] = []

    def write(w: int) -> None:
        svc = supa.client()
        for i in range(per_writer):
            written.append(want(svc, "g", {"file_id": f"w{w}-{i}"}))

    def poll() -> None:
        svc, last = supa.client(), 0
        try:
            while True:
                finished = done.is_set()
                rows = (svc.table("fleet_wants").select("file_id,revision")
                        .eq("group_name", "g").gt("revision", last).order("revision")
                        .limit(1000).execute().data)
                revs = [r["revision"] for r in rows]
                assert revs == sorted(revs)
                for r in rows:
                    seen[r["file_id"]] = r["revision"]
                    last = r["revision"]
                if finished and not rows:
                    return
        except BaseException as e:  # the assertion fails the test below
            errors.append(e)

    poller = threading.Thread(target=poll)
    poller.start()
    ws = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in ws:
        t.start()
    for t in ws:
        t.join()
    done.set()
    poller.join(timeout=60)
    assert not errors
    assert len(seen) == writers * per_writer
    assert sorted(seen.values()) == sorted(written)


# -- row-level security ----------------------------------------------------------------------


def test_a_host_key_sees_and_writes_only_its_group_and_itself(supa_server):
    supa = supa_server
    svc, a1, b1 = supa.client(), host(supa, "A", "a1"), host(supa, "B", "b1")
    want(svc, "A", {"file_id": "fa"})
    want(svc, "B", {"file_id": "fb1"}, {"file_id": "fb2"})
    assert [r["file_id"] for r in a1.table("fleet_wants").select("*").execute().data] == ["fa"]
    assert len(b1.table("fleet_wants").select("*").execute().data) == 2
    assert len(svc.table("fleet_wants").select("*").execute().data) == 3

    e = refused(a1, "prefetchd_fleet_want", group_name="A", entries=[{"file_id": "x"}])
    assert e.code == "42501" and "host key cannot write" in e.message

    state = [{"id_key": "k1", "file_id": "fa", "state": "ready", "sha256": HEX, "size": 3}]
    beat = {"ready": 1, "queued": 0, "failed": 0, "bytes": 3, "version": "1.0"}
    assert rpc(a1, "prefetchd_fleet_report", host="a1", states=state, heartbeat=beat) == 1
    assert rpc(a1, "prefetchd_fleet_report", host="a1", states=state, heartbeat=beat) == 1
    e = refused(a1, "prefetchd_fleet_report", host="a2", states=state, heartbeat=beat)
    assert e.code == "42501" and "row-level security" in e.message
    e = refused(a1, "prefetchd_fleet_report", host="a1", states=state, heartbeat=beat,
                group_name="B")
    assert e.code == "42501"
    assert rpc(b1, "prefetchd_fleet_report", host="b1", states=[], heartbeat=beat) == 0
    hosts = a1.table("fleet_hosts").select("host,ready,bytes").execute().data
    assert hosts == [{"host": "a1", "ready": 1, "bytes": 3}]
    assert len(svc.table("fleet_hosts").select("*").execute().data) == 2
    assert rpc(a1, "prefetchd_fleet_report", host="a1", heartbeat=None,
               states=[{"id_key": "k1", "state": "forgotten"}]) == 1
    assert supa.one("SELECT count(*) FROM {s}.fleet_states")[0] == 0
    assert supa.one("SELECT ready FROM {s}.fleet_hosts WHERE host = 'a1'")[0] == 1

    e = refused(a1, "prefetchd_fleet_claim", key="k", host="a2", lease_seconds=5)
    assert e.code == "42501" and "row-level security" in e.message
    e = refused(a1, "prefetchd_fleet_record_blob", sha256=HEX, size=3,
                object_path=f"A/sha256/{HEX}", host="a2")
    assert e.code == "42501"
    assert rpc(a1, "prefetchd_fleet_record_blob", sha256=HEX, size=3,
               object_path=f"A/sha256/{HEX}", host="a1", provider="kimi", id_key="ik",
               file_id="fa") == []  # void: 204, no body
    assert rpc(a1, "prefetchd_fleet_record_blob", sha256=HEX, size=3,
               object_path=f"A/sha256/{HEX}", host="a1") == []  # twice: nothing more
    assert b1.table("fleet_blobs").select("*").execute().data == []
    assert b1.table("fleet_ids").select("*").execute().data == []
    assert [r["sha256"] for r in a1.table("fleet_ids").select("sha256").execute().data] == [HEX]

    anon = supa.client(ANON_KEY)
    with pytest.raises(_api_error(), match="permission denied"):
        anon.table("fleet_wants").select("*").execute()


def as_host(supa: Supa, group: str, name: str, query: str, params: Any = None) -> list[tuple]:
    """Plain SQL in one transaction as a host key's request runs it (role prefetchd_host,
    its claims in request.jwt.claims): what PostgREST's table routes (PATCH, POST)
    would do with that key."""
    return supa.srv.run_sql("prefetchd_host", query, params,
                            {"role": "prefetchd_host", "group": group, "host": name})


def test_a_host_key_cannot_steal_or_pin_a_lease(supa_server):
    supa = supa_server
    a1 = host(supa, "A", "a1")
    assert rpc(a1, "prefetchd_fleet_claim", key="k", host="a1", lease_seconds=60)
    held = supa.one("SELECT host, expires_at FROM {s}.fleet_claims WHERE key = 'k'")
    # Another host's live lease: a direct UPDATE sees no row, so it changes nothing.
    assert as_host(supa, "A", "a2", "UPDATE fleet_claims SET host = 'a2', expires_at ="
                   " now() + interval '1 minute' WHERE key = 'k' RETURNING host") == []
    assert supa.one("SELECT host, expires_at FROM {s}.fleet_claims WHERE key = 'k'") == held
    # No lease beyond the hour, inserted or updated, even on a lease of one's own.
    for q in ("INSERT INTO fleet_claims (group_name, key, host, expires_at)"
              " VALUES ('A', 'k2', 'a2', 'infinity')",
              "INSERT INTO fleet_claims (group_name, key, host, expires_at)"
              " VALUES ('A', 'k2', 'a2', now() + interval '61 minutes')"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            as_host(supa, "A", "a2", q)
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
        as_host(supa, "A", "a1", "UPDATE fleet_claims SET expires_at = 'infinity'"
                " WHERE key = 'k'")
    assert supa.one("SELECT host, expires_at FROM {s}.fleet_claims WHERE key = 'k'") == held
    # The function keeps leases within 1..3600 seconds (one line, 22023).
    for bad in (0, -1, 3601, 2**31 - 1):
        e = refused(a1, "prefetchd_fleet_claim", key="k3", host="a1", lease_seconds=bad)
        assert e.code == "22023" and "\n" not in e.message
        assert e.message == ("prefetchd_fleet_claim: lease_seconds must be between 1 and"
                             f" 3600, not {bad}")
    assert rpc(a1, "prefetchd_fleet_claim", key="k3", host="a1", lease_seconds=3600)
    assert rpc(a1, "prefetchd_fleet_claim", key="k3", host="a1", lease_seconds=3600)  # renew
    # Once the lease has expired (its holder died) another host may take it over, by the
    # function or directly, and then holds it as itself.
    supa.pg.execute(f"UPDATE {supa.schema}.fleet_claims SET expires_at = now() - interval"
                    " '1 second' WHERE key = 'k'")
    assert as_host(supa, "A", "a2", "UPDATE fleet_claims SET host = 'a2', expires_at ="
                   " now() + interval '1 minute' WHERE key = 'k' RETURNING host") == [("a2",)]
    assert rpc(a1, "prefetchd_fleet_claim", key="k", host="a1", lease_seconds=60) is False
    e = refused(a1, "prefetchd_fleet_claim", key="k", host="a2", lease_seconds=60)
    assert e.code == "42501"  # a1 cannot renew a2's lease in a2's name
    assert supa.one("SELECT host FROM {s}.fleet_claims WHERE key = 'k'")[0] == "a2"


def test_the_first_host_to_map_a_file_owns_the_mapping(supa_server):
    supa = supa_server
    a1, a2 = host(supa, "A", "a1"), host(supa, "A", "a2")
    other = "cd" * 32

    def record(client: Any, who: str, sha256: str, **extra: Any) -> None:
        rpc(client, "prefetchd_fleet_record_blob", sha256=sha256, size=3,
            object_path=f"A/sha256/{sha256}", host=who, provider="kimi", id_key="ik",
            file_id="f", **extra)

    def mapping() -> tuple:
        return supa.one("SELECT sha256, name, recorded_by FROM {s}.fleet_ids"
                        " WHERE id_key = 'ik'")

    record(a1, "a1", HEX, name="first.pdf")
    record(a2, "a2", other, name="second.pdf")  # no error, and no change
    assert mapping() == (HEX, "first.pdf", "a1")
    record(a1, "a1", HEX, name="renamed.pdf")  # the owner may correct its own mapping
    assert mapping() == (HEX, "renamed.pdf", "a1")
    # Directly: another host's mapping is invisible to UPDATE; its own is not.
    assert as_host(supa, "A", "a2", "UPDATE fleet_ids SET sha256 = %s, recorded_by = 'a2'"
                   " WHERE id_key = 'ik' RETURNING 1", [other]) == []
    assert mapping() == (HEX, "renamed.pdf", "a1")
    assert as_host(supa, "A", "a1", "UPDATE fleet_ids SET name = 'own.pdf' WHERE id_key ="
                   " 'ik' RETURNING recorded_by") == [("a1",)]
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
        as_host(supa, "A", "a1", "UPDATE fleet_ids SET recorded_by = 'a2' WHERE id_key = 'ik'")
    assert mapping() == (HEX, "own.pdf", "a1")


def test_a_host_key_cannot_update_blobs(supa_server):
    supa = supa_server
    a1 = host(supa, "A", "a1")
    rpc(a1, "prefetchd_fleet_record_blob", sha256=HEX, size=3,
        object_path=f"A/sha256/{HEX}", host="a1")
    rpc(a1, "prefetchd_fleet_record_blob", sha256=HEX, size=9,
        object_path="A/elsewhere", host="a1")  # a second record changes nothing
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
        as_host(supa, "A", "a1", "UPDATE fleet_blobs SET object_path = 'A/x'")
    assert supa.one("SELECT size, object_path FROM {s}.fleet_blobs") == (3, f"A/sha256/{HEX}")
    assert supa.one("SELECT count(*) FROM pg_policies WHERE schemaname = %s AND tablename ="
                    " 'fleet_blobs' AND cmd = 'UPDATE'", [supa.schema])[0] == 0


def test_applied_over_an_earlier_version_it_drops_the_blob_update(pg_admin, schema):
    """An earlier 002 granted hosts UPDATE on fleet_blobs with a policy for it; applying
    this one over it takes both away (and keeps everything else)."""
    storage_table(pg_admin, schema)
    migrate(pg_admin, schema)
    pg_admin.execute(f"GRANT UPDATE ON {schema}.fleet_blobs TO prefetchd_host")
    pg_admin.execute(f"CREATE POLICY fleet_blobs_host_update ON {schema}.fleet_blobs FOR UPDATE"
                     f" TO prefetchd_host USING (group_name = {schema}.prefetchd_jwt_group())")
    migrate(pg_admin, schema)
    assert pg_admin.execute("SELECT has_table_privilege('prefetchd_host', %s, 'UPDATE')",
                            [f"{schema}.fleet_blobs"]).fetchone()[0] is False
    assert pg_admin.execute("SELECT count(*) FROM pg_policies WHERE schemaname = %s AND"
                            " tablename = 'fleet_blobs' AND cmd = 'UPDATE'",
                            [schema]).fetchone()[0] == 0


def test_states_are_indexed_by_file_and_reports_still_land(supa_server):
    """The daemon asks which hosts have a file (group, id_key): an index answers that."""
    supa = supa_server
    cols = supa.pg.execute(
        "SELECT array_agg(a.attname ORDER BY k.n) FROM pg_index i"
        " CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, n)"
        " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
        " WHERE i.indrelid = %s::regclass GROUP BY i.indexrelid",
        [f"{supa.schema}.fleet_states"]).fetchall()
    assert ["group_name", "id_key"] in [c for (c,) in cols]
    for name in ("a1", "a2"):
        assert rpc(host(supa, "A", name), "prefetchd_fleet_report", host=name, heartbeat=None,
                   states=[{"id_key": "ik", "file_id": "f", "state": "ready", "sha256": HEX,
                            "size": 3}, {"id_key": f"only-{name}", "state": "queued"}]) == 2
    rows = host(supa, "A", "a1").table("fleet_states").select("host,state").eq(
        "id_key", "ik").order("host").execute().data
    assert rows == [{"host": "a1", "state": "ready"}, {"host": "a2", "state": "ready"}]


def test_bad_or_expired_keys_get_postgrest_401(supa_server):
    for key, code, msg in ((mint("A", "a1", expires_in=-60), "PGRST303", "JWT expired"),
                           (mint("A", "a1", secret="another-secret-of-32-characters!!"),
                            "PGRST301", "JWT cryptographic operation failed")):
        r = httpx.post(f"{supa_server.srv.url}/rest/v1/rpc/prefetchd_jwt_group", json={},
                       headers={"apikey": ANON_KEY, "Authorization": f"Bearer {key}"})
        assert r.status_code == 401
        assert r.json() == {"code": code, "details": None, "hint": None, "message": msg}
        assert r.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')


# -- Storage ---------------------------------------------------------------------------------


def storage(supa: Supa, key: str) -> Any:
    return supa.client(key).storage.from_(CACHE_BUCKET)


def test_storage_policies_keep_groups_apart(supa_server):
    from storage3.exceptions import StorageApiError

    supa = supa_server
    supa.put_object(f"A/sha256/{HEX}", b"group A bytes", bucket=CACHE_BUCKET)
    supa.put_object(f"B/sha256/{HEX}", b"group B bytes", bucket=CACHE_BUCKET)
    key_a = mint("A", "a1")
    base = f"{supa.srv.url}/storage/v1/object"
    auth = {"apikey": key_a, "Authorization": f"Bearer {key_a}"}
    r = httpx.get(f"{base}/authenticated/{CACHE_BUCKET}/A/sha256/{HEX}", headers=auth)
    assert r.status_code == 200 and r.content == b"group A bytes"
    r = httpx.get(f"{base}/authenticated/{CACHE_BUCKET}/B/sha256/{HEX}", headers=auth)
    assert r.status_code == 400
    assert r.json() == {"statusCode": "404", "code": "NoSuchKey", "error": "not_found",
                        "message": "Object not found"}

    a = storage(supa, key_a)
    assert a.upload(f"A/sha256/{'cd' * 32}", b"new").path == f"A/sha256/{'cd' * 32}"
    with pytest.raises(StorageApiError) as e:
        a.upload(f"B/sha256/{'cd' * 32}", b"intruder")
    assert (e.value.status, e.value.code, e.value.message) == (
        "403", "Unauthorized", "new row violates row-level security policy")
    with pytest.raises(StorageApiError) as e:
        a.upload(f"A/sha256/{'cd' * 32}", b"again")
    assert (e.value.status, e.value.code, e.value.message) == (
        "409", "Duplicate", "The resource already exists")
    assert supa.object_bytes(f"A/sha256/{'cd' * 32}", CACHE_BUCKET) == b"new"
    assert not (supa.storage_dir / CACHE_BUCKET / "B" / "sha256" / ("cd" * 32)).exists()

    svc = storage(supa, SERVICE_KEY)
    svc.upload(f"B/sha256/{HEX}", b"replaced", {"upsert": "true"})
    assert supa.object_bytes(f"B/sha256/{HEX}", CACHE_BUCKET) == b"replaced"
    r = httpx.get(f"{base}/authenticated/{CACHE_BUCKET}/B/sha256/{HEX}",
                  headers={"apikey": SERVICE_KEY, "Authorization": f"Bearer {SERVICE_KEY}"})
    assert r.content == b"replaced" and r.headers["ETag"] == (
        '"' + hashlib.md5(b"replaced").hexdigest() + '"')  # noqa: S324 - Storage's ETag
    gets = [q for q in supa.srv.requests
            if q["method"] == "GET" and "/storage/v1/object/authenticated/" in q["path"]]
    assert len(gets) == 3


def tus_create(supa: Supa, key: str, name: str, length: int, upsert: bool = False
               ) -> httpx.Response:
    return httpx.post(f"{supa.srv.url}{TUS_PATH}", headers={
        "apikey": key, "Authorization": f"Bearer {key}", "Tus-Resumable": "1.0.0",
        "Upload-Length": str(length), "x-upsert": "true" if upsert else "false",
        "Upload-Metadata": tus_metadata(bucketName=CACHE_BUCKET, objectName=name,
                                        contentType="application/octet-stream",
                                        cacheControl="3600")})


def test_tus_upload_cut_in_the_middle_resumes_from_head(supa_server):
    supa = supa_server
    key = mint("A", "a1")
    auth = {"apikey": key, "Authorization": f"Bearer {key}", "Tus-Resumable": "1.0.0"}
    data = os.urandom(5 * 1024 * 1024 + 123)
    name = f"A/sha256/{hashlib.sha256(data).hexdigest()}"
    opts = httpx.options(f"{supa.srv.url}{TUS_PATH}", headers=auth)
    assert opts.headers["Tus-Version"] == "1.0.0" and "creation" in opts.headers["Tus-Extension"]
    r = tus_create(supa, key, name, len(data))
    assert r.status_code == 201 and r.headers["Tus-Resumable"] == "1.0.0"
    loc = r.headers["Location"]
    assert loc.startswith(f"{supa.srv.url}{TUS_PATH}/")
    chunk = 2 * 1024 * 1024

    def patch(offset: int, body: bytes) -> httpx.Response:
        return httpx.patch(loc, content=body, headers={
            **auth, "Upload-Offset": str(offset),
            "Content-Type": "application/offset+octet-stream"})

    r = patch(0, data[:chunk])
    assert r.status_code == 204 and r.headers["Upload-Offset"] == str(chunk)
    supa.srv.upload_faults[f"{CACHE_BUCKET}/{name}"] = __import__("collections").deque(
        [{"cut_after": 700_000}])
    with pytest.raises(httpx.TransportError):
        patch(chunk, data[chunk:2 * chunk])
    # Resume: ask where the server is, as a TUS client does after a cut.
    h = httpx.head(loc, headers=auth)
    assert h.status_code == 200 and h.headers["Upload-Length"] == str(len(data))
    offset = int(h.headers["Upload-Offset"])
    assert offset == chunk + 700_000
    assert patch(chunk, data[chunk:2 * chunk]).status_code == 409  # a stale offset
    assert not (supa.storage_dir / CACHE_BUCKET / name).exists()  # nothing half-published
    while offset < len(data):
        r = patch(offset, data[offset:offset + chunk])
        assert r.status_code == 204
        offset = int(r.headers["Upload-Offset"])
    assert supa.object_bytes(name, CACHE_BUCKET) == data
    assert supa.one("SELECT size FROM {s}.objects WHERE name = %s", [name])[0] == len(data)

    # The same object again without x-upsert: refused at creation, as Storage does.
    r = tus_create(supa, key, name, len(data))
    assert (r.status_code, r.text) == (409, "The resource already exists")
    # Another group's folder: refused at creation too.
    r = tus_create(supa, key, f"B/sha256/{HEX}", 10)
    assert (r.status_code, r.text) == (403, "new row violates row-level security policy")
    # A second front on the same schema and disk serves the uploaded object.
    other = supa.another()
    r = httpx.get(f"{other.url}/storage/v1/object/authenticated/{CACHE_BUCKET}/{name}",
                  headers={"apikey": key, "Authorization": f"Bearer {key}",
                           "Range": "bytes=5000000-"})
    assert r.status_code == 206 and r.content == data[5_000_000:]


# -- download history ------------------------------------------------------------------------


def test_record_downloads_takes_source_and_the_key_host(supa_server):
    supa = supa_server
    ev = {"event_id": "00000000-0000-0000-0000-00000000000%d", "host": "liar",
          "provider": "kimi", "file_id": "f", "destination": "/x", "bytes": 1,
          "duration_ms": 1, "cache_hit": False, "sha256": HEX,
          "downloaded_at": "2026-01-01T00:00:00Z"}
    a1 = host(supa, "A", "a1")
    assert rpc(a1, "prefetchd_record_downloads",
               events=[{**ev, "event_id": ev["event_id"] % 1, "source": "storage"}]) == 1
    assert rpc(supa.client(), "prefetchd_record_downloads",
               events=[{**ev, "event_id": ev["event_id"] % 2, "host": "h", "source": "origin"},
                       {**ev, "event_id": ev["event_id"] % 3, "host": "h"}]) == 2
    rows = supa.pg.execute(f"SELECT host, source FROM {supa.schema}.file_download_history"
                           " ORDER BY event_id").fetchall()
    assert rows == [("a1", "storage"), ("h", "origin"), ("h", None)]
    e = refused(a1, "prefetchd_record_downloads",
                events=[{**ev, "event_id": ev["event_id"] % 4, "source": "peer"}])
    assert e.code == "23514"
