"""What the tests' HTTP servers share."""

from __future__ import annotations

import sys
from http.server import ThreadingHTTPServer
from typing import Any


class QuietServer(ThreadingHTTPServer):
    """A threading HTTP server that prints no traceback for a client that went away."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (a cancelled download, a closed socket) is what
        the tests make happen: no traceback on stderr, which a test would take for
        the CLI's (tests/support/cli.py fails a command that printed one)."""
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)
