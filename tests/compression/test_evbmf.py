"""EVBMF finds the true rank of low-rank-plus-noise matrices, and no rank in pure noise."""

from __future__ import annotations

import numpy as np
import pytest

from compression.evbmf import evbmf, tau_threshold


def _low_rank_plus_noise(
    rng: np.random.Generator, rows: int, cols: int, rank: int, sigma: float, strength: float
) -> np.ndarray:
    u, _ = np.linalg.qr(rng.normal(size=(rows, rank)))
    v, _ = np.linalg.qr(rng.normal(size=(cols, rank)))
    # Signal singular values from `strength` to 2x `strength` times the noise's edge.
    edge = sigma * (np.sqrt(rows) + np.sqrt(cols))
    s = np.linspace(strength, 2 * strength, rank) * edge
    out: np.ndarray = u @ np.diag(s) @ v.T + sigma * rng.normal(size=(rows, cols))
    return out


def test_the_square_threshold_constant() -> None:
    # Nakajima et al.: tau_ = 2.5129 for L = M.
    assert tau_threshold(1.0) == pytest.approx(2.5129, abs=1e-4)
    assert tau_threshold(0.1) < tau_threshold(0.5) < tau_threshold(1.0)


@pytest.mark.parametrize(
    ("rows", "cols", "rank", "sigma"),
    [
        (64, 100, 7, 0.1),
        (50, 50, 5, 1.0),
        (30, 300, 3, 0.5),
        (120, 40, 10, 0.2),
        (64, 576, 12, 0.05),
    ],
)
def test_the_true_rank_and_noise_are_recovered(
    rows: int, cols: int, rank: int, sigma: float
) -> None:
    rng = np.random.default_rng(rows * cols + rank)
    res = evbmf(_low_rank_plus_noise(rng, rows, cols, rank, sigma, strength=1.5))
    assert res.rank == rank
    assert res.sigma2 == pytest.approx(sigma**2, rel=0.1)
    assert len(res.shrunk) == rank
    assert np.all(res.shrunk < res.singular_values[:rank])  # VB shrinks what it keeps


def test_pure_noise_has_rank_zero() -> None:
    rng = np.random.default_rng(1)
    for rows, cols in ((40, 40), (32, 288), (200, 50)):
        assert evbmf(rng.normal(size=(rows, cols))).rank == 0


def test_a_given_noise_variance_and_a_rank_cap() -> None:
    rng = np.random.default_rng(2)
    v = _low_rank_plus_noise(rng, 60, 90, 6, 0.3, strength=1.5)
    assert evbmf(v, sigma2=0.09).rank == 6
    assert evbmf(v, sigma2=100.0).rank == 0  # far more noise than signal
    assert evbmf(v, max_rank=4).rank == 4
    with pytest.raises(ValueError, match="positive"):
        evbmf(v, sigma2=0.0)
    with pytest.raises(ValueError, match="finite"):
        evbmf(np.full((3, 3), np.nan))
