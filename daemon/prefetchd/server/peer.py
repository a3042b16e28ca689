"""Who is asking, and what they may do.

The kernel says who: SO_PEERCRED gives the uid, gid and pid the peer had when it
connected, SO_PEERGROUPS its supplementary groups (read from /proc/<pid>/status when
the kernel cannot say). Connecting at all needs the socket's mode (0660) and group:
that is the right to want, get, path, ls, status, release and stats. gc, verify,
stats push and acting on another holder's claims (`holder: "uid:N"`, `all`) need
uid 0, the daemon's own uid, or `[api] admin_group`.
"""

from __future__ import annotations

import grp
import os
import socket
import struct
from dataclasses import dataclass

from ..config import Settings
from ..errors import ConfigError

# Not in Python's socket module; its value on every Linux architecture.
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_GROUPS_BUFFER = 1024  # the most getsockopt() takes from Python: 256 groups


@dataclass(frozen=True)
class Peer:
    uid: int
    gid: int
    pid: int
    groups: frozenset[int]


def peer_of(sock: socket.socket) -> Peer:
    """The credentials of the process at the other end of a Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(uid, gid, pid, _groups(sock, pid))


def _groups(sock: socket.socket, pid: int) -> frozenset[int]:
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, _GROUPS_BUFFER)
    except OSError:  # older kernel, or more groups than the buffer holds
        return _proc_groups(pid)
    return frozenset(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))


def _proc_groups(pid: int) -> frozenset[int]:
    """The `Groups:` line of /proc/<pid>/status (empty when it cannot be read: the
    peer then counts by its uid and primary gid alone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return frozenset(int(g) for g in line.split()[1:])
    except OSError:
        pass
    return frozenset()


def group_id(name: str | None, key: str) -> int | None:
    """A group name (or number) from the config as a gid; None when not set."""
    if name is None:
        return None
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(f"{key}: no group named {name!r}") from None


@dataclass(frozen=True)
class Access:
    """The admin rule of one set of settings (they follow SIGHUP)."""

    admin_group: str | None
    admin_gid: int | None

    @classmethod
    def of(cls, settings: Settings) -> Access:
        name = settings.api.admin_group
        return cls(name, group_id(name, "api.admin_group"))

    def admin(self, peer: Peer) -> bool:
        if peer.uid in (0, os.getuid()):
            return True
        gid = self.admin_gid
        return gid is not None and (peer.gid == gid or gid in peer.groups)

    def refusal(self, what: str) -> str:
        """Why `what` was refused, naming the group that would allow it."""
        if self.admin_group is None:
            return f"{what} needs uid 0 or the daemon's user, or set [api] admin_group"
        return f"{what} needs uid 0, the daemon's user, or group {self.admin_group}"
