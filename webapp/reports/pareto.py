"""Pareto fronts over plain numbers: which candidates no other candidate beats on every axis.

Pure logic (no Django, no Plotly), so the comparison page, its exports and the API share one
definition and it is tested on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

Sense = Literal["min", "max"]


def dominates(a: Sequence[float], b: Sequence[float], senses: Sequence[Sense]) -> bool:
    """Whether ``a`` is at least as good as ``b`` on every axis and better on one.

    ``senses`` says per axis whether smaller (``"min"``) or larger (``"max"``) is better.
    """
    strictly = False
    for x, y, sense in zip(a, b, senses, strict=True):
        if sense == "min":
            x, y = -x, -y
        if x < y:
            return False
        if x > y:
            strictly = True
    return strictly


def pareto_front(points: Sequence[Sequence[float]], senses: Sequence[Sense]) -> list[int]:
    """Indices of the points no other point dominates, ordered along the first axis (best
    first) and then by index.

    Equal points do not dominate each other, so duplicates on the front are all kept.

    Raises:
        ValueError: a point with a different number of axes than ``senses``, or a NaN value
            (a NaN compares false with everything and would slip onto the front).
    """
    for p in points:
        if len(p) != len(senses):
            raise ValueError(f"point {tuple(p)} has {len(p)} axes; senses has {len(senses)}")
        if any(v != v for v in p):
            raise ValueError(f"point {tuple(p)} holds a NaN")
    front = [
        i
        for i, p in enumerate(points)
        if not any(dominates(q, p, senses) for j, q in enumerate(points) if j != i)
    ]
    first = -1.0 if senses and senses[0] == "max" else 1.0
    return sorted(front, key=lambda i: (first * points[i][0], i))
