"""The inbox watcher (real inotify) against names it cannot decode: an expected input."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from structlog.testing import capture_logs

from prefetchd.inbox.watch import Inbox


@pytest.fixture
def inbox(env):
    p = env.prefetch()
    ib = Inbox(p, env.settings().inbox_path, lambda: None)
    yield ib
    ib.close()
    p.close()


def test_a_name_that_is_not_utf8_is_one_warning_and_no_backoff(env, inbox):
    """watchfiles raises for such a name; the watcher used to log a traceback at error
    level and wait out a backoff. Now: one warning, no traceback, a new watcher at once,
    and a request dropped right after is processed by it."""
    (env.src / "ok.txt").write_bytes(b"ok")
    cfg = env.settings().inbox
    raw = os.fsencode(inbox.path)

    async def scenario() -> None:
        stop, started = asyncio.Event(), asyncio.Event()
        task = asyncio.ensure_future(inbox.watch(stop, cfg, started=started))
        await asyncio.wait_for(started.wait(), 60)
        for i in range(3):
            fd = os.open(raw + b"/.%d.tmp" % i, os.O_CREAT | os.O_WRONLY, 0o644)
            os.write(fd, b'{"file_id": "ok.txt", "provider": "local"}')
            os.close(fd)
            os.rename(raw + b"/.%d.tmp" % i, raw + b"/%d-\xff\xfe.json" % i)
        # Until the warnings are logged, then one good request: the watcher (restarted
        # at once, not after a backoff) must take it.
        while not any(e["event"] in ("inbox_name_not_utf8", "inbox_watcher_restarting")
                      for e in logs):
            await asyncio.sleep(0.02)
        (inbox.path / ".good.tmp").write_text(json.dumps({"file_id": "ok.txt",
                                                           "provider": "local"}))
        os.rename(inbox.path / ".good.tmp", inbox.path / "good.json")
        while not (inbox.path / "processed" / "good.json").exists():
            await asyncio.sleep(0.02)
        stop.set()
        await asyncio.wait_for(task, 60)

    with capture_logs() as logs:
        asyncio.run(asyncio.wait_for(scenario(), 120))
    warned = [e for e in logs if e["event"] == "inbox_name_not_utf8"]
    assert warned and all(e["log_level"] == "warning" and "exc_info" not in e for e in warned)
    assert "\\xFF" in warned[0]["name"]
    assert not [e for e in logs if e["log_level"] in ("error", "critical")]
    assert not [e for e in logs if e["event"] == "inbox_watcher_restarting"]
    failed = os.listdir(inbox.path / "failed")
    assert len([n for n in failed if n.endswith(".error.json")]) == 3
