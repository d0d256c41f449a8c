"""The suite's own explanation of a failed == between long lists (tests/conftest.py): what differs, briefly."""

from __future__ import annotations

import pytest

from tests.conftest import pytest_assertrepr_compare


def explain(left: object, right: object, op: str = "==") -> list[str] | None:
    return pytest_assertrepr_compare(pytest.Config.__new__(pytest.Config), op, left, right)  # config: unused


def test_a_hole_is_named_as_a_run_of_the_missing_items() -> None:
    want = list(range(1, 20_001))
    got = want[:4700] + want[4800:]
    lines = explain(got, want)
    assert lines is not None and len(lines) == 2
    assert "19900 items == 20000 items, first at index 4700: [4699, 4700, 4801, 4802, 4803]" in lines[0]
    assert lines[1] == "only in right (100): 4701..4800"


def test_a_repeat_is_named_once_and_reordering_is_told_apart() -> None:
    want = list(range(100))
    assert explain([*want[:50], 49, *want[50:]], want) == [
        "two lists differ: 101 items == 100 items, first at index 50: [48, 49, 49, 50, 51] == [48, 49, 50, 51, 52]",
        "only in left (1): 49"]
    lines = explain(list(reversed(want)), want)
    assert lines is not None and lines[-1] == "the same items in another order"


def test_strings_and_unhashable_items_short_lists_and_other_operators() -> None:
    lines = explain([f"n={i}" for i in range(60)], [f"n={i}" for i in range(61)])
    assert lines is not None and lines[-1] == "only in right (1): ['n=60']"
    lines = explain([[i] for i in range(60)], [[i] for i in range(59)])
    assert lines is not None and len(lines) == 1  # no multiset of lists: the first difference only
    assert explain([1, 2], [1, 3]) is None  # short: pytest's own diff
    assert explain(list(range(50)), [], "!=") is None
