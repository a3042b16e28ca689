"""One files server for the whole run, handed to each test as if it were new."""

from __future__ import annotations

import time

from tests.servers.files_api import FilesServer

#: how long a test waits for bodies the previous test left (a killed client's stalled
#: download) to end before it takes a server of its own instead
IDLE_GRACE = 2.0


def reset(srv: FilesServer) -> FilesServer:
    """Forget every file, fault, request and counter, as a new server has none."""
    with srv.lock:
        srv.files.clear()
        srv.requests.clear()
        srv.client_closed = 0
        srv.peak_active = srv.active
        srv.api_key = None
    return srv


class SharedFiles:
    """The session's FilesServer. A server's shutdown waits for its serve loop's next
    poll (up to 0.5 s), and most tests need one: starting one per test cost that each
    time. A server still sending a body when a test starts (its client was killed
    mid-download and the body is stalled) could count that body in the new test's
    numbers: then the test gets a server of its own."""

    def __init__(self) -> None:
        self._current: FilesServer | None = None
        self._retired: list[FilesServer] = []

    def fresh(self) -> FilesServer:
        srv = self._current
        if srv is not None:
            deadline = time.monotonic() + IDLE_GRACE
            while srv.active and time.monotonic() < deadline:
                time.sleep(0.01)
            if not srv.active:
                return reset(srv)
            self._retired.append(srv)
        self._current = FilesServer().start()
        return self._current

    def close(self) -> None:
        for srv in [*self._retired, *([self._current] if self._current else [])]:
            srv.stop()
        self._current, self._retired = None, []
