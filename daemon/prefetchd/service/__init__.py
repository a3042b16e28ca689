"""The daemon: `daemon` wires the parts and runs their life cycle, `workers` pull due
entries from the manifest, `jobs` are the scheduled passes, `status` is what it
reports while it runs (sd_notify STATUS=, the metrics' gauges, the watchdog)."""
