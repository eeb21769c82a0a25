"""Tensor-Train (TT) matrices for 1x1 convolutions and linear layers, and their contraction order.

A dense weight ``W`` of shape ``(O, I)`` is seen as a tensor with paired modes: ``O = o_1..o_d``
and ``I = i_1..i_d``. TT-SVD (Oseledets 2011) writes it as a chain of cores
``G_k[r_{k-1}, o_k, i_k, r_k]`` (``r_0 = r_d = 1``), so a layer stores
``sum_k r_{k-1} o_k i_k r_k`` numbers instead of ``O * I``. The thesis (seed 001) chooses every
layer's ranks adaptively instead of by hand, and points out that the factorised layer is only
cheaper to *run* when the chain ``x, G_1..G_d`` is contracted in a good order; the order is a
path search, done here with opt_einsum's dynamic-programming optimiser against FLOPs for the
layer's real input shape.

The forward of :class:`TTLayer` executes that order as plain ``reshape`` / ``permute`` /
``matmul`` ops, never ``torch.einsum``: the ONNX export of einsum is an ``Einsum`` node, which
ONNX Runtime's quantizer leaves in float (and which several mobile runtimes lack), so a TT model
would stop being quantizable by ``ptq_int8``.

TT-SVD itself is tensorly's ``tensor_train``, called only from :func:`tt_svd` (the one place;
it pins nothing beyond ``tensorly>=0.9`` because only the list-of-cores return is used).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import opt_einsum as oe
import torch
from torch import nn

from compression.structure import structural

LayerKind = Literal["conv", "linear"]
Path = list[tuple[int, ...]]

# Labels of the chain's free indices (single characters: opt_einsum wants symbols).
_BATCH = "b"
_SPATIAL = "s"


# --- mode factorisation -----------------------------------------------------------------------


def _ordered_factorisations(n: int, d: int, smallest: int = 1) -> list[tuple[int, ...]]:
    """Every way to write ``n`` as ``d`` factors >= ``smallest`` in non-decreasing order."""
    if d == 1:
        return [(n,)] if n >= smallest else []
    out = []
    f = smallest
    while f**d <= n or (f == 1 and smallest == 1):
        if n % f == 0:
            for rest in _ordered_factorisations(n // f, d - 1, f):
                out.append((f, *rest))
        f += 1
        if f > n:
            break
    return out


def balanced_factors(n: int, d: int) -> tuple[int, ...]:
    """``n`` as ``d`` factors, as equal as possible, in non-decreasing order.

    Balanced modes give the largest admissible ranks for the fewest parameters. A count with
    too few prime factors (a prime, or 6 into 3 modes) takes factors of 1: a mode of size 1 is a
    legal TT-matrix mode (its core only maps the other side's mode), so prime channel counts
    need no padding.
    """
    if n < 1 or d < 1:
        raise ValueError(f"cannot factor {n} into {d} modes")
    options = _ordered_factorisations(n, d)
    # Fewest ones first (a 1 wastes a mode), then the smallest largest factor.
    return min(options, key=lambda f: (f.count(1), f[-1], -f[0]))


def mode_pairs(out_features: int, in_features: int, d: int) -> tuple[tuple[int, ...], ...] | None:
    """``(out_modes, in_modes)`` for ``d`` cores, or None when a core would map 1 to 1.

    The output modes run largest-first and the input modes smallest-first, so every core's
    ``o_k * i_k`` is about the same and the bond ranks are not squeezed by a lopsided core.
    """
    out_modes = tuple(sorted(balanced_factors(out_features, d), reverse=True))
    in_modes = balanced_factors(in_features, d)
    if any(o * i == 1 for o, i in zip(out_modes, in_modes, strict=True)):
        return None
    return out_modes, in_modes


def max_ranks(out_modes: Sequence[int], in_modes: Sequence[int]) -> list[int]:
    """The largest useful rank of each inner bond: ``min`` of the two sides' sizes."""
    sizes = [o * i for o, i in zip(out_modes, in_modes, strict=True)]
    return [
        min(math.prod(sizes[: k + 1]), math.prod(sizes[k + 1 :])) for k in range(len(sizes) - 1)
    ]


def tt_params(out_modes: Sequence[int], in_modes: Sequence[int], ranks: Sequence[int]) -> int:
    """Numbers stored by the cores (no bias)."""
    full = [1, *ranks, 1]
    return sum(
        full[k] * o * i * full[k + 1]
        for k, (o, i) in enumerate(zip(out_modes, in_modes, strict=True))
    )


# --- TT-SVD -----------------------------------------------------------------------------------


def _paired_tensor(w: np.ndarray, out_modes: Sequence[int], in_modes: Sequence[int]) -> np.ndarray:
    """``(O, I)`` -> ``(o_1 i_1, ..., o_d i_d)``, the tensor TT-SVD factorises."""
    d = len(out_modes)
    t = w.reshape(*out_modes, *in_modes)
    t = t.transpose([ax for k in range(d) for ax in (k, d + k)])
    return t.reshape([o * i for o, i in zip(out_modes, in_modes, strict=True)])


def tt_svd(
    w: np.ndarray, out_modes: Sequence[int], in_modes: Sequence[int], ranks: Sequence[int]
) -> list[np.ndarray]:
    """TT-SVD of the matrix ``w`` (``(O, I)``); cores shaped ``(r_{k-1}, o_k, i_k, r_k)``.

    The one call into tensorly. Ranks above a bond's maximum are an error, not a silent clamp:
    callers decide whether that is a skip or a config error.
    """
    from tensorly.decomposition import tensor_train

    limits = max_ranks(out_modes, in_modes)
    if len(ranks) != len(limits):
        raise ValueError(f"{len(out_modes)} modes need {len(limits)} ranks, got {len(ranks)}")
    for r, lim in zip(ranks, limits, strict=True):
        if not 1 <= r <= lim:
            raise ValueError(f"rank {r} outside 1..{lim}")
    tensor = _paired_tensor(np.asarray(w, dtype=np.float32), out_modes, in_modes)
    factors = tensor_train(tensor, rank=[1, *ranks, 1])
    cores = [np.asarray(f) for f in factors]
    out = []
    for core, o, i in zip(cores, out_modes, in_modes, strict=True):
        out.append(core.reshape(core.shape[0], o, i, core.shape[-1]))
    return out


def balance_cores(cores: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The same chain with every core at the same Frobenius norm (their product unchanged).

    TT-SVD leaves the left cores orthonormal and puts the whole scale of the weight into the
    last core. Gradient descent on such a chain is badly conditioned: a core's gradient is
    scaled by the norms of the others, so the orthonormal cores get large steps and the last
    one tiny ones, and weight decay pulls unevenly. Rescaling core ``k`` by ``g / ||G_k||``
    (``g`` the geometric mean of the norms) changes no product of the chain.
    """
    norms = [float(np.linalg.norm(c)) for c in cores]
    if not cores or min(norms) <= 0.0:
        return [np.asarray(c) for c in cores]
    g = math.exp(sum(math.log(n) for n in norms) / len(norms))
    return [np.asarray(c * (g / n), dtype=c.dtype) for c, n in zip(cores, norms, strict=True)]


def tt_to_matrix(cores: Sequence[np.ndarray]) -> np.ndarray:
    """Contract TT cores back into the dense ``(O, I)`` matrix."""
    out_modes = [c.shape[1] for c in cores]
    in_modes = [c.shape[2] for c in cores]
    acc = cores[0]  # (1, O_so_far, I_so_far, r)
    for core in cores[1:]:
        r0, o_a, i_a, _ = acc.shape
        _, o_b, i_b, r_b = core.shape
        acc = np.einsum("aoir,rpjs->aopijs", acc, core).reshape(r0, o_a * o_b, i_a * i_b, r_b)
    return acc.reshape(math.prod(out_modes), math.prod(in_modes))


def relative_error(w: np.ndarray, cores: Sequence[np.ndarray]) -> float:
    """``||W - W_tt||_F / ||W||_F``."""
    norm = float(np.linalg.norm(w))
    return float(np.linalg.norm(w - tt_to_matrix(cores))) / max(norm, 1e-30)


# --- rank search ------------------------------------------------------------------------------


def ranks_for_error(
    w: np.ndarray, out_modes: Sequence[int], in_modes: Sequence[int], max_error: float
) -> tuple[list[int], float]:
    """The smallest ranks whose TT-SVD stays within ``max_error`` (relative Frobenius).

    Oseledets' delta-truncated TT-SVD: the sweep of SVDs of the sequential unfoldings, each
    truncated to the fewest singular values whose discarded energy stays within
    ``max_error**2 * ||W||**2 / (d - 1)``. Because the left factors are orthonormal the
    discarded parts are orthogonal, so the squared error of the whole chain is exactly the sum
    of the discarded energies; it is returned with the ranks (and it is what tensorly's
    ``tensor_train`` reproduces at these ranks, which the tests check). Each bond gets its own
    rank from its own spectrum: a fast-decaying bond ends up low, which is the adaptivity the
    thesis asks for, at the cost of one SVD sweep instead of a search over rank tuples.
    """
    d = len(out_modes)
    sizes = [o * i for o, i in zip(out_modes, in_modes, strict=True)]
    # float32 SVDs: twice as fast, and the ranks they pick match float64's to the last value
    # on the zoo's layers; the energies are summed in float64.
    t = _paired_tensor(np.asarray(w, dtype=np.float32), out_modes, in_modes)
    total = float(np.sum(t.astype(np.float64) ** 2))
    if d == 1 or total == 0.0:
        return [1] * (d - 1), 0.0
    budget = max_error**2 * total / (d - 1)
    rest = t.reshape(sizes[0], -1)
    ranks: list[int] = []
    discarded = 0.0
    r_prev = 1
    for k in range(d - 1):
        rest = rest.reshape(r_prev * sizes[k], -1)
        _, s, vt = np.linalg.svd(rest, full_matrices=False)
        energy = s.astype(np.float64) ** 2
        # tail[r] = energy discarded when keeping r values
        tail = np.concatenate([np.cumsum(energy[::-1])[::-1], [0.0]])
        r = int(np.argmax(tail <= budget))
        r = max(r, 1)
        discarded += float(tail[r])
        ranks.append(r)
        rest = s[:r, None] * vt[:r]
        r_prev = r
    return ranks, math.sqrt(discarded / total)


def _largest_passing(values: Sequence[float], ok: Callable[[float], bool]) -> int | None:
    """Index of the largest ``values[i]`` with ``ok``, assuming ``ok`` holds up to a point."""
    lo, hi, best = 0, len(values) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if ok(values[mid]):
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best


def search_error_budget(
    levels: Sequence[float], accept: Callable[[float], bool]
) -> tuple[float | None, int]:
    """The largest error budget in ``levels`` (ascending) that ``accept`` passes, by bisection.

    Used by the accuracy criterion: ``accept(eps)`` decomposes the layer at budget ``eps`` and
    measures the model on validation images. Returns the budget (None when even the smallest
    fails) and the number of measurements.
    """
    calls = 0

    def ok(eps: float) -> bool:
        nonlocal calls
        calls += 1
        return accept(eps)

    best = _largest_passing(levels, ok)
    return (levels[best] if best is not None else None), calls


# --- contraction order ------------------------------------------------------------------------


@dataclass(frozen=True)
class ChainSpec:
    """The einsum of one TT layer applied to its input, with labels and shapes."""

    inputs: tuple[str, ...]  # x first, then core 1..d (boundary bonds dropped)
    output: str
    sizes: dict[str, int]

    @property
    def equation(self) -> str:
        return ",".join(self.inputs) + "->" + self.output

    def shapes(self) -> list[tuple[int, ...]]:
        return [tuple(self.sizes[c] for c in term) for term in self.inputs]


def chain_spec(
    kind: LayerKind,
    out_modes: Sequence[int],
    in_modes: Sequence[int],
    ranks: Sequence[int],
    *,
    batch: int = 1,
    spatial: int = 1,
) -> ChainSpec:
    """Labels: ``b`` batch, ``s`` pixels (convs only), then each mode and bond its own symbol."""
    d = len(out_modes)
    pool = (oe.get_symbol(k) for k in itertools.count() if oe.get_symbol(k) not in "bs")
    o_lab = [next(pool) for _ in range(d)]
    i_lab = [next(pool) for _ in range(d)]
    r_lab = [next(pool) for _ in range(d - 1)]
    sizes = {_BATCH: batch}
    sizes.update(dict(zip(o_lab, out_modes, strict=True)))
    sizes.update(dict(zip(i_lab, in_modes, strict=True)))
    sizes.update(dict(zip(r_lab, ranks, strict=True)))
    tail = _SPATIAL if kind == "conv" else ""
    if kind == "conv":
        sizes[_SPATIAL] = spatial
    x = _BATCH + "".join(i_lab) + tail
    cores = []
    for k in range(d):
        left = r_lab[k - 1] if k > 0 else ""
        right = r_lab[k] if k < d - 1 else ""
        cores.append(left + o_lab[k] + i_lab[k] + right)
    return ChainSpec((x, *cores), _BATCH + "".join(o_lab) + tail, sizes)


@dataclass(frozen=True)
class OrderPlan:
    """FLOPs of the dense layer and of the TT chain under the greedy and the DP order."""

    dp_path: Path
    greedy_path: Path
    dp_flops: int
    greedy_flops: int
    dense_flops: int


def _path_cost(spec: ChainSpec, optimize: Any) -> tuple[Path, int]:
    path, info = oe.contract_path(spec.equation, *spec.shapes(), shapes=True, optimize=optimize)
    return [tuple(int(i) for i in step) for step in path], int(info.opt_cost)


def plan_order(
    kind: LayerKind,
    out_modes: Sequence[int],
    in_modes: Sequence[int],
    ranks: Sequence[int],
    *,
    spatial: int = 1,
) -> OrderPlan:
    """Find the DP-optimal and the greedy order for batch 1 at the layer's real ``H*W``.

    FLOPs use opt_einsum's count (a multiply-add is 2); the dense layer is costed by the same
    function on ``oi,bi[s]->bo[s]`` so the three numbers are comparable.
    """
    spec = chain_spec(kind, out_modes, in_modes, ranks, batch=1, spatial=spatial)
    dp_path, dp_flops = _path_cost(spec, oe.DynamicProgramming(minimize="flops"))
    greedy_path, greedy_flops = _path_cost(spec, "greedy")
    tail = "s" if kind == "conv" else ""
    x_shape: tuple[int, ...] = (1, math.prod(in_modes))
    if kind == "conv":
        x_shape = (*x_shape, spatial)
    dense_shapes = [(math.prod(out_modes), math.prod(in_modes)), x_shape]
    _, dense_info = oe.contract_path(
        f"oi,bi{tail}->bo{tail}", *dense_shapes, shapes=True, optimize="greedy"
    )
    return OrderPlan(dp_path, greedy_path, dp_flops, greedy_flops, int(dense_info.opt_cost))


# --- the layer --------------------------------------------------------------------------------


def _pairwise(
    a: torch.Tensor, la: str, b: torch.Tensor, lb: str, keep: set[str], sizes: dict[str, int]
) -> tuple[torch.Tensor, str]:
    """Contract two labelled tensors with permute + reshape + matmul (no einsum).

    Shared labels still needed later become matmul batch axes; shared labels needed nowhere
    else are summed by the matmul; the rest stay. A size of -1 marks the one runtime-sized
    label (the batch), so every reshape has at most one -1.
    """
    batch = [c for c in la if c in lb and c in keep]
    inner = [c for c in la if c in lb and c not in keep]
    a_free = [c for c in la if c not in lb]
    b_free = [c for c in lb if c not in la]

    def size(group: Sequence[str]) -> int:
        return -1 if any(sizes[c] == -1 for c in group) else math.prod(sizes[c] for c in group)

    def arrange(t: torch.Tensor, labels: str, order: list[str]) -> torch.Tensor:
        perm = [labels.index(c) for c in order]
        return t if perm == sorted(perm) else t.permute(perm)

    a = arrange(a, la, batch + a_free + inner)
    b = arrange(b, lb, batch + inner + b_free)
    if batch:
        a = a.reshape(size(batch), size(a_free), size(inner))
        b = b.reshape(size(batch), size(inner), size(b_free))
    else:
        a = a.reshape(size(a_free), size(inner))
        b = b.reshape(size(inner), size(b_free))
    out_labels = batch + a_free + b_free
    out = torch.matmul(a, b).reshape([sizes[c] for c in out_labels])
    return out, "".join(out_labels)


@structural("tt_layer")
class TTLayer(nn.Module):
    """A 1x1 conv (stride allowed, no padding) or linear layer held as TT cores.

    ``path`` is the contraction order (opt_einsum's format: pairs of positions in the
    operand list ``[x, G_1, ..., G_d]``, the result appended at the end); the forward runs it
    with :func:`_pairwise`. ``cores[k]`` has shape ``(r_{k-1}, o_k, i_k, r_k)``.
    """

    def __init__(
        self,
        kind: LayerKind,
        out_modes: Sequence[int],
        in_modes: Sequence[int],
        ranks: Sequence[int],
        path: Path,
        *,
        bias: bool,
        stride: int = 1,
    ) -> None:
        super().__init__()
        if len(out_modes) != len(in_modes) or len(ranks) != len(out_modes) - 1:
            raise ValueError("TTLayer needs d output modes, d input modes and d-1 ranks")
        self.kind: LayerKind = kind
        self.out_modes = tuple(int(v) for v in out_modes)
        self.in_modes = tuple(int(v) for v in in_modes)
        self.ranks = tuple(int(v) for v in ranks)
        self.path: Path = [tuple(int(i) for i in step) for step in path]
        self.stride = int(stride)
        self.out_features = math.prod(self.out_modes)
        self.in_features = math.prod(self.in_modes)
        full = [1, *self.ranks, 1]
        self.cores = nn.ParameterList(
            nn.Parameter(torch.empty(full[k], o, i, full[k + 1]))
            for k, (o, i) in enumerate(zip(self.out_modes, self.in_modes, strict=True))
        )
        for c in self.cores:
            nn.init.normal_(c, std=0.02)
        self.bias = nn.Parameter(torch.zeros(self.out_features)) if bias else None
        self._spec = chain_spec(kind, self.out_modes, self.in_modes, self.ranks)
        self._check_path()

    def _check_path(self) -> None:
        n = len(self.out_modes) + 1
        for step in self.path:
            if len(step) != 2 or any(not 0 <= i < n for i in step) or step[0] == step[1]:
                raise ValueError(f"invalid contraction step {step}")
            n -= 1
        if n != 1:
            raise ValueError("the contraction path does not reduce the chain to one tensor")

    @classmethod
    def from_cores(
        cls,
        kind: LayerKind,
        cores: Sequence[np.ndarray],
        path: Path,
        *,
        bias: torch.Tensor | None,
        stride: int = 1,
    ) -> TTLayer:
        layer = cls(
            kind,
            [c.shape[1] for c in cores],
            [c.shape[2] for c in cores],
            [c.shape[-1] for c in cores[:-1]],
            path,
            bias=bias is not None,
            stride=stride,
        )
        with torch.no_grad():
            for p, c in zip(layer.cores, cores, strict=True):
                p.copy_(torch.from_numpy(np.ascontiguousarray(c)).to(p.dtype))
            if bias is not None and layer.bias is not None:
                layer.bias.copy_(bias.detach().reshape(-1))
        return layer

    def to_spec(self) -> dict[str, Any]:
        """Everything but the weights, as JSON: what a checkpoint needs to rebuild the layer."""
        return {
            "kind": self.kind,
            "out_modes": list(self.out_modes),
            "in_modes": list(self.in_modes),
            "ranks": list(self.ranks),
            "path": [list(step) for step in self.path],
            "bias": self.bias is not None,
            "stride": self.stride,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> TTLayer:
        return cls(
            spec["kind"],
            spec["out_modes"],
            spec["in_modes"],
            spec["ranks"],
            [tuple(step) for step in spec["path"]],
            bias=bool(spec["bias"]),
            stride=int(spec.get("stride", 1)),
        )

    def dense_weight(self) -> torch.Tensor:
        """The ``(O, I)`` matrix the cores represent (for recontraction and tests)."""
        acc = self.cores[0]
        for core in list(self.cores)[1:]:
            r0, o_a, i_a, _ = acc.shape
            _, o_b, i_b, r_b = core.shape
            prod = acc.reshape(-1, acc.shape[-1]) @ core.reshape(core.shape[0], -1)
            acc = (
                prod.reshape(r0, o_a, i_a, o_b, i_b, r_b)
                .permute(0, 1, 3, 2, 4, 5)
                .reshape(r0, o_a * o_b, i_a * i_b, r_b)
            )
        return acc.reshape(self.out_features, self.in_features)

    def extra_repr(self) -> str:
        return (
            f"{self.kind}, out_modes={self.out_modes}, in_modes={self.in_modes}, "
            f"ranks={self.ranks}, stride={self.stride}, bias={self.bias is not None}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = self._spec
        sizes = dict(spec.sizes)
        sizes[_BATCH] = -1
        if self.kind == "conv":
            if self.stride > 1:
                x = x[:, :, :: self.stride, :: self.stride]
            height, width = x.shape[2], x.shape[3]
            sizes[_SPATIAL] = height * width
            lead: list[int] = []
        else:
            lead = list(x.shape[:-1])
        x_labels = spec.inputs[0]
        operands: list[tuple[torch.Tensor, str]] = [
            (x.reshape([sizes[c] for c in x_labels]), x_labels)
        ]
        for core, labels in zip(self.cores, spec.inputs[1:], strict=True):
            operands.append((core.reshape([spec.sizes[c] for c in labels]), labels))
        for i, j in self.path:
            (ta, la), (tb, lb) = operands[i], operands[j]
            rest = [lab for k, (_, lab) in enumerate(operands) if k not in (i, j)]
            keep = set(spec.output).union(*rest)
            merged = _pairwise(ta, la, tb, lb, keep, sizes)
            operands = [op for k, op in enumerate(operands) if k not in (i, j)]
            operands.append(merged)
        (y, labels) = operands[0]
        perm = [labels.index(c) for c in spec.output]
        if perm != sorted(perm):
            y = y.permute(perm)
        if self.kind == "conv":
            y = y.reshape(-1, self.out_features, height, width)
            if self.bias is not None:
                y = y + self.bias.reshape(1, -1, 1, 1)
            return y
        y = y.reshape([*lead, self.out_features])
        return y + self.bias if self.bias is not None else y


def left_to_right_path(d: int) -> Path:
    """x with core 1, the result with core 2, ...: a valid order that needs no search."""
    first: list[tuple[int, ...]] = [(0, 1)]
    return first + [(0, d - 1 - k) for k in range(d - 1)]
