"""Durations in configuration: parsing, and the spelling plans use."""

from __future__ import annotations

import pytest

from consumer.durations import format_duration_seconds, parse_duration_seconds


@pytest.mark.parametrize(("seconds", "spelled"), [(0, "0s"), (59, "59s"), (90, "90s"), (3600, "1h"), (86_400, "1d"),
                                                  (2_592_000, "30d"), (1_209_600, "2w")])
def test_format_is_the_shortest_exact_spelling(seconds: int, spelled: str) -> None:
    assert format_duration_seconds(seconds) == spelled
    assert parse_duration_seconds(spelled) == seconds
