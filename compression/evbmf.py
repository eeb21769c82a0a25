"""Analytic empirical variational Bayesian matrix factorisation (EVBMF): a rank from the data.

Nakajima, Sugiyama, Babacan and Tomioka, "Global analytic solution of fully-observed variational
Bayesian matrix factorization", JMLR 14 (2013), with the noise-variance estimate of Nakajima et
al., "Condition for perfect dimensionality recovery by variational Bayesian PCA", JMLR 16 (2015).
Kim et al. 2016 ("Compression of deep convolutional neural networks for fast and low power
mobile applications") pick Tucker-2 ranks with it on a conv weight's unfoldings.

Model: an ``L x M`` matrix ``V = B A^T + E`` with Gaussian noise of variance ``sigma^2``,
``L <= M`` (transpose otherwise), ``alpha = L / M``, singular values ``gamma_1 >= ... >= gamma_L``.
With every hyperparameter but ``sigma^2`` learned, the global solution keeps component ``h`` iff

    gamma_h > gamma_EVB = sigma * sqrt(M * x_),   x_ = (1 + tau_) * (1 + alpha / tau_),

where ``tau_`` is the zero of ``Phi(tau) + Phi(tau / alpha)``, ``Phi(z) = log(z + 1) / z - 1/2``
(``tau_ = 2.5129`` for a square matrix), and shrinks a kept one to

    gamma_h / 2 * (1 - (L+M) s / g2 + sqrt((1 - (L+M) s / g2)^2 - 4 L M s^2 / g2^2)),

with ``s = sigma^2`` and ``g2 = gamma_h^2``. ``sigma^2`` itself minimises the free energy, which
reduces to the one-dimensional ``Omega(sigma^2) = sum_h psi(gamma_h^2 / (M sigma^2))`` with
``psi(x) = x - log x + [x > x_] * (log(tau(x) + 1) + alpha log(tau(x) / alpha + 1) - tau(x))`` and
``tau(x) = (x - (1 + alpha) + sqrt((x - (1 + alpha))^2 - 4 alpha)) / 2``. ``psi`` is continuous at
``x_`` (the bracket is zero there, which is what defines ``tau_``), but ``Omega`` is not convex, so
it is searched on a log grid over ``(0, ||V||^2 / (L M)]`` and refined around the best point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq, minimize_scalar


@dataclass(frozen=True)
class EvbmfResult:
    """The rank EVBMF keeps, the noise variance it used, and the shrunk singular values."""

    rank: int
    sigma2: float
    threshold: float  # gamma_EVB: singular values above it are kept
    singular_values: np.ndarray  # all of them, descending
    shrunk: np.ndarray  # the kept ones after shrinkage (length ``rank``)


def tau_threshold(alpha: float) -> float:
    """``tau_``: the zero of ``Phi(tau) + Phi(tau / alpha)`` for ``0 < alpha <= 1``."""
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")

    def phi(z: float) -> float:
        return math.log1p(z) / z - 0.5

    def xi(t: float) -> float:
        return phi(t) + phi(t / alpha)

    # xi decreases from 1 (tau -> 0) to -1 (tau -> inf); the zero lies beyond sqrt(alpha).
    lo, hi = 1e-9, 4.0
    while xi(hi) > 0:
        hi *= 2.0
    return float(brentq(xi, lo, hi, xtol=1e-12))


def _tau(x: np.ndarray, alpha: float) -> np.ndarray:
    b = x - (1.0 + alpha)
    return 0.5 * (b + np.sqrt(np.maximum(b * b - 4.0 * alpha, 0.0)))


def _omega(sigma2: float, gamma2: np.ndarray, m: int, alpha: float, x_thr: float) -> float:
    x = gamma2 / (m * sigma2)
    x = np.maximum(x, 1e-300)
    psi = x - np.log(x)
    above = x > x_thr
    if np.any(above):
        t = _tau(x[above], alpha)
        psi[above] += np.log1p(t) + alpha * np.log1p(t / alpha) - t
    return float(np.sum(psi))


def evbmf(
    matrix: np.ndarray, *, sigma2: float | None = None, max_rank: int | None = None
) -> EvbmfResult:
    """EVBMF of ``matrix``: the rank it keeps and the noise variance (estimated unless given).

    Args:
        matrix: any 2-D array (it is transposed internally so that ``L <= M``).
        sigma2: the noise variance if known; estimated from the singular values otherwise.
        max_rank: keep at most this many components (``H`` in the papers); ``L`` by default.

    Raises:
        numpy.linalg.LinAlgError: the SVD did not converge.
        ValueError: an empty or non-finite matrix, or a non-positive ``sigma2``.
    """
    v = np.asarray(matrix, dtype=np.float64)
    if v.ndim != 2 or v.size == 0:
        raise ValueError(f"EVBMF needs a non-empty 2-D matrix, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError("EVBMF needs finite values")
    if v.shape[0] > v.shape[1]:
        v = v.T
    big_l, m = v.shape
    alpha = big_l / m
    gamma = np.linalg.svd(v, compute_uv=False)
    gamma2 = gamma**2
    h_max = big_l if max_rank is None else max(0, min(int(max_rank), big_l))
    tau_ = tau_threshold(alpha)
    x_thr = (1.0 + tau_) * (1.0 + alpha / tau_)
    total = float(np.sum(gamma2))
    if total <= 0.0:
        return EvbmfResult(0, 0.0, 0.0, gamma, np.zeros(0))

    if sigma2 is None:
        upper = total / (big_l * m)
        lower = upper * 1e-8
        if h_max < big_l:
            # With at most H components kept, the rest is noise: sigma^2 is no smaller than
            # their mean power, nor than where the (H+1)-th value would cross the threshold.
            rest = gamma2[h_max:]
            lower = max(lower, float(np.sum(rest)) / (m * (big_l - h_max)))
            lower = max(lower, float(gamma2[h_max]) / (m * x_thr))
        lower = min(lower, upper)
        grid = np.geomspace(lower, upper, 400) if lower < upper else np.array([upper])
        values = [_omega(s, gamma2, m, alpha, x_thr) for s in grid]
        i = int(np.argmin(values))
        lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
        best_s, best_v = float(grid[i]), values[i]
        if hi > lo:
            res = minimize_scalar(
                lambda s: _omega(s, gamma2, m, alpha, x_thr),
                bounds=(lo, hi),
                method="bounded",
                options={"xatol": lo * 1e-9},
            )
            if res.success and float(res.fun) <= best_v:
                best_s = float(res.x)
        sigma2 = best_s
    elif not sigma2 > 0.0:
        raise ValueError(f"the noise variance must be positive, got {sigma2}")

    threshold = math.sqrt(sigma2 * m * x_thr)
    rank = int(min(np.sum(gamma > threshold), h_max))
    g2 = gamma2[:rank]
    s = sigma2
    a = 1.0 - (big_l + m) * s / g2
    shrunk = (
        0.5 * gamma[:rank] * (a + np.sqrt(np.maximum(a * a - 4.0 * big_l * m * s * s / g2**2, 0)))
    )
    return EvbmfResult(rank, float(sigma2), threshold, gamma, shrunk)
