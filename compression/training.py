"""The one training loop every training-based method uses (fine-tuning, sparse training, KD).

Methods customise it through three hooks instead of copying it: ``loss_fn`` (distillation brings
its own loss), ``after_backward`` (e.g. the L1 subgradient on BN scales of network slimming) and
``after_step`` (e.g. re-applying pruning masks).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from compression.evaluation import accuracy_torch

if TYPE_CHECKING:
    from compression.datasets import DatasetBundle
    from compression.stage import StageContext

OptimizerName = Literal["sgd", "adam"]
Hook = Callable[[nn.Module], None]


class LossFn(Protocol):
    """Computes the training loss for one batch; returns ``(loss, logits)``.

    It receives the module itself (not its logits) so that a loss can run extra forwards,
    e.g. a teacher's, or read features captured by forward hooks.
    """

    def __call__(
        self, module: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def cross_entropy_loss(
    module: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The default loss: plain cross-entropy on the module's logits."""
    logits = module(inputs)
    return F.cross_entropy(logits, targets), logits


def _batches(
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for batch in loader:
        yield batch[0], batch[1]


def _to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def evaluate(
    module: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device | None = None,
    *,
    check_cancel: Callable[[], None] | None = None,
) -> float:
    """Top-1 accuracy in percent of ``module`` over ``loader``: the one evaluator,
    :func:`compression.evaluation.accuracy_torch` (float32, on the module's device)."""
    return accuracy_torch(module, loader, device, check_cancel=check_cancel)


def _make_optimizer(
    params: list[nn.Parameter], name: OptimizerName, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True
        )
    if name == "adam":
        # AdamW: decoupled decay is what "weight_decay" means to most users of Adam today.
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")


def train(
    module: nn.Module,
    data: DatasetBundle,
    ctx: StageContext,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    optimizer: OptimizerName = "sgd",
    weight_decay: float = 5e-4,
    loss_fn: LossFn = cross_entropy_loss,
    after_backward: Hook | None = None,
    after_step: Hook | None = None,
    extra_params: Iterable[nn.Parameter] = (),
    progress: tuple[float, float] = (0.0, 1.0),
    label: str = "train",
    max_batches_per_epoch: int | None = None,
) -> list[dict[str, float]]:
    """Train ``module`` in place with a cosine learning-rate schedule.

    Args:
        module: the model to train; it is moved to ``ctx.device`` and left there in eval mode.
        data: training and validation data.
        ctx: the stage context (device, seed, progress and cancel callbacks).
        epochs: full passes over the training set; 0 trains nothing and returns ``[]``.
        lr: peak learning rate; it decays to zero along a cosine over all batches.
        batch_size: training batch size.
        optimizer: ``"sgd"`` (momentum 0.9, Nesterov) or ``"adam"`` (AdamW).
        weight_decay: L2 / decoupled weight decay.
        loss_fn: computes ``(loss, logits)`` for one batch.
        after_backward: called after ``backward()`` and before the optimizer step (gradients
            are unscaled by then, so a hook may add e.g. an L1 subgradient).
        after_step: called after every optimizer step (e.g. to re-apply pruning masks).
        extra_params: trained together with the module (e.g. a distillation adapter).
        progress: the slice of this stage's ``[0, 1]`` progress range these epochs cover.
        label: a word for progress messages, e.g. ``"sparsity training"``.
        max_batches_per_epoch: cut each epoch short (smoke tests and quick benchmarks).

    Returns:
        One dict per epoch with ``epoch``, ``loss``, ``train_acc`` and ``val_acc``.

    Raises:
        compression.errors.Cancelled: raised by ``ctx.check_cancel()`` between batches.
    """
    if epochs <= 0:
        return []
    device = ctx.device
    on_cuda = device.type == "cuda"
    module.to(device)
    if on_cuda:
        # channels_last lets cuDNN pick tensor-core kernels for convolutions under AMP.
        module.to(memory_format=torch.channels_last)
    extra = list(extra_params)
    for p in extra:
        p.data = p.data.to(device)
    params = [p for p in module.parameters() if p.requires_grad] + extra
    opt = _make_optimizer(params, optimizer, lr, weight_decay)

    # On a GPU, loader workers build (and normalise) the next batches while the GPU computes;
    # the batch order still comes from the seeded sampler in this process.
    workers = min(4, max(1, (os.cpu_count() or 2) // 2)) if on_cuda else 0
    loader = data.train_loader(
        batch_size, seed=ctx.seed, shuffle=True, num_workers=workers, pin_memory=on_cuda
    )
    # The same loader object is iterated every epoch: its seeded generator advances, so epochs
    # see different orders while the whole run stays reproducible from ctx.seed.
    steps_per_epoch = len(loader)
    if max_batches_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, max_batches_per_epoch)
    total_steps = max(1, epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    )
    # bfloat16 needs no loss scaling; fall back to float16 + GradScaler on older GPUs.
    use_bf16 = on_cuda and torch.cuda.is_bf16_supported()
    amp_dtype = torch.bfloat16 if use_bf16 else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=on_cuda and not use_bf16)
    val_loader = data.val_loader(pin_memory=on_cuda)
    start, end = progress
    history: list[dict[str, float]] = []

    for epoch in range(epochs):
        module.train()
        # Running sums stay on the device: reading them every step would stall the GPU.
        loss_sum = torch.zeros((), device=device)
        correct_sum = torch.zeros((), device=device, dtype=torch.int64)
        seen = 0
        for step, (inputs_cpu, targets_cpu) in enumerate(_batches(loader)):
            if step >= steps_per_epoch:
                break
            ctx.check_cancel()
            inputs = _to_device(inputs_cpu, device, on_cuda)
            targets = targets_cpu.to(device, non_blocking=True)
            autocast = (
                torch.autocast("cuda", dtype=amp_dtype) if on_cuda else contextlib.nullcontext()
            )
            with autocast:
                loss, logits = loss_fn(module, inputs, targets)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            if after_backward is not None:
                after_backward(module)
            scaler.step(opt)
            scaler.update()
            sched.step()
            if after_step is not None:
                after_step(module)
            n = int(targets.numel())
            loss_sum += loss.detach().float() * n
            correct_sum += (logits.detach().argmax(dim=1) == targets).sum()
            seen += n
        ctx.check_cancel()
        val_acc = evaluate(module, val_loader, device, check_cancel=ctx.check_cancel)
        row = {
            "epoch": float(epoch + 1),
            "loss": float(loss_sum) / max(seen, 1),
            "train_acc": 100.0 * int(correct_sum) / max(seen, 1),
            "val_acc": val_acc,
        }
        history.append(row)
        frac = start + (end - start) * (epoch + 1) / epochs
        ctx.report(
            frac,
            f"{label}: epoch {epoch + 1}/{epochs}, loss {row['loss']:.4f}, val acc {val_acc:.2f}%",
            dict(row),
        )
    module.eval()
    if on_cuda:
        module.to(memory_format=torch.contiguous_format)
    return history
