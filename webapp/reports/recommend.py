"""Recommend one candidate under stated constraints: "accuracy drop <= 1 pt and p50 <= 5 ms".

Pure logic (no Django), shared by the sweep page and the API. A candidate meets the
constraints when every limit given holds; among those, the best is the fastest (``prefer``
``latency``, the default), the most accurate (``accuracy``) or the smallest (``size``), ties
broken by the other two in that order. Each candidate left out says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

PREFERENCES = ("latency", "accuracy", "size")


@dataclass(frozen=True)
class Candidate:
    """One version: its test accuracy drop against the baseline in points (positive is a loss),
    its p50 latency (ms) where the constraint's latency is measured, and its file size."""

    id: int
    label: str
    accuracy_drop: float | None
    latency_ms: float | None
    size_bytes: float | None


@dataclass(frozen=True)
class Constraints:
    max_accuracy_drop: float | None = None
    max_latency_ms: float | None = None
    latency_where: str = "host"  # "host" or the device's name
    prefer: str = "latency"

    def text(self) -> str:
        parts = []
        if self.max_accuracy_drop is not None:
            parts.append(f"accuracy drop ≤ {self.max_accuracy_drop:g} pt")
        if self.max_latency_ms is not None:
            parts.append(f"p50 on {self.latency_where} ≤ {self.max_latency_ms:g} ms")
        return " and ".join(parts) or "no limits"


@dataclass
class Recommendation:
    choice: int | None
    summary: str
    constraints: str
    excluded: dict[int, list[str]] = field(default_factory=dict)
    eligible: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "choice": self.choice,
            "summary": self.summary,
            "constraints": self.constraints,
            "eligible": self.eligible,
            "excluded": {str(k): v for k, v in self.excluded.items()},
        }


def _why_not(c: Candidate, limits: Constraints) -> list[str]:
    reasons = []
    needs_accuracy = limits.max_accuracy_drop is not None or limits.prefer == "accuracy"
    needs_latency = limits.max_latency_ms is not None or limits.prefer == "latency"
    if needs_accuracy and c.accuracy_drop is None:
        reasons.append("no comparable test accuracy")
    elif (
        limits.max_accuracy_drop is not None
        and c.accuracy_drop is not None
        and c.accuracy_drop > limits.max_accuracy_drop + 1e-9
    ):
        reasons.append(f"accuracy drop {c.accuracy_drop:.2f} pt > {limits.max_accuracy_drop:g} pt")
    if needs_latency and c.latency_ms is None:
        reasons.append(f"no p50 latency on {limits.latency_where}")
    elif (
        limits.max_latency_ms is not None
        and c.latency_ms is not None
        and c.latency_ms > limits.max_latency_ms + 1e-12
    ):
        reasons.append(
            f"p50 {c.latency_ms:.3f} ms on {limits.latency_where} > {limits.max_latency_ms:g} ms"
        )
    if limits.prefer == "size" and c.size_bytes is None:
        reasons.append("no file size")
    return reasons


def _key(c: Candidate, prefer: str) -> tuple[float, ...]:
    inf = float("inf")
    lat = c.latency_ms if c.latency_ms is not None else inf
    drop = c.accuracy_drop if c.accuracy_drop is not None else inf
    size = c.size_bytes if c.size_bytes is not None else inf
    order = {"latency": (lat, drop, size), "accuracy": (drop, lat, size), "size": (size, drop, lat)}
    return (*order[prefer], float(c.id))


def recommend(candidates: Sequence[Candidate], limits: Constraints) -> Recommendation:
    """The best candidate meeting ``limits``, or none (with each candidate's reasons).

    Raises:
        ValueError: an unknown ``prefer``.
    """
    if limits.prefer not in PREFERENCES:
        raise ValueError(f"prefer must be one of {', '.join(PREFERENCES)}")
    excluded = {c.id: r for c in candidates if (r := _why_not(c, limits))}
    eligible = sorted(
        (c for c in candidates if c.id not in excluded), key=lambda c: _key(c, limits.prefer)
    )
    text = limits.text()
    if not candidates:
        return Recommendation(None, "Nothing has finished yet.", text)
    if not eligible:
        return Recommendation(
            None, f"No version meets {text}.", text, excluded=excluded, eligible=[]
        )
    best = eligible[0]
    word = {"latency": "the fastest", "accuracy": "the most accurate", "size": "the smallest"}
    facts = []
    if best.accuracy_drop is not None:
        facts.append(f"accuracy drop {best.accuracy_drop:+.2f} pt")
    if best.latency_ms is not None:
        facts.append(f"p50 {best.latency_ms:.3f} ms on {limits.latency_where}")
    summary = (
        f"{best.label}: {word[limits.prefer]} of the {len(eligible)} version(s) that meet "
        f"{text} ({', '.join(facts)})."
    )
    return Recommendation(
        best.id, summary, text, excluded=excluded, eligible=[c.id for c in eligible]
    )
