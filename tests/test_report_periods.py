"""Reports of adjacent periods add up: a collection at a period's start holds
what happened before it, so it counts in the period that ends there."""

import json

import pytest

from conftest import run_cli

MEASURES = ("new states", "ended states", "bytes moved", "packets moved")


@pytest.fixture
def history(small_history):
    return small_history


def _overview(db, since, until):
    result = run_cli("report", "--db", db, "--since", since, "--until", until,
                     "--format", "json")
    assert result.returncode == 0, result.stderr
    for section in json.loads(result.stdout)["sections"]:
        for table in section["tables"]:
            if table["key"] == "overview":
                return dict(table["rows"])
    raise AssertionError("no overview")


@pytest.mark.parametrize("cut", ["22:02", "22:03"])
def test_adjacent_periods_add_up_to_the_whole(history, cut):
    whole = _overview(history, "2026-11-24T22:00Z", "2026-11-24T22:04Z")
    first = _overview(history, "2026-11-24T22:00Z", f"2026-11-24T{cut}Z")
    second = _overview(history, f"2026-11-24T{cut}Z", "2026-11-24T22:04Z")
    for measure in MEASURES:
        assert first[measure] + second[measure] == whole[measure], measure
    assert second["bytes moved"] > 0 and first["bytes moved"] > 0


def test_a_period_of_one_collection_moves_nothing(history):
    """[22:02, 22:02:30] holds the collection of 22:02, whose figures are those
    of the minute before: none of them is the period's."""
    one = _overview(history, "2026-11-24T22:02Z", "2026-11-24T22:02:30Z")
    assert [one[m] for m in MEASURES] == [0, 0, 0, 0]
    assert one["peak concurrent states"] > 0
