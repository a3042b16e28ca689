"""Moved to tests/support/ (daemon.py, wait.py); these names stay importable from here."""

from tests.support.daemon import DaemonProc, NotifySocket
from tests.support.wait import wait_until

__all__ = ["DaemonProc", "NotifySocket", "wait_until"]
