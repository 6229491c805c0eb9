"""Targets: size parsing, schedules, method names and which earlier pruning may be continued."""
from __future__ import annotations

import pytest

from graft_edge.compress import (
    METHODS,
    check_compatible,
    check_target,
    get_method,
    parse_targets,
    plan_schedule,
    previous_methods,
)
from graft_edge.errors import GraftError
from graft_edge.units import parse_size


@pytest.mark.parametrize("text, expected", [
    ("60M", 60_000_000), ("60000000", 60_000_000), ("1.5B", 1_500_000_000), ("500K", 500_000),
    ("60m", 60_000_000), (" 2.5M ", 2_500_000), ("60%", 61_200_000), ("45.5%", 46_410_000), ("100%", 102_000_000),
])
def test_parse_size_forms(text: str, expected: int) -> None:
    assert parse_size(text, 102_000_000) == expected


@pytest.mark.parametrize("text", ["sixty", "60Q", "-5M", "", "0%", "120%", "M", "60 M M"])
def test_parse_size_errors_list_forms(text: str) -> None:
    with pytest.raises(GraftError) as exc:
        parse_size(text, 102_000_000)
    msg = str(exc.value)
    assert text.strip() in msg or "percentage" in msg
    if "percentage" not in msg:
        assert "60M" in msg and "60%" in msg  # the accepted forms are listed


def test_percentage_needs_current() -> None:
    with pytest.raises(GraftError, match="relative"):
        parse_size("60%")


@pytest.mark.parametrize("alias, name", [("structured", "structured"), ("UNSTRUCTURED", "unstructured"),
                                         ("2:4", "2:4"), ("2to4", "2:4")])
def test_get_method(alias: str, name: str) -> None:
    method = get_method(alias)
    assert method.name == name and method is METHODS[name] and get_method(method) is method  # objects pass through


def test_get_method_error_lists_methods() -> None:
    with pytest.raises(GraftError, match="structured, unstructured, 2:4"):
        get_method("random")


def test_methods_know_what_they_count_and_whether_they_keep_the_architecture() -> None:
    assert [(m.name, m.counts, m.keeps_architecture) for m in METHODS.values()] == [
        ("structured", "parameters", False), ("unstructured", "nonzero parameters", True),
        ("2:4", "nonzero parameters", True)]


def test_targets_are_parsed_once_into_sizes() -> None:
    sizes = parse_targets("80%, 60M")
    assert [str(s) for s in sizes] == ["80%", "60M"] and sizes[0].of(1000) == 800 and sizes[1].of(None) == 60_000_000
    assert parse_targets(sizes) == sizes
    with pytest.raises(GraftError, match="--targets '12Q'"):
        parse_targets("80%,12Q")


def test_schedule_geometric_and_exact_last() -> None:
    sched = plan_schedule(100_000, 60_000, steps=4)
    assert len(sched) == 4 and sched[-1] == 60_000
    assert all(a > b for a, b in zip([100_000] + sched, sched))
    ratios = [b / a for a, b in zip([100_000] + sched[:-1], sched)]
    assert max(ratios) - min(ratios) < 1e-3


def test_schedule_default_is_about_twenty_percent() -> None:
    assert len(plan_schedule(102_000_000, 60_000_000)) == 3  # 0.8^3 = 0.51 < 0.59 < 0.8^2
    assert plan_schedule(100, 90) == [90]


def test_schedule_paper_rounds_of_remaining_prunable() -> None:
    sched = plan_schedule(102_000_000, 46_000_000, prunable=85_000_000)
    assert sched[:2] == [85_000_000, 71_400_000]  # 20% of 85M, then 20% of the 68M left
    assert sched[-1] == 46_000_000
    assert plan_schedule(102_000_000, 60_000_000, prunable=85_000_000)[-1] == 60_000_000


def test_previous_methods_and_compatibility() -> None:
    hist = [{"method": "unstructured", "step": 1}]
    assert previous_methods(hist) == ["unstructured"]
    assert previous_methods([], arch={"blocks": []}) == ["structured"]
    check_compatible(get_method("unstructured"), hist)  # continuing the same method is fine
    with pytest.raises(GraftError, match="already pruned with unstructured"):
        check_compatible(get_method("structured"), hist)
    with pytest.raises(GraftError, match="already pruned with structured"):
        check_compatible(get_method("2:4"), [], arch={"blocks": []})
    with pytest.raises(GraftError, match="already 2:4"):
        check_compatible(get_method("2:4"), [{"method": "2:4"}])


def test_check_target_bounds() -> None:
    why = METHODS["structured"].floor_reason
    check_target(50, 100, 10, "structured", why)
    with pytest.raises(GraftError, match="not smaller"):
        check_target(100, 100, 10, "structured", why)
    with pytest.raises(GraftError, match="smallest size structured.*1 head"):
        check_target(5, 100, 10, "structured", why)
