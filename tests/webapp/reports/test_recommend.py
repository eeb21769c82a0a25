"""The recommendation under constraints: pure logic, each left-out candidate says why."""

from __future__ import annotations

import pytest

from webapp.reports.recommend import Candidate, Constraints, recommend

A = Candidate(1, "ratio=0.25", accuracy_drop=0.2, latency_ms=4.0, size_bytes=900)
B = Candidate(2, "ratio=0.5", accuracy_drop=0.9, latency_ms=2.5, size_bytes=600)
C = Candidate(3, "ratio=0.75", accuracy_drop=3.1, latency_ms=1.2, size_bytes=300)
D = Candidate(4, "not timed", accuracy_drop=0.0, latency_ms=None, size_bytes=1000)


def test_the_fastest_within_the_accuracy_budget_is_recommended_with_the_reasons_for_the_rest():
    rec = recommend([A, B, C, D], Constraints(max_accuracy_drop=1.0, max_latency_ms=5))
    assert rec.choice == 2
    assert rec.eligible == [2, 1]
    assert rec.excluded == {3: ["accuracy drop 3.10 pt > 1 pt"], 4: ["no p50 latency on host"]}
    assert rec.constraints == "accuracy drop ≤ 1 pt and p50 on host ≤ 5 ms"
    assert rec.summary.startswith("ratio=0.5: the fastest of the 2 version(s)")


def test_a_device_latency_limit_and_the_other_preferences():
    limits = Constraints(max_accuracy_drop=1.0, max_latency_ms=3.0, latency_where="pi-4")
    assert recommend([A, B, C], limits).choice == 2
    assert recommend([A, B, C], limits).excluded[1] == ["p50 4.000 ms on pi-4 > 3 ms"]
    accurate = Constraints(max_accuracy_drop=1.0, prefer="accuracy")
    assert recommend([A, B, C, D], accurate).choice == 4  # no latency limit: D qualifies
    assert recommend([A, B, C], Constraints(prefer="size")).choice == 3


def test_nothing_meets_the_constraints_or_nothing_has_finished():
    rec = recommend([A, B], Constraints(max_latency_ms=1.0))
    assert rec.choice is None and rec.summary == "No version meets p50 on host ≤ 1 ms."
    assert set(rec.excluded) == {1, 2}
    assert recommend([], Constraints()).summary == "Nothing has finished yet."
    with pytest.raises(ValueError):
        recommend([A], Constraints(prefer="cheapest"))


def test_ties_go_to_the_more_accurate_then_the_smaller():
    twin = Candidate(5, "twin", accuracy_drop=0.1, latency_ms=2.5, size_bytes=700)
    assert recommend([B, twin], Constraints()).choice == 5
