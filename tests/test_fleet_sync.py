"""The fleet sync in one process, against the stand-ins on a real PostgreSQL: the
wanted-set poll (a host moved to another group), the state report paged by its
watermarks, and a host's identity taken from (and checked against) its key."""

from __future__ import annotations

import pytest

from prefetchd.errors import ConfigError
from prefetchd.fleet import Remote, Sync
from prefetchd.fleet import sync as sync_mod
from prefetchd.manifest import WantSpec
from tests.supa_env import ANON_KEY, mint


def configure(env, sb, mp, *, key=("g1", "h1"), fleet: str = "") -> None:
    """This host's config; the keys in its environment (for the CLI) and ours."""
    env.environ["ANON_KEY"] = ANON_KEY
    env.environ["HOST_KEY"] = mint(*key)
    for k in ("ANON_KEY", "HOST_KEY"):
        mp.setenv(k, env.environ[k])
    env.write_config(extra=f"""
[supabase]
url = "{sb.srv.url}"
key = "env:ANON_KEY"
token = "env:HOST_KEY"
schema = "{sb.schema}"

[fleet]
cache_bucket = "fleet-cache"
{fleet}
""")


def admin_want(sb, group: str, *file_ids: str, action: str = "want") -> None:
    entries = [{"file_id": f, "provider": "local", "action": action} for f in file_ids]
    sb.client().rpc("prefetchd_fleet_want", {"group_name": group, "entries": entries}).execute()


def fleet_wanted(p) -> set[str]:
    """The files some fleet group's claim wants on this host (as `ls` shows them)."""
    return {r["file_id"] for r in p.ls()
            if any(c["holder"].startswith("fleet:") and c["wanted"] for c in r["claims"])}


def test_identity_comes_from_the_key_and_a_config_that_disagrees_is_refused(env, supa_server,
                                                                          monkeypatch):
    configure(env, supa_server, monkeypatch)
    remote = Remote(env.settings())
    assert (remote.group, remote.host) == ("g1", "h1")
    configure(env, supa_server, monkeypatch, fleet='host = "h2"')
    with pytest.raises(ConfigError, match=r"fleet.host: 'h2' is not the host key's host claim"):
        Remote(env.settings())
    r = env.cli("fleet", "status")
    assert r.returncode == 2 and "fleet.host: 'h2'" in r.stderr, r.stderr


def test_a_host_moved_to_another_group_leaves_the_old_set_and_reads_the_new(env, supa_server,
                                                                           monkeypatch):
    for name in ("a", "b", "c"):
        (env.src / name).write_bytes(name.encode())
    admin_want(supa_server, "g1", "a", "b")
    admin_want(supa_server, "g2", "c")
    configure(env, supa_server, monkeypatch, key=("g1", "h1"))
    with env.prefetch() as p:
        res = Sync(env.settings(), Remote(env.settings())).poll(p.manifest, p.store)
        assert res["applied"] == 2 and fleet_wanted(p) == {"a", "b"}
        configure(env, supa_server, monkeypatch, key=("g2", "h1"))
        res = Sync(env.settings(), Remote(env.settings())).poll(p.manifest, p.store)
        assert res["applied"] == 1 and fleet_wanted(p) == {"c"}
        assert {e.file_id for e in p.manifest.rows() if e.wanted} == {"c"}
        # The group's later changes follow from the new revision on.
        admin_want(supa_server, "g2", "c", action="unwant")
        Sync(env.settings(), Remote(env.settings())).poll(p.manifest, p.store)
        assert fleet_wanted(p) == set()


def test_reports_page_through_changes_and_forgets_exactly(env, supa_server, monkeypatch):
    monkeypatch.setattr(sync_mod, "BATCH", 3)  # pages of 3: ten rows, seven forgets
    configure(env, supa_server, monkeypatch)
    ids = [f"f{i:02d}" for i in range(10)]

    def states() -> dict[str, str]:
        rows = supa_server.pg.execute(
            f"SELECT file_id, state FROM {supa_server.schema}.fleet_states"
            " WHERE group_name = 'g1' AND host = 'h1'").fetchall()
        return dict(rows)

    with env.prefetch() as p:
        p.manifest.want([WantSpec(f, provider="local") for f in ids])
        sync = Sync(env.settings(), Remote(env.settings()))
        assert sync.report(p.manifest)["states"] == 10
        assert states() == dict.fromkeys(ids, "queued")
        host = supa_server.pg.execute(
            f"SELECT queued, ready FROM {supa_server.schema}.fleet_hosts").fetchone()
        assert tuple(host) == (10, 0)
        p.manifest.forget(ids[:7])
        assert sync.report(p.manifest)["states"] == 7
        assert states() == dict.fromkeys(ids[7:], "queued")
        assert sync.report(p.manifest)["states"] == 0  # nothing new: nothing resent


def test_ten_thousand_wants_are_applied_and_reported_in_pages(env, supa_server, monkeypatch):
    """The documented request limit, as one group write: one poll applies it in pages
    of 1,000 (each page one indexed query and one manifest transaction), and one report
    sends every state."""
    configure(env, supa_server, monkeypatch)
    ids = [f"big-{i:05d}" for i in range(10_000)]
    admin_want(supa_server, "g1", *ids)
    with env.prefetch() as p:
        sync = Sync(env.settings(), Remote(env.settings()))
        res = sync.poll(p.manifest, p.store)
        assert res["applied"] == 10_000 and res["skipped"] == 0
        assert len(fleet_wanted(p)) == 10_000
        assert sync.poll(p.manifest, p.store)["applied"] == 0  # nothing new
        assert sync.report(p.manifest)["states"] == 10_000
    n = supa_server.pg.execute(
        f"SELECT count(*) FROM {supa_server.schema}.fleet_states WHERE host = 'h1'").fetchone()
    assert n[0] == 10_000
    polls = [r for r in supa_server.srv.requests if "/rest/v1/fleet_wants" in r["path"]]
    assert len(polls) == 10 + 1 + 1  # ten full pages, an empty one, the second poll


def test_fleet_want_refuses_holder_instead_of_ignoring_it(env):
    """The fleet's claims are held by `fleet:<group>`: a --holder there would be
    silently dropped, so the command line refuses it before anything is sent."""
    r = env.cli("fleet", "want", "file-x", "--holder", "job-1")
    assert r.returncode == 2 and "--holder" in r.stderr and "Traceback" not in r.stderr
