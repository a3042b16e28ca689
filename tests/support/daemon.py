"""`prefetchd run` as a real process, with a NOTIFY_SOCKET the test binds (as systemd would)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.support.env import REPO, Env


class NotifySocket:
    """What systemd would be: an AF_UNIX datagram socket the daemon reports to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def wait_for(self, prefix: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        for m in self.messages:
            for line in m.splitlines():
                if line.startswith(prefix):
                    return line
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                msg = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            self.messages.append(msg)
            for line in msg.splitlines():
                if line.startswith(prefix):
                    return line
        raise AssertionError(f"no {prefix!r} from the daemon; got {self.messages}")

    def count(self, prefix: str) -> int:
        return sum(1 for m in self.messages for line in m.splitlines() if line.startswith(prefix))

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                return

    def close(self) -> None:
        self.sock.close()


class DaemonProc:
    def __init__(self, env: Env, extra_env: dict[str, str] | None = None) -> None:
        self.env = env
        self.notify = NotifySocket(env.tmp / f"notify-{time.monotonic_ns()}.sock")
        environ = {**os.environ, **env.environ, "PREFETCHD_CONFIG": str(env.config),
                   "NOTIFY_SOCKET": str(self.notify.path), **(extra_env or {})}
        self.log = open(env.tmp / "daemon.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "prefetchd.cli", "run"], env=environ, cwd=REPO,
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
        )

    def ready(self, timeout: float = 20.0) -> DaemonProc:
        self.notify.wait_for("READY=1", timeout)
        return self

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int:
        if self.alive:
            self.proc.terminate()
        try:
            rc = self.proc.wait(timeout)
        finally:
            self.log.close()
            self.notify.close()
        return rc

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.log.close()
        self.notify.close()

    def logtext(self) -> str:
        return (self.env.tmp / "daemon.log").read_text()

