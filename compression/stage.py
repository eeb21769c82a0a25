"""The types a method sees: the model in hand, the stage's context, and what a stage returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compression.registry import ModelFormat, TaskType

if TYPE_CHECKING:
    import torch
    from torch import nn

    from compression.datasets import DatasetBundle


@dataclass(frozen=True)
class ArchSpec:
    """A zoo architecture and the arguments it was built with."""

    name: str
    num_classes: int
    in_channels: int
    # The zoo options beyond the sizes, sorted by name, e.g. (("input_size", 96), ("width", 0.25))
    # for a detector; a tuple so the spec stays hashable.
    options: tuple[tuple[str, Any], ...] = ()

    def build_kwargs(self) -> dict[str, Any]:
        """Keyword arguments that rebuild the architecture with ``zoo.create_model``."""
        return {
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            **dict(self.options),
        }


@dataclass
class ModelState:
    """The model between stages: a torch module, or (after quantization) an ONNX file."""

    input_shape: tuple[int, int, int]  # C, H, W
    num_classes: int
    task: TaskType = "classification"
    module: nn.Module | None = None
    onnx_path: Path | None = None
    arch: ArchSpec | None = None

    @property
    def format(self) -> ModelFormat:
        return "torch" if self.module is not None else "onnx"


@dataclass(frozen=True)
class LayerChange:
    """One layer before and after a stage: channels for structured methods, sparsity otherwise,
    MACs where the layer's cost changed shape (a conv swapped for a lightweight block)."""

    name: str
    kind: str  # "conv", "linear", ...
    channels_before: int | None = None
    channels_after: int | None = None
    params_before: int | None = None
    params_after: int | None = None
    sparsity_before: float | None = None
    sparsity_after: float | None = None
    macs_before: int | None = None  # one sample's multiply-accumulates in this layer
    macs_after: int | None = None
    ranks: tuple[int, ...] | None = None  # a decomposition's ranks (Tucker-2: out, in; CP: R)
    note: str | None = None  # what was done to the layer, or why it was skipped
    # A decomposition's latency gate: the dense conv and its chain measured in ONNX Runtime
    # (µs, batch 1, this machine); None when nothing was timed.
    latency_us_before: float | None = None
    latency_us_after: float | None = None
    # The gate's speedup: the median over its rounds of dense / chain, paired round by round
    # (what it decided on; close to, but not always, latency_us_before / latency_us_after).
    latency_speedup: float | None = None


ProgressFn = Callable[[float, str, dict[str, Any]], None]


@dataclass
class StageContext:
    """What the pipeline hands a method.

    ``report(fraction, message, metrics)`` takes the fraction of *this stage* done (0..1);
    ``check_cancel()`` raises :class:`compression.errors.Cancelled` when the caller asked to
    stop, and methods call it between batches. Per-epoch metrics go to ``report`` with the keys
    ``epoch``, ``loss``, ``train_acc``, ``val_acc`` so that pages can draw training curves.
    """

    model: ModelState
    data: DatasetBundle
    device: torch.device
    work_dir: Path
    seed: int
    report: ProgressFn
    check_cancel: Callable[[], None]
    load_model: Callable[[str], ModelState] | None = None  # resolves e.g. a teacher reference


@dataclass
class StageResult:
    model: ModelState
    metrics: dict[str, float] = field(default_factory=dict)
    layers: list[LayerChange] = field(default_factory=list)
    artifacts: dict[str, Path] = field(default_factory=dict)  # extra files, e.g. {"onnx_int8": p}
    history: list[dict[str, float]] = field(default_factory=list)  # per-epoch metrics
    # JSON-serialisable detail for report.json, e.g. {"deep_compression": table} (weight_coding)
    extras: dict[str, Any] = field(default_factory=dict)
