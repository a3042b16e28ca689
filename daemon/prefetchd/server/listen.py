"""The socket file: where it goes, its mode and group, put in place whole.

The socket is bound under a temporary name, given its group and mode 0660, and
renamed over the final name before it listens: nobody ever connects to it with the
umask's mode, and a stale socket left by a killed daemon is replaced in one step
(the state dir's lock already says no other daemon runs here; one that answers on
the path, from another state dir, is not displaced). Under systemd the socket lives
in $RUNTIME_DIRECTORY (/run/prefetchd) and <state_dir>/api.sock, where clients look,
is a symlink to it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Mapping
from pathlib import Path

from ..config import Settings
from ..errors import ConfigError, PrefetchError

SOCKET_MODE = 0o660
BACKLOG = 128
MAX_PATH = 107  # bytes of sun_path, less its NUL


def listen_path(settings: Settings, environ: Mapping[str, str]) -> Path:
    """`[api] socket`; else $RUNTIME_DIRECTORY/api.sock under systemd; else
    <state_dir>/api.sock."""
    if settings.api.socket is not None:
        return settings.api.socket
    runtime = environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime:
        return Path(runtime) / "api.sock"
    return settings.api_socket


class Listener:
    """A listening Unix socket at `path` (and a symlink to it at `link`), removed by
    close() if they are still the ones this daemon made."""

    def __init__(self, path: Path, link: Path | None, gid: int) -> None:
        self.path = path
        self.link = link
        _check_free(path)
        if link is not None:
            _check_free(link)
        self.sock = _bind(path, gid)
        self.ino = os.stat(path).st_ino
        if link is not None:
            _symlink(path, link)

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path, follow_symlinks=False).st_ino == self.ino:
                os.unlink(self.path)
        if self.link is not None:
            with contextlib.suppress(OSError):
                if os.readlink(self.link) == str(self.path):
                    os.unlink(self.link)


def _check_free(path: Path) -> None:
    """Refuse to replace anything but a socket or symlink, or a socket that answers."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not (stat.S_ISSOCK(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        raise PrefetchError(f"{path} exists and is not a socket; move it away or set "
                            "[api] socket", path=str(path))
    if stat.S_ISSOCK(st.st_mode):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
            except OSError:
                return  # stale: nobody listens
        raise PrefetchError(f"another process serves {path}; set [api] socket to "
                            "another path", path=str(path))


def _bind(path: Path, gid: int) -> socket.socket:
    if len(os.fsencode(path)) > MAX_PATH:
        raise ConfigError(f"api.socket: {path} is longer than a Unix socket path may be "
                          f"({MAX_PATH} bytes); set [api] socket to a shorter one")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(str(tmp))
        _give_group(tmp, path, gid)
        os.chmod(tmp, SOCKET_MODE)
        os.rename(tmp, path)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return sock


def _give_group(tmp: Path, path: Path, gid: int) -> None:
    """The socket's group; chown only when it differs (the shipped unit's system call
    filter forbids chown, and its socket already has the daemon's group)."""
    if os.stat(tmp).st_gid == gid:
        return
    try:
        os.chown(tmp, -1, gid)
    except PermissionError as e:
        raise ConfigError(
            f"api.group: cannot give {path} group {gid} ({e.strerror}): the daemon's user "
            "must be a member of it; under the systemd unit, set Group= to it instead") from None


def _symlink(target: Path, link: Path) -> None:
    """`link` -> `target`, replacing an old link in one step."""
    tmp = link.parent / f".{link.name}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.rename(tmp, link)
