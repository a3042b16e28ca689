"""A dest the store refuses (a symlink or a foreign file in the way) is a recorded,
permanent failure: never a silent loop of downloads (issue: refused publish)."""

from __future__ import annotations

import os

import pytest

from prefetchd.errors import PermanentError
from tests.conftest import fetch, sha
from tests.daemon_helpers import DaemonProc, wait_until
from tests.support.rows import event_rows

FID = "file-refused"


def row(env, fid=FID):
    with env.prefetch() as p:
        return p.manifest.get(fid)


@pytest.mark.parametrize("plant", ["symlink_dest", "foreign_file", "symlink_dir",
                                   "symlink_downloads_id"])
def test_refused_dest_fails_once_with_the_reason(env, server, tmp_path, plant):
    data = os.urandom(5000)
    server.add(FID, data, "q3.pdf")
    outside = tmp_path / "outside"
    outside.mkdir()
    env.root.mkdir(parents=True, exist_ok=True)
    dest = "reports/q3.pdf"
    if plant == "symlink_dest":
        (env.root / "reports").mkdir()
        os.symlink(outside / "x", env.root / dest)
    elif plant == "foreign_file":
        (env.root / "reports").mkdir()
        (env.root / dest).write_bytes(b"mine")
    elif plant == "symlink_dir":
        os.symlink(outside, env.root / "reports")
    else:
        dest = None
        (env.root / "downloads").mkdir()
        os.symlink(outside, env.root / "downloads" / FID)
    opts = {"dest": dest} if dest else {}
    with env.prefetch() as p, pytest.raises(PermanentError) as exc:
        fetch(p, FID, **opts)
    where = dest or f"downloads/{FID}"
    assert str(exc.value).startswith(f"dest {where}: ")
    r = row(env)
    assert r.state == "failed" and r.error == str(exc.value)
    assert list(outside.iterdir()) == []  # nothing written through the symlink
    if plant == "foreign_file":
        assert (env.root / dest).read_bytes() == b"mine"
    with env.prefetch() as p:
        kinds = [e.kind for e in event_rows(p.manifest, FID)]
    assert kinds.count("failure") == 1


def test_daemon_does_not_loop_on_a_refused_dest(env, server, tmp_path):
    data = os.urandom(5000)
    server.add(FID, data, "q3.pdf")
    server.add("file-after", b"after", "after.txt")
    (env.root / "reports").mkdir(parents=True)
    os.symlink(tmp_path / "elsewhere", env.root / "reports/q3.pdf")
    d = DaemonProc(env).ready(60)
    try:
        with env.prefetch() as p:
            p.want([FID], dest="reports/q3.pdf", sha256=sha(data))
        wait_until(lambda: row(env).state == "failed", timeout=60)
        # Later work is done, and the refused entry was not tried again meanwhile.
        for i in range(3):
            with env.prefetch() as p:
                p.want(["file-after"], dest=f"after{i}.txt")
            wait_until(lambda: row(env, "file-after").state == "ready", timeout=60)
        assert len(server.content_requests(FID)) == 1
        assert row(env).error.startswith("dest reports/q3.pdf: ")
        r = env.invoke("get", FID, "--timeout", "30")
        assert r.returncode == 1 and "dest reports/q3.pdf" in r.stderr
    finally:
        assert d.stop(60) == 0


@pytest.mark.parametrize("fid", [".", "..", "a/../b", "x?purpose=y", "with space"])
def test_openai_file_id_that_is_no_path_segment_is_refused_as_a_request(env, server, fid):
    """`.`/`..` once reached the SDK (`/files/..`) and crashed the download."""
    r = env.invoke("want", fid, "--provider", "kimi")
    assert r.returncode == 2
    assert "cannot be a file of provider kimi" in r.stderr and "Traceback" not in r.stderr
    with env.prefetch() as p:
        assert p.manifest.get(fid) is None
    assert server.requests == []


def test_openai_file_id_refused_in_a_request_file_names_the_entry(env, server):
    from prefetchd.inbox.watch import Inbox

    with env.prefetch() as p:
        ib = Inbox(p, env.settings().inbox_path, lambda: None)
        (ib.path / "req.json").write_text('[{"file_id": "ok1"}, {"file_id": "..", '
                                          '"provider": "kimi"}]')
        ib.process("req.json")
        err = (ib.path / "failed" / "req.json.error.json").read_text()
        assert "entry 1" in err and "cannot be a file of provider kimi" in err
        assert p.manifest.get("ok1") is None  # nothing half-applied
        ib.close()


def test_openai_provider_refuses_a_dot_id_that_came_another_way(server):
    """Defence in depth: a file_id resolved at fetch time (not through a request)."""
    import asyncio

    from prefetchd.providers.openai import OpenAIProvider

    prov = OpenAIProvider("kimi", base_url=server.base_url, api_key="k", connect_timeout=5,
                          stall_timeout=5, returns_original=False, max_connections=1)

    async def go() -> None:
        async with prov.open(".."):
            pass

    with pytest.raises(PermanentError, match="one path segment"):
        asyncio.run(go())
    assert server.requests == []


@pytest.mark.parametrize("fid", ["../../etc/passwd", "/etc/passwd", "a//b", "a/./b"])
def test_dir_file_id_outside_its_folder_is_refused_as_a_request(env, fid):
    r = env.invoke("want", fid, "--provider", "local")
    assert r.returncode == 2
    assert "cannot be a file of provider local" in r.stderr and "Traceback" not in r.stderr
    with env.prefetch() as p:
        assert p.manifest.get(fid) is None
