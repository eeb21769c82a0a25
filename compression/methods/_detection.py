"""Training a detector inside a stage: the one place where a method's epochs, learning rate and
flip option become a :class:`~compression.detection_train.DetectionTrainConfig`, and the
trainer's epoch rows become the stage history the report draws (``val_acc`` = mAP@0.5 in
percent, the figure the curves share with classifiers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from compression.errors import ConfigError, StageScopeError
from compression.registry import param
from compression.stage import StageContext


def flip_param() -> Any:
    """The detectors' horizontal-flip option, one definition for every method that trains one."""
    return param(
        True,
        help="detectors: mirror each training image left-right at random (turn off where a "
        "mirrored object never occurs, e.g. digits or text)",
    )


def train_detector_in_stage(
    ctx: StageContext,
    module: nn.Module,
    method: str,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    optimizer: str,
    weight_decay: float,
    flip: bool,
    label: str,
    after_backward: Callable[[nn.Module], None] | None = None,
    progress_range: tuple[float, float] = (0.0, 1.0),
) -> list[dict[str, float]]:
    """Train ``module`` in place on the stage's DetectionBundle (validation mAP@0.5 after every
    epoch when there is a val split) and return the history rows: ``epoch``, ``loss`` (and the
    family's loss terms), ``lr``, ``val_map50``, ``val_map50_95`` (fractions) and ``val_acc``."""
    from compression.detection_data import DetectionBundle
    from compression.detection_train import DetectionTrainConfig, train_detector

    data = ctx.data
    if not isinstance(data, DetectionBundle):
        raise StageScopeError(
            f"{method}: a detection model trains on a detection data set, "
            f"not the classification data set {getattr(data, 'name', '?')!r}"
        )
    train_cfg = DetectionTrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        optimizer=optimizer,
        seed=ctx.seed,
        device=str(ctx.device),
        val_every=1 if data.val else 0,
        flip=flip,
    )
    try:
        trained = train_detector(
            module,
            data,
            train_cfg,
            progress=ctx.report,
            check_cancel=ctx.check_cancel,
            progress_range=progress_range,
            label=label,
            after_backward=after_backward,
        )
    except ValueError as exc:  # a bundle that does not fit the model: a config problem
        raise ConfigError(method, str(exc)) from exc
    history: list[dict[str, float]] = []
    for row in trained.epochs:
        entry = {k: float(v) for k, v in row.items()}
        if "val_map50" in entry:
            entry["val_acc"] = 100.0 * entry["val_map50"]
        history.append(entry)
    return history
