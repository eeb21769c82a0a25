"""Plain fine-tuning: train the current model with cross-entropy (e.g. to recover after a cut)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from compression.methods._common import finish, history_metrics, torch_module
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


@register_method(
    "finetune",
    config=FinetuneConfig,
    summary="Train the current model with cross-entropy and a cosine learning-rate schedule.",
    inputs=("torch",),
    tasks=("classification",),
)
def run(ctx: StageContext, cfg: FinetuneConfig) -> StageResult:
    """Fine-tune ``ctx.model`` in place and return it with its per-epoch history."""
    module = torch_module(ctx, "finetune")
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
