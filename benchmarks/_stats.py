"""The summary statistics and verdict words every benchmark script reports with."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def mean(xs: Sequence[float]) -> float:
    return statistics.fmean(xs) if xs else math.nan


def sd(xs: Sequence[float]) -> float:
    """Sample standard deviation over seeds; NaN with fewer than two."""
    return statistics.stdev(xs) if len(xs) >= 2 else math.nan


def verdict(ok: bool) -> str:
    return "**PASS**" if ok else "**FAIL**"
