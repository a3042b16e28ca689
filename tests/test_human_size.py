"""One size formatter (errors.human_size) in the two styles people have always read:
prose in error lines and MCP progress, one decimal in the CLI's columns and rates."""

from __future__ import annotations

import pytest

from prefetchd.errors import NoSpaceError, human_size


@pytest.mark.parametrize("n, line, column", [
    (0, "0 bytes", "0 B"),
    (512, "512 bytes", "512 B"),
    (1023, "1023 bytes", "1023 B"),
    (1024, "1 KiB", "1.0 KiB"),
    (1536, "1.5 KiB", "1.5 KiB"),
    ((1 << 20) - 1, "1024 KiB", "1024.0 KiB"),  # rounds up, never to the next unit
    (100 << 20, "100 MiB", "100.0 MiB"),
    (3 << 30, "3 GiB", "3.0 GiB"),
    (5 << 40, "5 TiB", "5.0 TiB"),
    (2048 << 40, "2048 TiB", "2048.0 TiB"),  # TiB is the largest unit
])
def test_both_styles(n, line, column):
    assert (human_size(n), human_size(n, column=True)) == (line, column)


def test_a_rate_is_a_float():
    assert human_size(1536.4, column=True) == "1.5 KiB"
    assert human_size(10.6, column=True) == "11 B"


def test_error_lines_read_the_prose_style():
    e = NoSpaceError(need_bytes=100 << 20, file_id="f", free=1536)
    assert str(e) == "f: needs 100 MiB, 1.5 KiB free"
