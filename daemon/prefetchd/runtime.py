"""The daemon's contract with its host: one daemon per state dir and per root (a lock
file holding its pid, which `status` and `get` read), and systemd's notify protocol
(READY=1, STATUS=, WATCHDOG=1, STOPPING=1)."""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from .errors import PrefetchError
from .log import get_logger

log = get_logger("prefetchd.service")


def sd_notify(message: str) -> bool:
    """Send one datagram to systemd's NOTIFY_SOCKET (no-op without one).

    Never blocks: it runs on the event loop, and a datagram to a receiver that does
    not read (its queue holds net.unix.max_dgram_qlen, often 10) would stop the whole
    daemon until it did. Such a message is dropped with a warning instead.
    """
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                           | socket.SOCK_NONBLOCK) as s:
            s.connect(addr)
            s.send(message.encode())
    except OSError as e:
        log.warning("sd_notify_failed", error=e.strerror or str(e))
        return False
    return True


def watchdog_interval() -> float | None:
    """Half of WATCHDOG_USEC in seconds, if systemd asks this process for pings."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


class DaemonLock:
    """flock on <state_dir>/lock holding our pid: one daemon per state dir and root."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            raise PrefetchError(
                f"another prefetchd (pid {pid}) holds {path}"
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        os.ftruncate(self.fd, 0)
        os.close(self.fd)


def daemon_pid(lock_path: Path) -> int | None:
    """The pid of the daemon holding this lock (-1 if it wrote none yet), or None when
    no daemon runs."""
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 64).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
