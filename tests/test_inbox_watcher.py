"""The inbox watcher (real inotify) against names it cannot decode: an expected input."""

from __future__ import annotations

import asyncio
import json
import logging
import os

import pytest

from prefetchd.inbox.watch import Inbox
from prefetchd.log import EVENT_ATTR


@pytest.fixture
def inbox(env):
    p = env.prefetch()
    ib = Inbox(p, env.settings().inbox_path, lambda: None)
    yield ib
    ib.close()
    p.close()


def test_a_name_that_is_not_utf8_is_one_warning_and_no_backoff(env, inbox, caplog):
    """watchfiles raises for such a name; the watcher used to log a traceback at error
    level and wait out a backoff. Now: one warning, no traceback, a new watcher at once,
    and a request dropped right after is processed by it."""
    (env.src / "ok.txt").write_bytes(b"ok")
    caplog.set_level(logging.DEBUG, logger="prefetchd")
    cfg = env.settings().inbox

    def logs() -> list[tuple[logging.LogRecord, dict]]:
        """The watcher's log lines as they were logged: the record and its event."""
        return [(r, getattr(r, EVENT_ATTR)) for r in caplog.records if hasattr(r, EVENT_ATTR)]
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
                      for _r, e in logs()):
            await asyncio.sleep(0.02)
        (inbox.path / ".good.tmp").write_text(json.dumps({"file_id": "ok.txt",
                                                           "provider": "local"}))
        os.rename(inbox.path / ".good.tmp", inbox.path / "good.json")
        while not (inbox.path / "processed" / "good.json").exists():
            await asyncio.sleep(0.02)
        stop.set()
        await asyncio.wait_for(task, 60)

    asyncio.run(asyncio.wait_for(scenario(), 120))
    warned = [(r, e) for r, e in logs() if e["event"] == "inbox_name_not_utf8"]
    assert warned and all(r.levelno == logging.WARNING and not r.exc_info for r, _e in warned)
    assert "\\xFF" in warned[0][1]["name"]
    assert not [r for r, _e in logs() if r.levelno >= logging.ERROR]
    assert not [e for _r, e in logs() if e["event"] == "inbox_watcher_restarting"]
    failed = os.listdir(inbox.path / "failed")
    assert len([n for n in failed if n.endswith(".error.json")]) == 3
