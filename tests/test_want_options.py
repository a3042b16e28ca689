"""One want-options record (requests.Options) that every front converts into once, and
one validation of it (requests.spec): the fronts refuse the same things in the same
words, and the Python API takes the record as it takes its keywords."""

from __future__ import annotations

import pytest

from prefetchd.api import Options
from prefetchd.errors import BadRequest, UsageError
from prefetchd.fleet import admin


@pytest.mark.parametrize("fields", [
    {"dest": "../a"}, {"sha256": "zz"}, {"ttl": "someday"}, {"dest": ".prefetchd/x"},
    {"size": -1},
])
def test_the_fleet_admin_refuses_in_the_words_of_a_local_want(env, fields):
    """The fleet's admin checks with the local request's validation (all but the
    provider, which only the hosts resolve): nothing reaches Supabase then."""
    with env.prefetch() as p, pytest.raises(UsageError) as local:
        p.want(["file-a"], **fields)
    with pytest.raises(UsageError) as fleet:
        admin.change(env.settings(), "want", ["file-a"], options=Options(**fields))
    assert str(fleet.value) == str(local.value)


def test_the_fleet_admin_and_a_local_want_take_one_file_for_one_dest(env):
    opts = Options(dest="x/a")
    with env.prefetch() as p, pytest.raises(UsageError) as local:
        p.want(["a", "b"], options=opts)
    with pytest.raises(UsageError) as fleet:
        admin.change(env.settings(), "want", ["a", "b"], options=opts)
    assert str(fleet.value) == str(local.value) == (
        "--sha256, --size and --dest apply to one file_id at a time")
    with pytest.raises(UsageError, match="fleet unwant takes only file_ids"):
        admin.change(env.settings(), "unwant", ["a"], options=Options(pin=True))


def test_the_record_and_the_keywords_make_the_same_claim(env):
    with env.prefetch() as p:
        p.want("by-record", options=Options(provider="files", ttl="1h", pin=True))
        p.want("by-keywords", provider="files", ttl="1h", pin=True)
        claims = {r["file_id"]: r["claims"] for r in p.ls()}
    (record,), (keywords,) = claims["by-record"], claims["by-keywords"]
    assert record == keywords
    assert (record["ttl"], record["pin"]) == (3600.0, True)


def test_the_record_or_the_keywords_not_both(env):
    with env.prefetch() as p:
        with pytest.raises(BadRequest) as both:
            p.want("a", options=Options(pin=True), pin=True)
        with pytest.raises(BadRequest) as other:
            p.get_many(["a"], options={"pin": True})  # type: ignore[arg-type]
        assert p.ls() == []  # nothing was wanted
    assert str(both.value) == "options: given with pin; give one or the other"
    assert str(other.value) == "options: expected a prefetchd.api.Options, not dict"
