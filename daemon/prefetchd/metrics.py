"""Optional Prometheus metrics on loopback (prometheus-client), off by default.

Counters are fed from the engine's outcomes; gauges are refreshed by the daemon
every few seconds from the manifest, and about once a minute from a walk of the
store's objects.
"""

from __future__ import annotations

from .config import MetricsSettings
from .errors import ConfigError
from .shapes import StoreTotals


class Metrics:
    def __init__(self, cfg: MetricsSettings) -> None:
        try:
            import prometheus_client as prom
        except ImportError:
            raise ConfigError(
                "metrics.enabled needs prometheus-client: pip install 'prefetchd[metrics]'"
            ) from None
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.downloads = prom.Counter("prefetchd_downloads", "Downloads by outcome",
                                      ["provider", "outcome"], registry=r)
        self.bytes = prom.Counter("prefetchd_downloaded_bytes", "Bytes downloaded",
                                  ["provider"], registry=r)
        self.retries = prom.Counter("prefetchd_retries", "Retried attempts", ["provider"],
                                    registry=r)
        self.verify_failures = prom.Counter("prefetchd_verify_failures",
                                            "Objects that failed re-hashing", registry=r)
        self.evictions = prom.Counter("prefetchd_evictions", "Files deleted by retention",
                                      ["kind"], registry=r)
        self.queue = prom.Gauge("prefetchd_queue_depth", "Entries waiting to download",
                                registry=r)
        self.in_flight = prom.Gauge("prefetchd_in_flight", "Downloads running", registry=r)
        self.store_bytes = prom.Gauge("prefetchd_store_bytes", "Bytes in the object store",
                                      registry=r)
        self.store_files = prom.Gauge("prefetchd_store_files", "Objects in the store",
                                      registry=r)
        self.states = prom.Gauge("prefetchd_entries", "Manifest entries by state", ["state"],
                                 registry=r)
        self.outbox = prom.Gauge("prefetchd_outbox_backlog", "Events not yet mirrored",
                                 registry=r)
        self.server, self.thread = prom.start_http_server(cfg.port, addr=cfg.address, registry=r)

    def close(self) -> None:
        self.server.shutdown()

    def observe(self, kind: str, provider: str, nbytes: int) -> None:
        """The engine's outcomes: `retry`, or a download's kind with its bytes."""
        if kind == "retry":
            self.retries.labels(provider).inc()
            return
        self.downloads.labels(provider, kind).inc()
        if nbytes:
            self.bytes.labels(provider).inc(nbytes)

    def update(self, counts: dict[str, int], queue: int, outbox_backlog: int,
               store: StoreTotals | None, in_flight: int) -> None:
        """Set the gauges; `store` None keeps the store's from the last walk."""
        self.queue.set(queue)
        self.in_flight.set(in_flight)
        if store is not None:
            self.store_bytes.set(store["bytes"])
            self.store_files.set(store["objects"])
        self.outbox.set(outbox_backlog)
        for state, n in counts.items():
            self.states.labels(state).set(n)
