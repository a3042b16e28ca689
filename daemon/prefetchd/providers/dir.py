"""`dir`: a file under a local or network directory (quick start, mirrors, tests).

The file_id is a relative path below the configured folder. Every component is
opened relative to the folder's fd with O_NOFOLLOW, so neither `..` nor a symlink
inside the folder can reach a file outside it.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from ..errors import NotFoundError, PermanentError, TransientError
from .base import READ_SIZE, Body, Provider


class DirProvider(Provider):
    def __init__(self, name: str, *, path: Path) -> None:
        super().__init__(name)
        self.path = path

    def _open_file(self, file_id: str) -> int:
        parts = file_id.split("/")
        if file_id.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in file_id:
            raise PermanentError(
                f"{self.name}: {file_id[:80]!r} is not a relative path inside {self.path}"
            )
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise TransientError(f"{self.name}: cannot open {self.path}: {e.strerror}") from None
        try:
            for p in parts[:-1]:
                nfd = os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=fd)
                os.close(fd)
                fd = nfd
            ffd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except FileNotFoundError:
            raise NotFoundError(f"{self.name}: {file_id} not found in {self.path}") from None
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise PermanentError(
                    f"{self.name}: {file_id} goes through a symlink; refusing to follow it"
                ) from None
            raise TransientError(f"{self.name}: cannot open {file_id}: {e.strerror}") from None
        finally:
            os.close(fd)
        if not stat.S_ISREG(os.fstat(ffd).st_mode):
            os.close(ffd)
            raise PermanentError(f"{self.name}: {file_id} is not a regular file")
        return ffd

    @asynccontextmanager
    async def open(
        self, file_id: str, offset: int = 0, validator: str | None = None
    ) -> AsyncIterator[Body]:
        fd = await asyncio.to_thread(self._open_file, file_id)
        try:
            st = os.fstat(fd)
            current = f"{st.st_mtime_ns}-{st.st_size}"
            start = offset if offset and validator == current and offset <= st.st_size else 0
            yield Body(_chunks(fd, start), start, st.st_size, file_id.rsplit("/", 1)[-1], current,
                       dated=True)  # mtime+size: says when, not what (see base.Body)
        finally:
            os.close(fd)


async def _chunks(fd: int, start: int) -> AsyncIterator[bytes]:
    pos = start
    while True:
        block = await asyncio.to_thread(os.pread, fd, READ_SIZE, pos)
        if not block:
            return
        pos += len(block)
        yield block
