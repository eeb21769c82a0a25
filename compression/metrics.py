"""Measure a model: accuracy, parameter and MAC counts, ONNX file sizes and measured latency."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compression.latency import LatencyResult, measure_latency, peak_rss_mb
from compression.stage import ModelState

Batch = tuple[torch.Tensor, torch.Tensor] | list[torch.Tensor]


def _as_device(device: torch.device | str) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


def evaluate_accuracy(
    model: ModelState, loader: Iterable[Any], device: torch.device | str = "cpu"
) -> float:
    """Top-1 accuracy in percent (0-100) over ``loader`` of ``(images, labels)`` batches.

    A torch model runs on ``device`` in eval mode (its training flag is restored after);
    an ONNX model runs on ONNX Runtime's CPU provider.
    """
    if model.module is not None:
        return _accuracy_torch(model.module, loader, _as_device(device))
    if model.onnx_path is None:
        raise ValueError("the model state holds neither a module nor an ONNX file")
    return _accuracy_onnx(model.onnx_path, loader)


def _accuracy_torch(module: nn.Module, loader: Iterable[Any], device: torch.device) -> float:
    # Evaluate where the weights already are: a stage may leave its module on the GPU while
    # a freshly loaded one sits on the CPU, and moving the caller's module here would surprise
    # it.
    param = next(module.parameters(), None)
    if param is not None:
        device = param.device
    was_training = module.training
    module.eval()
    correct = total = 0
    try:
        with torch.inference_mode():
            for images, labels in loader:
                logits = module(images.to(device, non_blocking=True))
                correct += int((logits.argmax(1).cpu() == labels).sum())
                total += int(labels.numel())
    finally:
        module.train(was_training)
    return 100.0 * correct / total if total else 0.0


def _accuracy_onnx(path: Path, loader: Iterable[Any]) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
    correct = total = 0
    for images, labels in loader:
        x = images.numpy().astype(np.float32)
        if fixed_batch is not None and fixed_batch != x.shape[0]:
            # A model exported with a fixed batch: feed it one sample at a time.
            outs = [session.run(None, {inp.name: x[i : i + 1]})[0] for i in range(x.shape[0])]
            logits = np.concatenate(outs, axis=0)
        else:
            logits = session.run(None, {inp.name: x})[0]
        correct += int((np.asarray(logits).argmax(1) == labels.numpy()).sum())
        total += int(labels.numel())
    return 100.0 * correct / total if total else 0.0


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_nonzero_params(module: nn.Module) -> int:
    return sum(int(torch.count_nonzero(p.detach())) for p in module.parameters())


def count_macs(module: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Multiply-accumulates of one sample's forward pass (FLOPs / 2, via torch's counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = module.training
    module.eval()
    try:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            module(torch.zeros((1, *input_shape), device=device))
    finally:
        module.train(was_training)
    return int(counter.get_total_flops()) // 2


def onnx_param_counts(onnx_path: Path | str) -> tuple[int, int]:
    """``(params, nonzero_params)`` over an ONNX file's initializers."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path), load_external_data=False)
    total = nonzero = 0
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        total += int(arr.size)
        nonzero += int(np.count_nonzero(arr))
    return total, nonzero


def file_sizes(onnx_path: Path | str) -> tuple[int, int]:
    """``(raw_bytes, zipped_bytes)``: the file, and the file deflated in memory.

    The zipped size shows what unstructured sparsity and weight sharing save on the wire.
    """
    data = Path(onnx_path).read_bytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("model.onnx", data)
    return len(data), len(buf.getvalue())


def peak_memory_mb() -> float | None:
    """Peak resident memory of this process so far (MiB)."""
    return peak_rss_mb()


@dataclass
class ModelMetrics:
    """What the report shows for one model state."""

    accuracy: float
    params: int
    nonzero_params: int
    macs: int | None
    onnx_bytes: int
    onnx_zip_bytes: int
    latency: LatencyResult | None
    peak_mem_mb: float | None
    parity_max_abs_diff: float | None
    format: str = "torch"

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "params": self.params,
            "nonzero_params": self.nonzero_params,
            "macs": self.macs,
            "onnx_bytes": self.onnx_bytes,
            "onnx_zip_bytes": self.onnx_zip_bytes,
            "latency": self.latency.to_dict() if self.latency else None,
            "peak_mem_mb": self.peak_mem_mb,
            "parity_max_abs_diff": self.parity_max_abs_diff,
            "format": self.format,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMetrics:
        lat = data.get("latency")
        return cls(
            accuracy=float(data["accuracy"]),
            params=int(data["params"]),
            nonzero_params=int(data["nonzero_params"]),
            macs=None if data.get("macs") is None else int(data["macs"]),
            onnx_bytes=int(data["onnx_bytes"]),
            onnx_zip_bytes=int(data["onnx_zip_bytes"]),
            latency=LatencyResult.from_dict(lat) if lat else None,
            peak_mem_mb=data.get("peak_mem_mb"),
            parity_max_abs_diff=data.get("parity_max_abs_diff"),
            format=str(data.get("format", "torch")),
        )


def measure_model(
    model: ModelState,
    data: Any,
    work_dir: Path | str,
    *,
    latency_runs: int = 50,
    warmup: int = 10,
    threads: int = 2,
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    macs_hint: int | None = None,
    onnx_name: str = "model.onnx",
    parity_atol: float = 1e-3,
) -> ModelMetrics:
    """Measure one model state on ``data`` (a DatasetBundle).

    A torch model is exported to ``work_dir/onnx_name`` first (and its parity with torch
    checked); an ONNX state is measured as it is. Latency is measured with ONNX Runtime on the
    CPU. ``latency_runs=0`` skips latency. ``macs_hint`` fills in MACs for ONNX states, whose
    MACs torch cannot count (quantization keeps the MACs of its fp32 input).
    """
    from compression.onnx_export import check_parity, export_onnx

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    accuracy = evaluate_accuracy(model, data.val_loader(), device)
    parity: float | None = None
    if model.module is not None:
        module = model.module
        params = count_params(module)
        nonzero = count_nonzero_params(module)
        macs: int | None = count_macs(module, model.input_shape)
        onnx_path = export_onnx(module, model.input_shape, work_dir / onnx_name)
        parity = check_parity(module, onnx_path, model.input_shape, atol=parity_atol)
        fmt = "torch"
    else:
        assert model.onnx_path is not None
        onnx_path = model.onnx_path
        params, nonzero = onnx_param_counts(onnx_path)
        macs = macs_hint
        fmt = "onnx"
    raw, zipped = file_sizes(onnx_path)
    latency = None
    if latency_runs > 0:
        latency = measure_latency(
            onnx_path,
            input_shape=(batch_size, *model.input_shape),
            threads=threads,
            warmup=warmup,
            runs=latency_runs,
        )
    return ModelMetrics(
        accuracy=accuracy,
        params=params,
        nonzero_params=nonzero,
        macs=macs,
        onnx_bytes=raw,
        onnx_zip_bytes=zipped,
        latency=latency,
        peak_mem_mb=peak_memory_mb(),
        parity_max_abs_diff=parity,
        format=fmt,
    )
