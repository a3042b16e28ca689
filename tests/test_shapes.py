"""Every `--json` output has exactly the keys of its TypedDict (prefetchd.shapes), which
are the keys the README documents."""

from __future__ import annotations

import json
from typing import get_type_hints

from prefetchd import shapes


def keys(td: type) -> set[str]:
    return set(get_type_hints(td))


def cli_json(env, *args: str):
    r = env.invoke(*args, "--json")
    assert r.returncode in (0, 1), r.stderr
    return r, json.loads(r.stdout)


def test_ls_status_get_stats_shapes(env, server):
    server.add("file-a", b"A" * 10, "a.txt")
    _, got = cli_json(env, "get", "file-a", "file-nope")
    assert [set(x) for x in got] == [keys(shapes.GetRow)] * 2
    assert got[0]["state"] == "ready" and got[1]["state"] == "failed"
    _, rows = cli_json(env, "ls")
    assert {frozenset(r) for r in rows} == {frozenset(keys(shapes.LsRow))}
    _, st = cli_json(env, "status")
    assert set(st) == keys(shapes.Status) - {"fleet"}  # "fleet": only with [fleet]
    assert set(st["daemon"]) == keys(shapes.DaemonInfo)
    assert set(st["store"]) == keys(shapes.StoreTotals)
    assert set(st["mirror"]) == keys(shapes.MirrorInfo)
    assert [set(e) for e in st["last_errors"]] == [keys(shapes.LastError)]
    _, stats = cli_json(env, "stats")
    assert [set(s) for s in stats] == [keys(shapes.StatsRow)]


def test_verify_json_shape(env, server):
    server.add("file-a", b"A" * 10, "a.txt")
    server.add("file-b", b"B" * 10, "b.txt")
    assert env.invoke("get", "file-a", "file-b").returncode == 0
    r, report = cli_json(env, "verify")
    assert r.returncode == 0
    optional = {"refetched"}
    assert [set(x) for x in report] == [keys(shapes.VerifyRow) - optional] * 2
    assert [x["ok"] for x in report] == [True, True]
    # A bad object: quarantined, and (no daemon runs) fetched again here.
    obj = env.root / ".prefetchd/objects/sha256"
    (target,) = [p for p in obj.rglob("*") if p.is_file() and p.read_bytes() == b"B" * 10]
    target.chmod(0o644)
    target.write_bytes(b"rot" * 3 + b"!")
    r, report = cli_json(env, "verify")
    assert r.returncode == 1
    bad = [x for x in report if not x["ok"]]
    assert [x["file_id"] for x in bad] == ["file-b"]
    assert set(bad[0]) == keys(shapes.VerifyRow) and bad[0]["refetched"] is True
    assert (env.root / "downloads/file-b/b.txt").read_bytes() == b"B" * 10
