"""Optional Prometheus metrics on loopback (prometheus-client), off by default.

The series live in prometheus-client's default registry, so the process_* and
python_* series its default collectors keep (CPU, memory, open fds, GC) come with
them. Names follow Prometheus' conventions: base units in the name (`_bytes`,
`_seconds`), counters end in `_total`, `prefetchd_build_info` carries the version.
Counters and the duration histogram are fed from the engine's outcomes; gauges are
refreshed by the daemon every few seconds from the manifest, and about once a minute
from a walk of the store's objects. README "Metrics" lists every series.
"""

from __future__ import annotations

import errno
import functools
from dataclasses import dataclass
from typing import Any

from .. import __version__
from ..config import MetricsSettings
from ..errors import ConfigError
from ..log import get_logger
from ..shapes import StoreTotals

log = get_logger("prefetchd.service.metrics")

#: download durations from a few ms (small files on a LAN) to hours (many GiB)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                    600.0, 1800.0, 3600.0, float("inf"))


@dataclass(frozen=True)
class Instruments:
    """Every prefetchd series, registered once per process in the default registry
    (a second registration of a name is an error there)."""

    build_info: Any
    downloads: Any
    bytes: Any
    duration: Any
    retries: Any
    verify_failures: Any
    evictions: Any
    queue: Any
    in_flight: Any
    store_bytes: Any
    store_files: Any
    states: Any
    outbox: Any


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ConfigError(
            "metrics.enabled needs prometheus-client: pip install 'prefetchd[metrics]'"
        ) from None
    return prometheus_client


@functools.cache
def instruments() -> Instruments:
    """Create (the first time) and return the series, in prometheus' default REGISTRY."""
    prom = _prometheus()
    counter, gauge = prom.Counter, prom.Gauge
    built = Instruments(
        build_info=gauge("prefetchd_build_info", "Always 1; the labels say which build runs",
                         ["version"]),
        downloads=counter("prefetchd_downloads_total",
                          "Finished fetches by outcome (download, cache_hit, failed, ...)",
                          ["provider", "outcome"]),
        bytes=counter("prefetchd_downloaded_bytes_total", "Bytes downloaded", ["provider"]),
        duration=prom.Histogram("prefetchd_download_duration_seconds",
                                "Time from the start of a download to its file's publication",
                                ["provider"], buckets=DURATION_BUCKETS),
        retries=counter("prefetchd_retries_total", "Retried attempts", ["provider"]),
        verify_failures=counter("prefetchd_verify_failures_total",
                                "Objects that failed re-hashing"),
        evictions=counter("prefetchd_evictions_total", "Files deleted by retention",
                          ["kind"]),
        queue=gauge("prefetchd_queue_depth", "Entries waiting to download"),
        in_flight=gauge("prefetchd_in_flight", "Downloads running"),
        store_bytes=gauge("prefetchd_store_bytes", "Bytes in the object store"),
        store_files=gauge("prefetchd_store_files", "Objects in the store"),
        states=gauge("prefetchd_entries", "Manifest entries by state", ["state"]),
        outbox=gauge("prefetchd_outbox_backlog", "Events not yet mirrored to Supabase"),
    )
    built.build_info.labels(version=__version__).set(1)
    return built


class Metrics:
    """The daemon's metrics: the series, and the HTTP endpoint that serves them."""

    def __init__(self, cfg: MetricsSettings) -> None:
        prom = _prometheus()
        self.m = instruments()
        self.evictions = self.m.evictions
        self.verify_failures = self.m.verify_failures
        where = f"[{cfg.address}]:{cfg.port}" if ":" in cfg.address else f"{cfg.address}:{cfg.port}"
        try:
            self.server, self.thread = prom.start_http_server(cfg.port, addr=cfg.address,
                                                              registry=prom.REGISTRY)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ConfigError(f"metrics: {where} is in use (set [metrics] port)") from None
            raise ConfigError(f"metrics: cannot listen on {where}: {e.strerror or e} "
                              "(set [metrics] address and port)") from None
        log.info("metrics_listening", address=where, url=f"http://{where}/metrics")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def observe(self, kind: str, provider: str, nbytes: int,
                seconds: float | None = None) -> None:
        """The engine's outcomes: `retry`, or a fetch's outcome with the bytes it
        downloaded and, for a download, how long it took."""
        if kind == "retry":
            self.m.retries.labels(provider).inc()
            return
        self.m.downloads.labels(provider, kind).inc()
        if nbytes:
            self.m.bytes.labels(provider).inc(nbytes)
        if kind == "download" and seconds is not None:
            self.m.duration.labels(provider).observe(seconds)

    def update(self, counts: dict[str, int], queue: int, outbox_backlog: int,
               store: StoreTotals | None, in_flight: int) -> None:
        """Set the gauges; `store` None keeps the store's from the last walk."""
        self.m.queue.set(queue)
        self.m.in_flight.set(in_flight)
        if store is not None:
            self.m.store_bytes.set(store["bytes"])
            self.m.store_files.set(store["objects"])
        self.m.outbox.set(outbox_backlog)
        for state, n in counts.items():
            self.m.states.labels(state).set(n)
