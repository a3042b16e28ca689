"""The providers and their limits under the current settings: what a reload replaces.

The engine owns one and changes it in place on reload (SIGHUP), so a download in
flight reads its next attempt's provider and retry settings from the new
configuration, as it always has; old providers are closed at the end, so downloads
in flight keep their connections.
"""

from __future__ import annotations

import asyncio
import random

from ..config import Settings
from ..providers import Provider, build_provider
from ..resolve import Resolver


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**attempt))."""
    return rng.uniform(0, min(cap, base * (2**attempt)))


class Pools:
    """The settings, the resolver, one instance of each provider (built on first use)
    and each provider's limit; the retry backoff."""

    def __init__(self, settings: Settings, rng: random.Random) -> None:
        self.settings = settings
        self.resolver = Resolver(settings, self._returns_original)
        self._rng = rng
        self._providers: dict[str, Provider] = {}
        self._retired: list[Provider] = []
        self._per: dict[str, asyncio.Semaphore] = {}

    def reconfigure(self, settings: Settings) -> None:
        """Take new settings; providers are rebuilt on next use, old ones closed at
        `aclose`."""
        self.settings = settings
        self.resolver = Resolver(settings, self._returns_original)
        self._retired.extend(self._providers.values())
        self._providers = {}
        self._per = {}

    async def aclose(self) -> None:
        for p in [*self._providers.values(), *self._retired]:
            await p.aclose()
        self._providers.clear()
        self._retired.clear()

    def provider(self, name: str) -> Provider:
        if name not in self._providers:
            self._providers[name] = build_provider(name, self.settings)
        return self._providers[name]

    def _returns_original(self, name: str) -> bool:
        return self.provider(name).returns_original

    def semaphore(self, name: str) -> asyncio.Semaphore:
        """The per-provider limit: its `concurrency`, else per_provider_concurrency."""
        if name not in self._per:
            cfg = self.settings.provider_config(name)
            n = (cfg.concurrency if cfg is not None and cfg.concurrency else
                 self.settings.download.per_provider_concurrency)
            self._per[name] = asyncio.Semaphore(n)
        return self._per[name]

    def backoff(self, attempt: int) -> float:
        dl = self.settings.download
        return backoff_delay(attempt, dl.backoff_base, dl.backoff_max, self._rng)
