"""The tensorly adapter: shapes, exactness at full rank, and the CP memory guard."""

from __future__ import annotations

import numpy as np
import pytest

from compression.decompose import cp, svd_init_elements, tensorly_version, tucker2


def test_the_pinned_tensorly_release() -> None:
    assert tensorly_version().startswith("0.10.")


def test_tucker2_shapes_and_exact_at_full_rank() -> None:
    w = np.random.default_rng(0).normal(size=(12, 8, 3, 3))
    t = tucker2(w, (5, 3))
    assert t.core.shape == (5, 3, 3, 3) and t.u_out.shape == (12, 5) and t.u_in.shape == (8, 3)
    assert 0.0 < t.rel_error < 1.0
    assert tucker2(w, (12, 8)).rel_error < 1e-10
    assert tucker2(w, (10, 7)).rel_error < t.rel_error
    with pytest.raises(ValueError, match="do not fit"):
        tucker2(w, (13, 8))


def test_cp_recovers_an_exact_low_rank_weight() -> None:
    rng = np.random.default_rng(0)
    factors = [rng.normal(size=(n, 4)) for n in (10, 6, 3, 3)]
    w = np.einsum("or,ir,yr,xr->oiyx", *factors)
    f = cp(w, 4, seed=0, n_iter_max=500, tol=1e-12)
    assert f.out.shape == (10, 4) and f.vert.shape == (3, 4) and f.init == "svd"
    assert f.rel_error < 1e-4


def test_the_svd_init_guard_switches_to_random_init() -> None:
    w = np.random.default_rng(0).normal(size=(16, 16, 3, 3))
    # Rank 20 > 3: a full-matrices SVD of the (3, 768) unfolding would be 768^2 elements.
    assert svd_init_elements(w.shape, 20) == 768 * 768
    assert cp(w, 20, svd_init_max_elements=768 * 768).init == "svd"
    guarded = cp(w, 20, svd_init_max_elements=1000)
    assert guarded.init == "random" and guarded.rel_error < 1.0
