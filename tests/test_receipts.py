"""Receipts follow the events in batches: a finished file costs no receipt write of
its own, and a pass rewrites each changed receipt once."""

from __future__ import annotations

import json
import os

from prefetchd.inbox import receipts as receipts_mod
from prefetchd.inbox.receipts import Receipts
from prefetchd.manifest import WantSpec
from prefetchd.records import EventKind, NewEvent
from tests.support.rows import delete_rows


def test_a_pass_rewrites_a_large_receipt_once_for_many_events(env, monkeypatch):
    writes: list[str] = []
    real = receipts_mod.write_json
    monkeypatch.setattr(receipts_mod, "write_json",
                        lambda fd, name, doc: (writes.append(name), real(fd, name, doc)))
    ids = [f"id{i:05d}" for i in range(10_000)]
    with env.prefetch() as p:
        p.manifest.want([WantSpec(file_id=f) for f in ids])
        d = env.tmp / "processed"
        d.mkdir()
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            r = Receipts(p.manifest, p.store.root, fd)
            r.add("big.receipt.json", "big.txt", [(f, "want") for f in ids])
            assert writes == ["big.receipt.json"]
            for f in ids[:500]:  # 500 files finish between two passes
                p.manifest.record(f, NewEvent(EventKind.DOWNLOAD, sha256="0" * 64, bytes=1),
                                  state="ready", path=f"downloads/{f}/{f}", sha256="0" * 64)
            assert len(writes) == 1  # nothing per finished file
            monkeypatch.setattr(receipts_mod, "WRITE_EVERY", 0.0)
            assert r.refresh() == 1
            assert r.refresh() == 0  # no new events: nothing rewritten
            assert writes == ["big.receipt.json"] * 2
            doc = json.loads((d / "big.receipt.json").read_text())
            assert [e["state"] for e in doc["entries"][:501]] == ["ready"] * 500 + ["queued"]
            assert doc["complete"] is False
            for f in ids[500:]:
                p.manifest.record(f, NewEvent(EventKind.FAILURE, error="gone"), state="failed",
                                  error="gone")
            r.refresh()
            doc = json.loads((d / "big.receipt.json").read_text())
            assert doc["complete"] is True and "big.receipt.json" not in r
            assert doc["entries"][-1] == {"file_id": ids[-1], "action": "want",
                                          "state": "failed", "path": None, "error": "gone"}
        finally:
            os.close(fd)


def test_an_unwanted_or_forgotten_entry_settles_the_receipt(env):
    with env.prefetch() as p:
        p.manifest.want([WantSpec(file_id="a"), WantSpec(file_id="b")])
        d = env.tmp / "processed"
        d.mkdir()
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            r = Receipts(p.manifest, p.store.root, fd)
            r.add("x.receipt.json", "x.txt", [("a", "want"), ("b", "want")])
            p.manifest.unwant(["a"])
            delete_rows(p.manifest, ["b"])
            r.refresh(everything=True)  # changes that leave no event: the slow backstop
            assert "x.receipt.json" not in r
            doc = json.loads((d / "x.receipt.json").read_text())
            assert doc["complete"] is True
            assert [e["state"] for e in doc["entries"]] == ["queued", "forgotten"]
        finally:
            os.close(fd)


def test_a_pending_receipt_is_picked_up_again_by_the_next_run(env, monkeypatch):
    """The receipt file is what outlives the daemon: a new Receipts (a restart) reads
    back the incomplete one, entries in order (a repeated id, an unwant), and completes
    it from the events; a complete one is left alone."""
    monkeypatch.setattr(receipts_mod, "WRITE_EVERY", 0.0)
    with env.prefetch() as p:
        p.manifest.want([WantSpec(file_id=f) for f in ("a", "b", "c")])
        d = env.tmp / "processed"
        d.mkdir()
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            first = Receipts(p.manifest, p.store.root, fd)
            first.add("x.receipt.json", "x.txt",
                      [("a", "want"), ("b", "want"), ("a", "want"), ("gone", "unwant")])
            first.add("done.receipt.json", "done.txt", [("gone", "want")])
            assert "x.receipt.json" in first and "done.receipt.json" not in first
            first.close()
            again = Receipts(p.manifest, p.store.root, fd)
            assert again.load() == 1 and "x.receipt.json" in again
            p.manifest.record("a", NewEvent(EventKind.DOWNLOAD, sha256="0" * 64, bytes=1),
                              state="ready", path="downloads/a/a", sha256="0" * 64)
            p.manifest.record("c", NewEvent(EventKind.FAILURE, error="gone"), state="failed",
                              error="gone")  # in no pending receipt
            again.refresh()
            doc = json.loads((d / "x.receipt.json").read_text())
            assert doc["complete"] is False
            assert [(e["file_id"], e["state"]) for e in doc["entries"]] == [
                ("a", "ready"), ("b", "queued"), ("a", "ready"), ("gone", "forgotten")]
            assert doc["entries"][0]["path"] == str(p.store.root / "downloads/a/a")
            p.manifest.record("b", NewEvent(EventKind.FAILURE, error="gone"), state="failed",
                              error="gone")
            again.refresh()
            doc = json.loads((d / "x.receipt.json").read_text())
            assert doc["complete"] is True and "x.receipt.json" not in again
            assert doc["entries"][1] == {"file_id": "b", "action": "want", "state": "failed",
                                         "path": None, "error": "gone"}
            again.close()
        finally:
            os.close(fd)


def test_events_that_change_no_entry_rewrite_nothing(env, monkeypatch):
    writes: list[str] = []
    real = receipts_mod.write_json
    monkeypatch.setattr(receipts_mod, "write_json",
                        lambda fd, name, doc: (writes.append(name), real(fd, name, doc)))
    monkeypatch.setattr(receipts_mod, "WRITE_EVERY", 0.0)
    with env.prefetch() as p:
        p.manifest.want([WantSpec(file_id="a"), WantSpec(file_id="b")])
        d = env.tmp / "processed"
        d.mkdir()
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            r = Receipts(p.manifest, p.store.root, fd)
            r.add("x.receipt.json", "x.txt", [("a", "want"), ("b", "want")])
            p.manifest.want([WantSpec(file_id="a", pin=True)])  # a claim changed, not a
            p.manifest.record("a", NewEvent(EventKind.DOWNLOAD, sha256="0" * 64, bytes=1),
                              state="queued")  # an event, a still queued
            assert r.refresh() == 0 and r.refresh(everything=True) == 0
            assert writes == ["x.receipt.json"]
            r.close()
        finally:
            os.close(fd)
