"""Layer sensitivity: how much ``val`` accuracy a network loses when one layer alone is pruned.

Li et al. 2017 ("Pruning Filters for Efficient ConvNets", section 4.1) prune each layer on its
own at increasing ratios, without retraining, and read off which layers are fragile: those get
small ratios, robust ones large. :func:`layer_sensitivity` does exactly that with the same
Torch-Pruning dependency graph and importances as ``channel_pruning``: for every prunable layer
(each coupled group's root, in module order; the classifier never) and every ratio it prunes a
copy of the network and measures top-1 accuracy on the loader it is given, which callers make
the ``val`` split: the result chooses ratios, so it must never see ``test``.
:func:`ratios_within` turns the result into ``channel_pruning``'s ``layer_ratios``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from compression.errors import ConfigError
from compression.evaluation import accuracy_torch
from compression.methods.channel_pruning import layer_pruner

IMPORTANCES: tuple[str, ...] = ("l1", "l2", "bn_scale")
MAX_RATIOS = 10
DEFAULT_RATIOS: tuple[float, ...] = (0.25, 0.5, 0.75)
# The analysis leaves every layer at least one channel; a ratio may go up to this.
MAX_RATIO = 0.95

ProgressFn = Callable[[float, str], None]


@dataclass(frozen=True)
class LayerSensitivity:
    """One layer: its channels, and per ratio the channels left and the val accuracy."""

    name: str
    kind: str  # "conv" or "linear"
    channels: int
    kept: tuple[int, ...]
    val_acc: tuple[float, ...]


@dataclass(frozen=True)
class SensitivityResult:
    """Every prunable layer (module order) against every ratio (ascending)."""

    ratios: tuple[float, ...]
    baseline_val_acc: float
    layers: tuple[LayerSensitivity, ...]
    importance: str
    round_to: int
    samples: int  # images the accuracies were measured on
    split: str = "val"

    def drop(self, layer: LayerSensitivity) -> list[float]:
        """Accuracy lost at each ratio, in percentage points (negative: it got better)."""
        return [self.baseline_val_acc - a for a in layer.val_acc]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SensitivityResult:
        layers = tuple(
            LayerSensitivity(
                name=str(row["name"]),
                kind=str(row["kind"]),
                channels=int(row["channels"]),
                kept=tuple(int(k) for k in row["kept"]),
                val_acc=tuple(float(a) for a in row["val_acc"]),
            )
            for row in data["layers"]
        )
        return cls(
            ratios=tuple(float(r) for r in data["ratios"]),
            baseline_val_acc=float(data["baseline_val_acc"]),
            layers=layers,
            importance=str(data["importance"]),
            round_to=int(data["round_to"]),
            samples=int(data["samples"]),
            split=str(data.get("split", "val")),
        )


def check_ratios(ratios: Iterable[Any], *, field: str = "ratios") -> tuple[float, ...]:
    """The ratios sorted and de-duplicated; refused unless 1 to ``MAX_RATIOS`` numbers in
    (0, ``MAX_RATIO``]."""
    out: set[float] = set()
    for r in ratios:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r):
            raise ConfigError(field, f"must be numbers, got {r!r}")
        if not 0.0 < float(r) <= MAX_RATIO:
            raise ConfigError(field, f"each ratio must be > 0 and <= {MAX_RATIO:g}, got {r!r}")
        out.add(round(float(r), 4))
    if not out:
        raise ConfigError(field, "give at least one ratio, e.g. 0.25, 0.5, 0.75")
    if len(out) > MAX_RATIOS:
        raise ConfigError(field, f"at most {MAX_RATIOS} ratios, got {len(out)}")
    return tuple(sorted(out))


def _channels(m: nn.Module) -> int:
    return int(m.out_channels if isinstance(m, nn.Conv2d) else getattr(m, "out_features", 0))


def layer_sensitivity(
    module: nn.Module,
    val_loader: Iterable[Any],
    ratios: Iterable[float] = DEFAULT_RATIOS,
    *,
    input_shape: tuple[int, int, int],
    num_classes: int,
    importance: str = "l1",
    round_to: int = 1,
    progress: ProgressFn | None = None,
    check_cancel: Callable[[], None] | None = None,
) -> SensitivityResult:
    """Prune each prunable layer of ``module`` alone at each ratio and measure accuracy.

    ``val_loader`` yields ``(images, labels)`` from the ``val`` split. Each cell prunes a fresh
    copy (``module`` itself is left as it was) with the ``importance`` ranking and keeps channel
    counts at multiples of ``round_to`` as ``channel_pruning`` would, so a cell shows what that
    ratio would really leave of the layer. ``progress(fraction, message)`` is called after every
    cell; ``check_cancel`` between batches.
    """
    rs = check_ratios(ratios)
    if importance not in IMPORTANCES:
        raise ConfigError("importance", f"must be one of {', '.join(IMPORTANCES)}")
    if round_to < 1:
        raise ConfigError("round_to", "must be >= 1")
    module = copy.deepcopy(module).cpu().eval()
    example = torch.randn(1, *input_shape)

    def pruner(m: nn.Module) -> Any:
        return layer_pruner(
            m,
            example,
            num_classes=num_classes,
            importance=importance,
            round_to=round_to,
            max_layer_ratio=MAX_RATIO,
        )

    names = pruner(module).layer_names()
    by_name = dict(module.named_modules())
    batches = list(val_loader)  # measured len(names) * len(rs) + 1 times
    samples = sum(len(b[1]) for b in batches)
    baseline = accuracy_torch(module, batches, check_cancel=check_cancel)
    total = max(1, len(names) * len(rs))
    rows = []
    for i, name in enumerate(names):
        kept: list[int] = []
        accs: list[float] = []
        for j, r in enumerate(rs):
            if check_cancel is not None:
                check_cancel()
            m = copy.deepcopy(module)
            pruner(m).prune_layers({name: r})
            kept.append(_channels(dict(m.named_modules())[name]))
            accs.append(accuracy_torch(m, batches, check_cancel=check_cancel))
            if progress is not None:
                progress(
                    (i * len(rs) + j + 1) / total,
                    f"{name} at {r:g}: {kept[-1]} channels left, val acc {accs[-1]:.2f}%",
                )
        target = by_name[name]
        rows.append(
            LayerSensitivity(
                name=name,
                kind="conv" if isinstance(target, nn.Conv2d) else "linear",
                channels=_channels(target),
                kept=tuple(kept),
                val_acc=tuple(accs),
            )
        )
    return SensitivityResult(
        ratios=rs,
        baseline_val_acc=baseline,
        layers=tuple(rows),
        importance=importance,
        round_to=round_to,
        samples=samples,
    )


def ratios_within(result: SensitivityResult, max_drop: float) -> dict[str, float]:
    """Per layer, the largest ratio whose val accuracy drop is at most ``max_drop`` points.

    A layer whose smallest ratio already loses more is left out (not pruned), and so is a ratio
    that removes no channel (``round_to`` kept the layer whole). Layers keep module order.
    """
    if not math.isfinite(max_drop) or max_drop < 0:
        raise ConfigError("max_drop", f"must be a number >= 0, got {max_drop!r}")
    out: dict[str, float] = {}
    for layer in result.layers:
        best = None
        for r, drop, kept in zip(result.ratios, result.drop(layer), layer.kept, strict=True):
            if drop <= max_drop + 1e-9 and kept < layer.channels:
                best = r
        if best is not None:
            out[layer.name] = best
    return out
