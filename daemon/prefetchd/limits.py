"""Size and type limits from [limits]: pure checks the fetch engine calls.

Sizes are checked against the announced size before a download and against the
bytes received while streaming; the optional magic-byte check compares the first
bytes with the type the file's name claims.
"""

from __future__ import annotations

from .config import LimitsSettings
from .errors import LimitError

MAGIC: dict[str, tuple[bytes, ...]] = {
    "pdf": (b"%PDF-",),
    "png": (b"\x89PNG\r\n\x1a\n",),
    "jpg": (b"\xff\xd8\xff",),
    "jpeg": (b"\xff\xd8\xff",),
    "gif": (b"GIF87a", b"GIF89a"),
    "webp": (b"RIFF",),
    "zip": (b"PK\x03\x04", b"PK\x05\x06"),
    "docx": (b"PK\x03\x04",),
    "xlsx": (b"PK\x03\x04",),
    "pptx": (b"PK\x03\x04",),
    "epub": (b"PK\x03\x04",),
    "jar": (b"PK\x03\x04",),
    "gz": (b"\x1f\x8b",),
    "tgz": (b"\x1f\x8b",),
    "bz2": (b"BZh",),
    "xz": (b"\xfd7zXZ\x00",),
    "zst": (b"\x28\xb5\x2f\xfd",),
    "parquet": (b"PAR1",),
    "sqlite": (b"SQLite format 3\x00",),
    "wasm": (b"\x00asm",),
}
MAGIC_BYTES_NEEDED = max(len(m) for ms in MAGIC.values() for m in ms)


def file_type(name: str | None) -> str:
    """The lowercase extension that names a file's type ('' if none)."""
    if not name or "." not in name.strip("."):
        return ""
    return name.rsplit(".", 1)[-1].lower()


def check_size(limits: LimitsSettings, file_id: str, name: str | None, size: int | None) -> None:
    """Raise LimitError when `size` is over the overall or per-type maximum."""
    if size is None:
        return
    if limits.max_file_size is not None and size > limits.max_file_size:
        raise LimitError(
            f"{file_id}: {size} bytes is over limits.max_file_size ({limits.max_file_size})"
        )
    kind = file_type(name)
    cap = limits.max_size_by_type.get(kind)
    if cap is not None and size > cap:
        raise LimitError(
            f"{file_id}: {size} bytes is over limits.max_size_by_type.{kind} ({cap})"
        )


def check_magic(limits: LimitsSettings, file_id: str, name: str | None, head: bytes) -> None:
    """Raise LimitError when the first bytes are not of the type the name claims."""
    if not limits.check_magic:
        return
    kind = file_type(name)
    expected = MAGIC.get(kind)
    if expected and not head.startswith(expected):
        raise LimitError(
            f"{file_id}: the bytes are not a .{kind} file (first bytes {head[:8].hex()})"
        )
