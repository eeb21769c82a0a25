"""The one place that calls tensorly: Tucker-2 and CP of a conv weight, in plain numpy.

tensorly's return shapes moved between releases: ``partial_tucker`` returned ``(core, factors)``
up to 0.8 and returns ``((core, factors), rec_errors)`` since 0.9; ``parafac`` returns a
``CPTensor`` (unpackable to ``(weights, factors)``) or, with ``return_errors``, a pair. Everything
else in EdgeSlim gets :class:`Tucker2` and :class:`CP` from here, so a tensorly upgrade touches
one file (pyproject pins the release the tests pass on).

Computations run in float64 on the numpy backend; ``numpy.linalg.LinAlgError`` (an SVD that does
not converge) is passed on for the caller to list as a skipped layer.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

# The CP "svd" initialisation takes an SVD of every mode unfolding of the weight. Some tensorly
# releases compute it with full_matrices=True whenever the rank exceeds the short side (the
# kernel modes: 3 < rank), allocating a (long side)^2 matrix: O*I*k floats squared, 300 GB for a
# 256x256x3x3 conv. Above this many float64 elements of such a matrix the random initialisation
# is used instead (and the caller reports it).
SVD_INIT_MAX_ELEMENTS = 1 << 26  # 512 MiB of float64


@dataclass(frozen=True)
class Tucker2:
    """``W[o, i, :, :] ~ sum_{a,b} U_out[o, a] * core[a, b, :, :] * U_in[i, b]``."""

    core: np.ndarray  # (R_out, R_in, kh, kw)
    u_out: np.ndarray  # (O, R_out)
    u_in: np.ndarray  # (I, R_in)
    rel_error: float


@dataclass(frozen=True)
class CP:
    """``W[o, i, y, x] ~ sum_r out[o, r] * inp[i, r] * vert[y, r] * horiz[x, r]`` (weights folded
    into ``out``)."""

    out: np.ndarray  # (O, R)
    inp: np.ndarray  # (I, R)
    vert: np.ndarray  # (kh, R)
    horiz: np.ndarray  # (kw, R)
    rel_error: float
    init: Literal["svd", "random"]


def _tl() -> Any:
    import tensorly as tl

    tl.set_backend("numpy")
    return tl


def tensorly_version() -> str:
    import tensorly

    return str(tensorly.__version__)


def _rel_error(w: np.ndarray, approx: np.ndarray) -> float:
    norm = float(np.linalg.norm(w))
    return float(np.linalg.norm(w - approx)) / norm if norm > 0 else 0.0


def tucker2(
    weight: np.ndarray, ranks: tuple[int, int], *, n_iter_max: int = 20, seed: int = 0
) -> Tucker2:
    """Tucker-2 of a conv weight ``(O, I, kh, kw)`` on its two channel modes (HOOI).

    Args:
        ranks: ``(R_out, R_in)``, each between 1 and its mode's size.
    """
    from tensorly.decomposition import partial_tucker

    _tl()
    w = np.asarray(weight, dtype=np.float64)
    r_out, r_in = int(ranks[0]), int(ranks[1])
    if not (1 <= r_out <= w.shape[0] and 1 <= r_in <= w.shape[1]):
        raise ValueError(f"Tucker-2 ranks {ranks} do not fit a weight of shape {w.shape}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = partial_tucker(
            w, rank=[r_out, r_in], modes=[0, 1], n_iter_max=n_iter_max, init="svd",
            random_state=seed,
        )  # fmt: skip
    # >= 0.9: ((core, factors), errors); <= 0.8: (core, factors) with factors a list.
    first, second = result
    core, factors = (first, second) if isinstance(first, np.ndarray) else first
    core = np.asarray(core)
    u_out, u_in = (np.asarray(f) for f in factors)
    approx = np.einsum("abyx,oa,ib->oiyx", core, u_out, u_in, optimize=True)
    return Tucker2(core=core, u_out=u_out, u_in=u_in, rel_error=_rel_error(w, approx))


def svd_init_elements(shape: tuple[int, ...], rank: int) -> int:
    """The largest matrix (in elements) a full-matrices SVD initialisation could allocate."""
    total = int(np.prod(shape))
    worst = 0
    for n in shape:
        long_side = total // n
        worst = max(worst, long_side * long_side if rank > n else n * long_side)
    return worst


def cp(
    weight: np.ndarray,
    rank: int,
    *,
    n_iter_max: int = 100,
    tol: float = 1e-6,
    seed: int = 0,
    svd_init_max_elements: int = SVD_INIT_MAX_ELEMENTS,
) -> CP:
    """Rank-``rank`` CP (ALS) of a conv weight ``(O, I, kh, kw)``.

    The SVD initialisation is used when its worst-case matrix stays under
    ``svd_init_max_elements``; above it a seeded random initialisation is used (``init`` says
    which).
    """
    from tensorly.decomposition import parafac

    tl = _tl()
    w = np.asarray(weight, dtype=np.float64)
    if rank < 1:
        raise ValueError(f"CP rank must be at least 1, got {rank}")
    init: Literal["svd", "random"] = (
        "svd" if svd_init_elements(w.shape, rank) <= svd_init_max_elements else "random"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = parafac(
            tl.tensor(w), rank=rank, n_iter_max=n_iter_max, init=init, tol=tol,
            random_state=seed, normalize_factors=True,
        )  # fmt: skip
    # A CPTensor (any release since 0.5) unpacks to (weights, factors); return_errors is not
    # asked for, as it is deprecated and changes the shape again.
    weights, factors = result
    weights = np.asarray(weights) if weights is not None else np.ones(rank)
    # The norms go evenly into the four factors, so no conv of the chain gets tiny or huge
    # weights (fine-tuning them with one learning rate works better).
    share = np.abs(weights) ** 0.25
    a, b, c, d = (np.asarray(f) * share[None, :] for f in factors)
    a = a * np.sign(weights)[None, :]
    approx = np.einsum("or,ir,yr,xr->oiyx", a, b, c, d, optimize=True)
    return CP(out=a, inp=b, vert=c, horiz=d, rel_error=_rel_error(w, approx), init=init)
