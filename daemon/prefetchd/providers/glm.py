"""`glm`: GLM (Zhipu) files cannot be downloaded through its API; say so clearly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ..errors import NotFoundError
from .base import Body, Provider


class GlmProvider(Provider):
    @asynccontextmanager
    async def open(
        self, file_id: str, offset: int = 0, validator: str | None = None
    ) -> AsyncIterator[Body]:
        # NotFound, not just permanent: a stored copy elsewhere may serve as the fallback.
        raise NotFoundError(
            f"{self.name}: GLM files cannot be downloaded ({file_id}); "
            "name another provider that holds a copy"
        )
        yield  # pragma: no cover - makes this an async generator
