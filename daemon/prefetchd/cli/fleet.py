"""`prefetchd fleet want|unwant|forget|status`: the group's shared wanted-set."""

from __future__ import annotations

import argparse

from .base import REQUEST, Io, arg, command
from .show import human


@command(
    arg("action", choices=["want", "unwant", "forget", "status"],
        help="want/unwant/forget: change the group's wanted-set; status: the group's hosts"),
    arg("file_ids", nargs="*", metavar="FILE_ID",
        help="file_ids to change; for status, one file_id to show which hosts have it"),
    *REQUEST[1:],
    arg("--group", metavar="NAME", help="the group (default: [fleet] group)"),
    arg("--json", action="store_true",
        help="status as JSON: {group, hosts: [{host, last_seen, seen_ago_s, version, "
             "ready, queued, failed, bytes}], file: {file_id, hosts: [{host, state, "
             "sha256, size, updated_at}]}}"),
    example="prefetchd fleet want file-abc --group lab",
)
def fleet(a: argparse.Namespace, io: Io) -> int:
    """The fleet's shared wanted-set (needs [fleet] and [supabase]): every host of the
    group applies it within [fleet] poll_interval. A fleet unwant or forget never
    removes what a local user wants on a host, and the reverse. Writing needs a key
    allowed to write the wanted-set (the service key); host keys only read it."""
    from ..fleet import admin
    from ..supa import fleet_group

    settings = io.settings()
    if a.action == "status":
        if len(a.file_ids) > 1:
            io.tell("error: fleet status takes at most one file_id")
            return 2
        res = admin.status(settings, group=a.group,
                           file_id=a.file_ids[0] if a.file_ids else None)
        if a.json:
            io.json(res)
            return 0
        _show_status(io, res)
        return 0
    revision = admin.change(settings, a.action, a.file_ids, group=a.group,
                            provider=a.provider, sha256=a.sha256, size=a.size, dest=a.dest,
                            pin=a.pin, ttl=a.ttl)
    io.say(f"{a.action}: {len(set(a.file_ids))} file_id(s) in group "
           f"{a.group or fleet_group(settings)}, revision {revision}")
    return 0


def _show_status(io: Io, res: dict) -> None:
    io.say(f"group {res['group']}: {len(res['hosts'])} host(s)")
    for h in res["hosts"]:
        ago = h.get("seen_ago_s")
        io.say(f"  {h['host']}: seen {'never' if ago is None else f'{ago:.0f}s ago'}, "
               f"ready {h.get('ready') or 0}, queued {h.get('queued') or 0}, "
               f"failed {h.get('failed') or 0}, {human(h.get('bytes') or 0)}")
    if "file" in res:
        f = res["file"]
        io.say(f"{f['file_id']}: on {sum(1 for h in f['hosts'] if h['state'] == 'ready')}"
               f" host(s)")
        for h in f["hosts"]:
            io.say(f"  {h['host']}: {h['state']}")
