"""The Pareto front of the comparison page: pure logic, no database."""

from __future__ import annotations

import math

import pytest

from webapp.reports.pareto import dominates, pareto_front

# (latency ms, accuracy %): lower latency and higher accuracy are better.
LAT_ACC = ("min", "max")


def test_a_point_that_is_worse_on_both_axes_is_off_the_front():
    points = [(1.0, 90.0), (2.0, 80.0)]
    assert pareto_front(points, LAT_ACC) == [0]


def test_a_trade_off_keeps_both_ends_and_orders_them_by_the_first_axis():
    points = [(3.0, 95.0), (1.0, 90.0), (2.0, 85.0)]
    assert pareto_front(points, LAT_ACC) == [1, 0]


def test_equal_on_one_axis_and_better_on_the_other_dominates():
    points = [(1.0, 90.0), (1.0, 91.0), (0.5, 91.0)]
    assert dominates((0.5, 91.0), (1.0, 91.0), LAT_ACC)
    assert pareto_front(points, LAT_ACC) == [2]


def test_identical_points_do_not_dominate_each_other():
    points = [(1.0, 90.0), (1.0, 90.0), (2.0, 80.0)]
    assert not dominates(points[0], points[1], LAT_ACC)
    assert pareto_front(points, LAT_ACC) == [0, 1]


def test_senses_turn_the_axes_around():
    points = [(1.0, 90.0), (2.0, 95.0)]
    # Larger first axis better and larger second axis better: (2, 95) wins outright.
    assert pareto_front(points, ("max", "max")) == [1]
    # Smaller on both: (1, 90) wins outright.
    assert pareto_front(points, ("min", "min")) == [0]
    # A max first axis orders the front from the largest value.
    assert pareto_front([(1.0, 95.0), (2.0, 90.0)], ("max", "max")) == [1, 0]


def test_three_axes():
    # (size, latency, accuracy): the second point is smaller but slower; both stay.
    points = [(10.0, 1.0, 90.0), (5.0, 2.0, 90.0), (10.0, 2.0, 89.0)]
    assert pareto_front(points, ("min", "min", "max")) == [1, 0]


def test_empty_and_single():
    assert pareto_front([], LAT_ACC) == []
    assert pareto_front([(4.0, 1.0)], LAT_ACC) == [0]


def test_a_wide_front_is_all_kept():
    points = [(float(i), float(i)) for i in range(20)]
    assert pareto_front(points, LAT_ACC) == list(range(20))
    assert pareto_front(points, ("min", "min")) == [0]


def test_it_refuses_nan_and_mismatched_axes():
    with pytest.raises(ValueError, match="NaN"):
        pareto_front([(1.0, math.nan)], LAT_ACC)
    with pytest.raises(ValueError, match="axes"):
        pareto_front([(1.0, 2.0, 3.0)], LAT_ACC)
