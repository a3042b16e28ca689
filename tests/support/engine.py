"""The fetch engine run in this process on one file, with a recording sleep."""

from __future__ import annotations

import asyncio
from typing import Any

from prefetchd.api import Prefetch
from prefetchd.fetch import Engine, Outcome


class SleepRecorder:
    """Records the delays the engine asks for and sleeps a token amount instead."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


def fetch(p: Prefetch, file_id: str, *, sleep: Any = None, **want: Any) -> Outcome:
    """Want one file and run the engine on it in this process."""
    p.want([file_id], **want)

    async def go() -> Outcome:
        eng = Engine(p.settings, p.manifest, p.store, sleep=sleep or asyncio.sleep)
        try:
            return await eng.fetch(file_id)
        finally:
            await eng.aclose()

    return asyncio.run(go())
