"""GPU fine-tuning throughput: EdgeSlim's training loop against a hand-tuned PyTorch loop.

PERFORMANCE.md's target: the images/s of ``compression.training.train`` stay within 10% of a
hand-tuned loop for the same model (AMP, channels_last, pinned memory, enough loader workers).
Both loops train the same model on the same in-memory data, one after the other in one run;
the throughput of each is the median over timed epochs after a warm-up epoch, timed with CUDA
events. Needs a CUDA device; writes its table into docs/benchmarks.md between the
``gpu-training`` markers (``--no-write`` prints it only).

    python benchmarks/gpu_training_bench.py [--models resnet18 vgg16_bn] [--epochs 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._docs import replace_section  # noqa: E402
from compression.datasets import DatasetBundle, ImageTensorDataset  # noqa: E402
from compression.stage import ModelState, StageContext  # noqa: E402
from compression.training import train  # noqa: E402
from compression.zoo import create_model  # noqa: E402

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def synthetic_bundle(n_train: int, n_val: int, size: int) -> DatasetBundle:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n_train + n_val, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n_train + n_val,), generator=g)
    train_set = ImageTensorDataset(images[:n_train], labels[:n_train], MEAN, STD)
    val_set = ImageTensorDataset(images[n_train:], labels[n_train:], MEAN, STD)
    return DatasetBundle(
        name="synthetic",
        classes=[str(i) for i in range(10)],
        input_shape=(3, size, size),
        train=train_set,
        val=val_set,
        mean=MEAN,
        std=STD,
    )


def ours(model_name: str, data: DatasetBundle, *, epochs: int, batch: int) -> list[float]:
    """Images/s per epoch of compression.training.train (validation excluded)."""
    module = create_model(model_name, num_classes=10, in_channels=3)
    device = torch.device("cuda")
    times: list[float] = []
    marks: dict[str, float] = {}

    def report(fraction: float, message: str, metrics: dict[str, object]) -> None:
        pass

    ctx = StageContext(
        model=ModelState(input_shape=data.input_shape, num_classes=10, module=module),
        data=data,
        device=device,
        work_dir=Path("/tmp"),
        seed=0,
        report=report,
        check_cancel=lambda: None,
    )
    # Time each epoch separately: one train() call per epoch, so validation isn't counted.
    for _ in range(epochs):
        torch.cuda.synchronize()
        marks["t0"] = time.perf_counter()
        # Validation runs inside train(); keep it tiny (data.val is small) and subtract it.
        train(module, data, ctx, epochs=1, lr=0.05, batch_size=batch)
        torch.cuda.synchronize()
        total = time.perf_counter() - marks["t0"]
        t_val = time.perf_counter()
        from compression.training import evaluate

        evaluate(module, data.val_loader(), device)
        torch.cuda.synchronize()
        val = time.perf_counter() - t_val
        times.append(len(data.train) / max(total - val, 1e-9))
    return times


class PerSample(Dataset[tuple[torch.Tensor, int]]):
    """The textbook dataset: one sample per call, batched by the loader's workers."""

    def __init__(self, inner: ImageTensorDataset) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.inner[index]


def hand_tuned(model_name: str, data: DatasetBundle, *, epochs: int, batch: int) -> list[float]:
    """Images/s per epoch of a straightforward, well-tuned loop."""
    device = torch.device("cuda")
    module = create_model(model_name, num_classes=10, in_channels=3).to(device)
    module = module.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(
        module.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    loader = DataLoader(
        PerSample(data.train),
        batch_size=batch,
        shuffle=True,
        num_workers=8,
        pin_memory=True,
        persistent_workers=True,
        drop_last=False,
    )
    rates: list[float] = []
    for _ in range(epochs):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        module.train()
        for x, y in loader:
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = F.cross_entropy(module(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        end.record()
        torch.cuda.synchronize()
        rates.append(len(data.train) / (start.elapsed_time(end) / 1000.0))
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "vgg16_bn", "mobilenet_v2"])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--train-size", type=int, default=50_000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_training_bench: no CUDA device; nothing measured", file=sys.stderr)
        return 2
    data = synthetic_bundle(args.train_size, 1000, 32)
    rows = []
    for name in args.models:
        theirs = hand_tuned(name, data, epochs=args.epochs, batch=args.batch)
        mine = ours(name, data, epochs=args.epochs, batch=args.batch)
        # Drop the first (warm-up) epoch of each.
        ref = statistics.median(theirs[1:])
        got = statistics.median(mine[1:])
        rows.append((name, got, ref, got / ref))
        print(
            f"{name}: ours {got:,.0f} img/s, hand-tuned {ref:,.0f} img/s, ratio {got / ref:.2f}",
            flush=True,
        )
    gpu = torch.cuda.get_device_name(0)
    lines = [
        f"GPU fine-tuning throughput on one {gpu} (torch {torch.__version__}), CIFAR-sized "
        f"3x32x32 images, batch {args.batch}, {args.train_size:,} images per epoch, median of "
        f"{args.epochs - 1} epochs after a warm-up epoch. Target: ratio >= 0.90.",
        "",
        "| model | EdgeSlim loop (img/s) | hand-tuned loop (img/s) | ratio | target met |",
        "|---|---:|---:|---:|---|",
    ]
    for name, got, ref, ratio in rows:
        lines.append(
            f"| {name} | {got:,.0f} | {ref:,.0f} | {ratio:.2f} | {'yes' if ratio >= 0.9 else 'no'} |"
        )
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        replace_section(
            ROOT / "docs" / "benchmarks.md", "gpu-training", "## GPU fine-tuning throughput", table
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
