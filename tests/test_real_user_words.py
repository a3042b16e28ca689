"""Real users without systemd (issue 21, point 5), on the users and daemon of
tests/test_unprivileged.py: an agent in `[api] group` drops a request into the inbox of
a root the daemon made itself (no tmpfiles), and a user outside that group is told
which group to join."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_helpers import wait_until
from tests.test_unprivileged import Site, daemon, site  # noqa: F401 - fixtures

_DROP = r"""
import json, os, sys
inbox, name = sys.argv[1], sys.argv[2]
tmp = os.path.join(inbox, "." + name + ".tmp")
with open(tmp, "w") as f:
    json.dump({"file_id": "f5.txt", "dest": "agent/f5.txt"}, f)
os.rename(tmp, os.path.join(inbox, name))
"""


@pytest.fixture
def fresh_root(site: Site, request: pytest.FixtureRequest) -> Site:  # noqa: F811
    """The root as nothing but the daemon makes it: no tmpfiles entry ran, only the
    folder above it is the service user's. Then the daemon starts."""
    shutil.rmtree(site.root)
    os.chown(site.root.parent, site.service.pw_uid, site.service.pw_gid)
    request.getfixturevalue("daemon")
    return site


def test_an_agent_drops_a_request_into_an_inbox_the_daemon_made(fresh_root):
    s = fresh_root
    inbox = s.root / ".prefetchd/inbox"
    st = inbox.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (
        0o3775, s.service.pw_uid, s.service.pw_gid)
    r = s.run(s.agent, "-c", _DROP, str(inbox), "want.json")
    assert r.returncode == 0, r.stderr
    receipt = inbox / "processed/want.json.receipt.json"
    wait_until(receipt.exists, timeout=60)
    assert not (inbox / "failed/want.json.error.json").exists()
    published = s.root / "agent/f5.txt"
    wait_until(published.exists, timeout=60)
    assert published.read_bytes() == b"file 5\n" * 1000
    # The request is the agent's claim: the request file's owner is its holder.
    r = s.cli(s.agent, "ls", "--mine", "--json")
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)
    assert row["file_id"] == "f5.txt" and row["state"] == "ready"
    assert [c["dest"] for c in row["claims"]] == ["agent/f5.txt"]


@pytest.fixture
def outsider(site: Site) -> Iterator[Site]:  # noqa: F811
    """A user in none of the daemon's groups, and the socket where such a user can
    reach it (as /run/prefetchd/api.sock, named in the config's [api] socket)."""
    name = f"pfx{os.getpid() % 10000}{int(time.time()) % 1000}"
    subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", "--user-group", name],
                   check=True, capture_output=True)
    try:
        run = site.base / "run"
        run.mkdir(mode=0o755)
        os.chown(run, site.service.pw_uid, site.service.pw_gid)
        # [api] is the config's last table.
        site.config.write_text(site.config.read_text() + f'socket = "{run / "api.sock"}"\n')
        # Where the unit links it from (and the daemon fixture waits for it).
        (site.state / "api.sock").symlink_to(run / "api.sock")
        site.other = pwd.getpwnam(name)  # the second agent is not needed here
        yield site
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)
        subprocess.run(["groupdel", name], check=False, capture_output=True)


@pytest.mark.parametrize("module", ["prefetchd.cli", "prefetchd.cli.launch"])
def test_a_user_outside_the_group_is_told_which_group_to_join(outsider, request, module):
    s = outsider
    request.getfixturevalue("daemon")
    sock = s.base / "run/api.sock"
    assert sock.is_socket()
    assert s.other.pw_gid != s.service.pw_gid
    for args in (["path", "f0.txt"], ["get", "f0.txt"], ["status"]):
        r = s.run(s.other, "-m", module, *args)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert r.stderr == (f"prefetchd: error: a daemon listens at {sock}, but this user "
                            f"may not connect: join group {s.group}\n"), args
        assert r.stdout == ""
    assert not Path(s.base / ".local").exists()  # nothing made in the outsider's name
