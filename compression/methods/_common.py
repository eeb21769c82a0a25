"""Helpers the method modules share: getting the torch module, finding the classifier.

MACs are counted by :mod:`compression.macs`, the one counter, not here.
"""

from __future__ import annotations

import torch
from torch import nn

from compression.errors import ConfigError, StageScopeError
from compression.model_facts import ModelFacts
from compression.stage import StageContext


def torch_module(ctx: StageContext, method: str) -> nn.Module:
    """The stage's torch module, or a clear error when the model is already ONNX."""
    module = ctx.model.module
    if module is None:
        raise StageScopeError(
            f"{method} needs a torch model, but the model is ONNX at this point "
            "(put quantization last in the recipe)"
        )
    return module


def example_input(ctx: StageContext, module: nn.Module) -> torch.Tensor:
    """A batch-of-one dummy input on the module's device, for tracing and counting."""
    device = next(iter(module.parameters()), torch.empty(0)).device
    return torch.randn(1, *ctx.model.input_shape, device=device)


def classifier_layer(module: nn.Module, num_classes: int) -> nn.Module | None:
    """The final classifier: the last Linear/Conv whose outputs are the class logits.

    Structured methods must never remove its output channels, and distillation hooks its input
    as the penultimate features.
    """
    found: nn.Module | None = None
    for m in module.modules():
        if (isinstance(m, nn.Linear) and m.out_features == num_classes) or (
            isinstance(m, nn.Conv2d) and m.out_channels == num_classes
        ):
            found = m
    return found


def detection_heads(module: nn.Module) -> list[nn.Module] | None:
    """A YOLO detector's head convs (``module.head_convs()``, one per level, their outputs the
    raw ``A * (5 + C)`` predictions), or None for a model without them."""
    heads = getattr(module, "head_convs", None)
    return list(heads()) if callable(heads) else None


def prunable_layers(module: nn.Module) -> list[tuple[str, nn.Conv2d | nn.Linear]]:
    """Every conv and linear layer with its qualified name, in module order."""
    return [(n, m) for n, m in module.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def layer_kind(m: nn.Module) -> str:
    return "conv" if isinstance(m, nn.Conv2d) else "linear"


def finish(module: nn.Module) -> nn.Module:
    """Leave a stage's module on the CPU in eval mode: exports and checkpoints expect that."""
    module.to("cpu")
    module.eval()
    return module


def history_metrics(history: list[dict[str, float]]) -> dict[str, float]:
    """The last epoch's validation accuracy, when there was training."""
    return {"val_acc": history[-1]["val_acc"]} if history else {}


def require_yolo_detector(facts: ModelFacts, why: str) -> None:
    """Refuse a detector of another family than YOLO (when its architecture is known): the
    method reads YOLO heads; ``why`` completes the sentence."""
    if facts.arch is not None and "yolo" not in facts.arch:
        raise ConfigError(
            "method", f"{facts.label} is a detection model of another family than YOLO; {why}"
        )
