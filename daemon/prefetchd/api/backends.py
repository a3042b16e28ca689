"""The API's two backends, behind one seam: the operations in this process on a
manifest and a store (`LocalBackend`), or the daemon's local API (`SocketBackend`).

Both have the same methods with the same arguments and return types; `Prefetch`
(api/__init__.py) picks one when it is made and only checks arguments itself. The daemon's
routes call a LocalBackend on the daemon's own handles, for the peer's holder.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from ..config import Settings
from ..errors import BadRequest, Forbidden, NotReadyError
from ..manifest import Manifest, WantSpec
from ..ops import gc as gc_op
from ..ops import get as get_op
from ..ops import status as status_op
from ..ops import verify as verify_op
from ..ops.forget import forget as forget_op
from ..ops.here import fetch_here
from ..ops.release import release as release_op
from ..ops.results import GetResult, Wait
from ..ops.want import unwant as unwant_op
from ..ops.want import want as want_op
from ..records import Removal, holder_label, holder_uid, parse_holder, uid_holder
from ..requests import Options, want_specs
from ..runtime import daemon_pid
from ..shapes import GcResult, LsRow, StatsRow, Status, VerifyRow
from ..store import Store
from .args import bad_request, result_of, want_body
from .client import Client, WantBody, Watch


class Backend(Protocol):
    """What every call of the API does, wherever it runs. `holder` is a sub-holder
    name or an admin's `uid:N` (None: the caller's own claims); `every`, an admin's
    "every local claim"."""

    def want(self, ids: list[str], opts: Options, holder: str | None) -> list[str]: ...
    def unwant(self, ids: list[str], holder: str | None) -> list[str]: ...
    def get_many(self, ids: list[str], opts: Options, holder: str | None, wait: Wait,
                 watch: Watch | None) -> list[GetResult]: ...
    def locate(self, file_id: str, holder: str | None) -> Path: ...
    def release(self, ids: list[str], holder: str | None, every: bool) -> Removal: ...
    def forget(self, ids: list[str], holder: str | None, every: bool) -> Removal: ...
    def gc(self, dry_run: bool) -> GcResult: ...
    def ls(self, state: str | None, mine: bool) -> Iterator[LsRow]: ...
    def status(self) -> Status: ...
    def verify(self, ids: list[str] | None) -> list[VerifyRow]: ...
    def stats(self) -> list[StatsRow]: ...
    def push_stats(self) -> int: ...
    def close(self) -> None: ...


class LocalBackend:
    """The operations in this process, on its own manifest and store.

    `uid` is whose claims a call acts on by default (this process's; the daemon's
    routes give the peer's), `admin` whether it may act on others' claims (None: root
    or the state dir's owner) and `refusal` how a refusal words what was needed (the
    daemon's names its admin group)."""

    def __init__(self, settings: Settings, manifest: Manifest, store: Store, *,  # noqa: PLR0913
                 uid: int | None = None, admin: bool | None = None,
                 refusal: Callable[[str], str] | None = None, in_daemon: bool = False) -> None:
        self.settings = settings
        self.manifest = manifest
        self.store = store
        self.uid = os.getuid() if uid is None else uid
        self.admin = admin
        self.refusal = refusal or (lambda what: f"{what} needs uid 0 or the daemon's user")
        self.in_daemon = in_daemon

    def close(self) -> None:
        self.manifest.close()
        self.store.close()

    # -- whose claims ---------------------------------------------------------------------

    def holder(self, given: str | None, every: bool = False) -> str:
        """The holder a call acts for: the caller's own (`uid:N`), one of its
        sub-holders (`job-42`), or (an admin only) another user's (`uid:1000`);
        `every` (an admin only: every local claim) checks the right alone. A refusal
        is Forbidden (403 through the daemon), naming what would allow it."""
        try:
            holder = parse_holder(given, self.uid) if given else uid_holder(self.uid)
        except ValueError as e:
            raise BadRequest(str(e)) from None
        if every or holder_uid(holder) != self.uid:
            what = ("acting on every holder's claims (--all)" if every
                    else f"acting on the claims of {holder_label(holder)}")
            if not self._may_act_for_others():
                raise Forbidden(self.refusal(what))
        return holder

    def _may_act_for_others(self) -> bool:
        if self.admin is not None:
            return self.admin
        try:
            owner = self.settings.state_dir.stat().st_uid
        except OSError:
            owner = -1
        return self.uid in (0, owner)

    # -- the operations -------------------------------------------------------------------

    def specs(self, ids: list[str], opts: Options) -> list[WantSpec]:
        with bad_request():
            return want_specs(self.settings, self.manifest, ids, opts)

    def want(self, ids: list[str], opts: Options, holder: str | None) -> list[str]:
        specs = self.specs(ids, opts)
        want_op(self.manifest, self.store, specs, holder=self.holder(holder))
        return [s.file_id for s in specs]

    def unwant(self, ids: list[str], holder: str | None) -> list[str]:
        unwant_op(self.manifest, ids, holder=self.holder(holder))
        return ids

    def get_many(self, ids: list[str], opts: Options, holder: str | None, wait: Wait,
                 watch: Watch | None) -> list[GetResult]:
        return get_op.get_many(self.settings, self.manifest, self.store,
                               self.specs(ids, opts), wait, self.holder(holder))

    def locate(self, file_id: str, holder: str | None) -> Path:
        who = self.holder(holder)
        found = status_op.path(self.manifest, self.store, file_id, who)
        if found is None:
            raise NotReadyError(status_op.not_ready(self.manifest, file_id, who),
                                file_id=file_id)
        return found

    def release(self, ids: list[str], holder: str | None, every: bool) -> Removal:
        return release_op(self.manifest, self.store, ids, holder=self.holder(holder, every),
                          every=every, in_daemon=self.in_daemon)

    def forget(self, ids: list[str], holder: str | None, every: bool) -> Removal:
        return forget_op(self.manifest, self.store, ids, holder=self.holder(holder, every),
                         every=every, in_daemon=self.in_daemon)

    def gc(self, dry_run: bool) -> GcResult:
        return gc_op.gc(self.settings, self.manifest, self.store, dry_run=dry_run)

    def ls(self, state: str | None, mine: bool) -> Iterator[LsRow]:
        with bad_request():
            status_op.check_state(state)  # now, not at the first row
        return status_op.ls(self.manifest, self.store.root, state, self.uid if mine else None)

    def status(self) -> Status:
        return status_op.status(self.settings, self.manifest, self.store)

    def verify(self, ids: list[str] | None) -> list[VerifyRow]:
        """Re-hash; without a daemon to do it, re-fetch here what was bad."""
        report, refetch = verify_op.verify(self.manifest, self.store, ids)
        fetched = self.fetch_here_if_alone(refetch)
        for row in report:
            if row["file_id"] in fetched:
                row["refetched"] = fetched[row["file_id"]].error is None
        return report

    def fetch_here_if_alone(self, file_ids: list[str]) -> dict[str, GetResult]:
        if not file_ids or daemon_pid(self.settings.lock_path) is not None:
            return {}
        results = asyncio.run(fetch_here(self.settings, self.manifest, self.store, file_ids,
                                         Wait()))
        return {r.file_id: r for r in results}

    def stats(self) -> list[StatsRow]:
        return status_op.stats(self.manifest)

    def push_stats(self) -> int:
        from ..mirror import Mirror

        return Mirror(self.settings).push(self.manifest)


class SocketBackend:
    """The daemon's local API: the same calls, over its Unix socket."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def close(self) -> None:
        self.client.close()

    def want(self, ids: list[str], opts: Options, holder: str | None) -> list[str]:
        return self.client.want(_with_holder(want_body(ids, opts), holder))

    def unwant(self, ids: list[str], holder: str | None) -> list[str]:
        return self.client.unwant(ids, holder)

    def get_many(self, ids: list[str], opts: Options, holder: str | None, wait: Wait,
                 watch: Watch | None) -> list[GetResult]:
        body = _with_holder(want_body(ids, opts), holder)
        body["timeout"] = wait.timeout
        rows = self.client.get(body, watch, wait.notice)
        # Rows name URLs in their display form: the ids given are the caller's own.
        return [result_of(row, fid) for row, fid in zip(rows, ids, strict=True)]

    def locate(self, file_id: str, holder: str | None) -> Path:
        return Path(self.client.path(file_id, holder))

    def release(self, ids: list[str], holder: str | None, every: bool) -> Removal:
        return self.client.release(ids, holder, every)

    def forget(self, ids: list[str], holder: str | None, every: bool) -> Removal:
        return self.client.forget(ids, holder, every)

    def gc(self, dry_run: bool) -> GcResult:
        return self.client.gc(dry_run)

    def ls(self, state: str | None, mine: bool) -> Iterator[LsRow]:
        return self.client.ls(state, mine)

    def status(self) -> Status:
        return self.client.status()

    def verify(self, ids: list[str] | None) -> list[VerifyRow]:
        return self.client.verify(ids or [])

    def stats(self) -> list[StatsRow]:
        return self.client.stats()

    def push_stats(self) -> int:
        return self.client.push_stats()


def _with_holder(body: WantBody, holder: str | None) -> WantBody:
    if holder:
        body["holder"] = holder
    return body
