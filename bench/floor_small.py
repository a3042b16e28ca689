#!/usr/bin/env python3
"""The machine's floor for N small files: what prefetchd's disk work for them costs
with nothing else (no network, no hashing, no SQLite, no Python beyond the calls).

    .venv/bin/python bench/floor_small.py SRC_DIR ROOT

For each file of SRC_DIR (read from the page cache): write it to a new temp under
ROOT/.prefetchd/tmp/, make its directory downloads/<id>/, link it into
.prefetchd/objects/sha256/ab/ (its name: a hash of the file's name, as unique as a
sha256) and at downloads/<id>/<name> (a free name, so linked directly, as prefetchd's
group commit links), and remove the temp; then one syncfs makes all of it durable. bench/run.py
times this beside prefetchd and aria2c in the same run. Not collected by pytest.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import sys

_libc = ctypes.CDLL(None, use_errno=True)


def main(src: str, root: str) -> int:
    meta = os.path.join(root, ".prefetchd")
    tmp = os.path.join(meta, "tmp")
    objects = os.path.join(meta, "objects", "sha256")
    os.makedirs(tmp, exist_ok=True)
    os.makedirs(objects, exist_ok=True)
    os.makedirs(os.path.join(root, "downloads"), exist_ok=True)
    for name in sorted(os.listdir(src)):
        with open(os.path.join(src, name), "rb") as f:
            data = f.read()
        key = hashlib.sha256(name.encode()).hexdigest()
        part = os.path.join(tmp, f"{key[:16]}.part")
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        os.write(fd, data)
        os.close(fd)
        obj_dir = os.path.join(objects, key[:2])
        os.makedirs(obj_dir, exist_ok=True)
        obj = os.path.join(obj_dir, key[2:])
        os.link(part, obj)
        dest_dir = os.path.join(root, "downloads", key[:16])
        os.mkdir(dest_dir)
        os.link(part, os.path.join(dest_dir, name))  # a free name: linked directly
        os.unlink(part)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    if _libc.syncfs(fd) != 0:
        raise OSError(ctypes.get_errno(), "syncfs")
    os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
