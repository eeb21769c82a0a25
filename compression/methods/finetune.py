"""Plain fine-tuning: train the current model with cross-entropy (e.g. to recover after a cut);
a detector with its family's detection loss (:func:`compression.detection_train.train_detector`:
warm-up, horizontal flip and scale jitter, validation mAP@0.5 every epoch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from compression.methods._common import finish, history_metrics, torch_module
from compression.methods._detection import flip_param, train_detector_in_stage
from compression.registry import param, register_method
from compression.stage import StageContext, StageResult
from compression.training import train


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = param(5, help="passes over the training set", ge=1, le=1000)
    lr: float = param(0.01, help="peak learning rate (cosine decay to zero)", gt=0.0, le=10.0)
    batch_size: int = param(64, help="training batch size", ge=1, le=4096)
    optimizer: Literal["sgd", "adam"] = param("sgd", help="SGD with Nesterov momentum, or AdamW")
    weight_decay: float = param(5e-4, help="weight decay", ge=0.0, le=1.0)
    flip: bool = flip_param()


@register_method(
    "finetune",
    config=FinetuneConfig,
    summary="Train the current model with cross-entropy (a detector: its detection loss, with "
    "warm-up, flips and scale jitter) and a cosine learning-rate schedule.",
    inputs=("torch",),
    tasks=("classification", "detection"),
)
def run(ctx: StageContext, cfg: FinetuneConfig) -> StageResult:
    """Fine-tune ``ctx.model`` in place and return it with its per-epoch history."""
    module = torch_module(ctx, "finetune")
    if ctx.model.task == "detection":
        return _finetune_detector(ctx, cfg, module)
    history = train(
        module,
        ctx.data,
        ctx,
        epochs=cfg.epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        optimizer=cfg.optimizer,
        weight_decay=cfg.weight_decay,
        label="fine-tuning",
    )
    ctx.model.module = finish(module)
    return StageResult(model=ctx.model, metrics=history_metrics(history), history=history)


def _finetune_detector(ctx: StageContext, cfg: FinetuneConfig, module: nn.Module) -> StageResult:
    """Train a detector on its DetectionBundle's train split with the stage's epochs, learning
    rate, batch size, optimizer and weight decay; the validation mAP@0.5 is measured after
    every epoch (history rows: see :func:`train_detector_in_stage`)."""
    history = train_detector_in_stage(
        ctx,
        module,
        "finetune",
        epochs=cfg.epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        optimizer=cfg.optimizer,
        weight_decay=cfg.weight_decay,
        flip=cfg.flip,
        label="fine-tuning",
    )
    ctx.model.module = finish(module)
    metrics = (
        {"val_map50": history[-1]["val_map50"]} if history and "val_map50" in history[-1] else {}
    )
    metrics.update(history_metrics([h for h in history if "val_acc" in h]))
    return StageResult(model=ctx.model, metrics=metrics, history=history)
