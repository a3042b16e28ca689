"""Validation of a request, once for every front (CLI, inbox, Python API, socket, MCP,
fleet).

A request names file_ids and, for a want, what each must be and where it goes: its
`Options`, the one record every front's options become, each front converting its own
form once (the CLI's flags, the API's keywords, a socket body, an MCP call, a request
file's entry, a fleet row). Nothing here changes anything: a request is checked whole
(`spec`, `check_count`) and turned into manifest entries (`WantSpec`), so a bad entry
leaves the manifest untouched, and every front refuses the same things in the same
words.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from .config import Settings, Size, parse_duration
from .errors import PrefetchError, UsageError
from .manifest import Manifest, WantSpec
from .manifest.wanted import Named
from .records import check_sub_holder, uid_holder
from .resolve import resolve_provider
from .store import check_sha256, validate_dest

MAX_FILE_ID = 2048  # characters


class RequestError(ValueError):
    """A request file is malformed; the message says exactly what and where."""


class RequestEntry(BaseModel):
    """One entry of a request file (`*.json`), as its writer gave it."""

    model_config = ConfigDict(extra="forbid")

    file_id: str = Field(min_length=1, max_length=MAX_FILE_ID)
    provider: str | None = None
    sha256: str | None = None
    size: Size | None = None  # units as `--size` takes them ("3MB", "512MiB", 123)
    dest: str | None = Field(None, min_length=1)
    pin: StrictBool = False
    ttl: str | float | None = None
    action: Literal["want", "unwant", "forget"] = "want"
    holder: str | None = Field(None, min_length=1, max_length=64)

    def options(self) -> Options:
        """The inbox's one conversion into the want's options."""
        return Options(provider=self.provider, sha256=self.sha256, size=self.size,
                       dest=self.dest, pin=self.pin, ttl=self.ttl)


@dataclass(frozen=True)
class Options:
    """What a want may say about its file besides the id, as a front was given it (not
    yet checked: `spec` does that); an option left out (None) keeps the earlier value
    of the requester's own claim."""

    provider: str | None = None
    sha256: str | None = None
    size: int | None = None
    dest: str | None = None
    pin: bool = False
    ttl: str | float | None = None  # a duration ("24h") or seconds

    def any_given(self) -> bool:
        """Whether any option is given (unwant and forget take none)."""
        return bool(self.provider or self.sha256 or self.size is not None or self.dest
                    or self.pin or self.ttl)


@dataclass
class Request:
    """One validated request, applied in one manifest transaction: forgets, then
    unwants, then wants (so `forget X` + `want X` starts X afresh)."""

    wants: list[WantSpec] = field(default_factory=list)
    unwants: list[Named] = field(default_factory=list)
    forgets: list[Named] = field(default_factory=list)


def want_specs(settings: Settings, manifest: Manifest, file_ids: Sequence[str],
               opts: Options) -> list[WantSpec]:
    """Validate a want of these ids (CLI, API, socket, MCP) and turn it into manifest
    entries."""
    check_count(file_ids, opts)
    specs = [spec(settings, fid, opts) for fid in file_ids]
    for s in specs:
        check_dest_free(manifest, s)
    return specs


def check_count(file_ids: Sequence[str], opts: Options) -> None:
    """A request names at least one file_id, and only one when it says what that file
    is or where it goes (the same sha256, size or dest cannot fit several)."""
    if not file_ids:
        raise UsageError("no file_id given")
    if (opts.sha256 or opts.size is not None or opts.dest) and len(file_ids) > 1:
        raise UsageError("--sha256, --size and --dest apply to one file_id at a time")


def spec(settings: Settings | None, file_id: str, opts: Options) -> WantSpec:
    """One file_id and its options checked: the id, its provider (with settings: the
    fleet's admin has none, only the hosts resolve a provider), hash, size, dest, ttl."""
    check_file_id(file_id)
    if settings is not None:  # refuses ids no provider can serve
        resolve_provider(file_id, opts.provider, settings)
    return WantSpec(
        file_id=file_id,
        provider=opts.provider,
        sha256=check_sha256(opts.sha256) if opts.sha256 else None,
        size=check_size(opts.size),
        dest="/".join(validate_dest(opts.dest)) if opts.dest else None,
        pin=bool(opts.pin),
        ttl=check_ttl(opts.ttl),
    )


def from_entries(settings: Settings, manifest: Manifest,
                 entries: Sequence[RequestEntry], uid: int | None = None) -> Request:
    """Validate the entries of a request file written by `uid` (the file's owner; None:
    this process's): each entry is that user's claim, or its sub-holder's when the
    entry names a `holder`. RequestError names the first bad entry."""
    req = Request()
    owner = os.getuid() if uid is None else uid
    for i, e in enumerate(entries):
        try:
            who = _holder(owner, e.holder)
            named: Named = e.file_id if who is None else (e.file_id, who)
            if e.action == "unwant":
                req.unwants.append(named)
            elif e.action == "forget":
                _forget_only(e)
                req.forgets.append(named)
            else:
                req.wants.append(replace(_want(settings, manifest, e),
                                         holder=who or uid_holder(owner)))
        except PrefetchError as err:
            raise RequestError(f"entry {i} ({e.file_id[:80]}): {err}") from None
    dests = [w.dest for w in req.wants if w.dest]
    if len(dests) != len(set(dests)):
        raise RequestError("two entries name the same dest")
    return req


def _forget_only(e: RequestEntry) -> str:
    if e.model_fields_set - {"file_id", "action", "holder"}:
        raise UsageError("forget takes only file_id (and holder)")
    return e.file_id


def _holder(uid: int, sub: str | None) -> str | None:
    """The holder an entry's `holder` names: a sub-holder of the file's owner (never
    another user: who wrote the file decides, not what it says)."""
    if sub is None:
        return None
    try:
        return uid_holder(uid, check_sub_holder(sub))
    except ValueError as e:
        raise UsageError(str(e)) from None


def _want(settings: Settings, manifest: Manifest, e: RequestEntry) -> WantSpec:
    s = spec(settings, e.file_id, e.options())
    check_dest_free(manifest, s)
    return s


def check_file_id(file_id: object) -> None:
    if (not isinstance(file_id, str) or not file_id.strip() or "\x00" in file_id
            or len(file_id) > MAX_FILE_ID):
        raise UsageError(f"file_id {str(file_id)[:80]!r} is empty, too long or has a NUL")


def check_size(size: int | None) -> int | None:
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise UsageError(f"size: {size!r} is not a byte count")
    return size


def check_ttl(ttl: str | float | None) -> float | None:
    if ttl is None:
        return None
    try:
        return parse_duration(ttl)
    except ValueError as e:
        raise UsageError(f"ttl: {e}") from None


def check_dest_free(manifest: Manifest, s: WantSpec) -> None:
    """A dest another file uses (a claim's dest, or a file's path) is refused: two ids
    cannot share one place. Claims on the same file may share a dest (one link)."""
    if not s.dest:
        return
    other = manifest.dest_user(s.dest, s.file_id)
    if other is not None:
        raise UsageError(f"dest {s.dest} is already used by file_id {other}")
