"""The local API: HTTP/1.1 with JSON bodies over a Unix socket, served by aiohttp
inside the daemon's event loop (as dockerd, snapd and podman do; `curl
--unix-socket` works).

The parts: `listen` (the socket file: path, mode 0660, group, stale replacement),
`peer` (SO_PEERCRED and who may do what), `bodies` (request models, JSON and error
shapes), `routes` (one handler per /v1 route over the daemon's handles), `waits`
and `stream` (`get`: waiting on the daemon's own workers, NDJSON progress).
"""

from __future__ import annotations

import os

from aiohttp import web

from ..log import get_logger
from .host import Host
from .listen import SOCKET_MODE, Listener, listen_path
from .peer import Access, group_id
from .routes import Api
from .waits import Waits

__all__ = ["Host", "Server", "Waits"]

log = get_logger("prefetchd.server")
SHUTDOWN_TIMEOUT = 2.0  # seconds requests in flight get at stop (get streams end first)


class Server:
    """The API's life: start() after reconciliation and before READY=1, stop() first
    thing at shutdown (the socket file goes with it)."""

    def __init__(self, host: Host, waits: Waits) -> None:
        self.host = host
        self.waits = waits
        self._runner: web.AppRunner | None = None
        self._listener: Listener | None = None

    async def start(self) -> None:
        settings = self.host.handles.settings
        gid = group_id(settings.api.group, "api.group")
        Access.of(settings)  # an unknown admin_group is an error at start, not at use
        path = listen_path(settings, os.environ)
        link = settings.api_socket if path != settings.api_socket else None
        self._listener = Listener(path, link, os.getegid() if gid is None else gid)
        self._runner = web.AppRunner(Api(self.host, self.waits).app(), access_log=None,
                                     shutdown_timeout=SHUTDOWN_TIMEOUT)
        try:
            await self._runner.setup()
            await web.SockSite(self._runner, self._listener.sock).start()
        except BaseException:
            await self.stop()
            raise
        log.info("api_listening", socket=str(path), link=str(link) if link else None,
                 mode=f"{SOCKET_MODE:04o}", gid=os.stat(path).st_gid)

    async def stop(self) -> None:
        self.waits.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
