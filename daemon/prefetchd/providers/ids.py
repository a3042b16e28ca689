"""What a file_id must look like for a provider type to serve it; checked when a
request arrives (prefetchd.resolve) and again by the provider as it opens."""

from __future__ import annotations

import re

from ..errors import UsageError

_NOT_IN_SEGMENT = re.compile(r"[/?#%\s\x00-\x1f\x7f]")


def check_dir_file_id(file_id: str, provider: str) -> None:
    """A `dir` provider's file_id is a relative path of normal components inside its
    folder; the provider checks again as it opens (and never follows a symlink)."""
    parts = file_id.split("/")
    if file_id.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise UsageError(f"file_id {file_id[:80]!r} cannot be a file of provider {provider} "
                         "(a dir provider's file id is a relative path inside its folder: "
                         "no leading '/', no empty, '.' or '..' component)")


def check_openai_file_id(file_id: str, provider: str) -> None:
    """An OpenAI-style file id is one URL path segment: `/files/{id}` must name a file.

    `.` or `..` would make the SDK ask for the file list or the API root instead.
    """
    if file_id in (".", "..") or _NOT_IN_SEGMENT.search(file_id):
        raise UsageError(f"file_id {file_id[:80]!r} cannot be a file of provider {provider} "
                         "(an OpenAI-style file id is one path segment: not '.' or '..', "
                         "no '/', '?', '#', '%', spaces or control characters)",
                         file_id=file_id)
