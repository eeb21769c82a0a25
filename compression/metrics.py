"""Measure a model: accuracy, parameter and MAC counts, ONNX file sizes and measured latency."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compression.evaluation import accuracy
from compression.latency import LatencyResult, measure_latency_isolated
from compression.macs import count_macs as count_macs  # the one counter, re-exported
from compression.stage import ModelState


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_nonzero_params(module: nn.Module) -> int:
    return sum(int(torch.count_nonzero(p.detach())) for p in module.parameters())


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


@dataclass
class ModelMetrics:
    """What the report shows for one model state.

    ``accuracy`` is top-1 in percent on the data set's held-out **test** split (what every
    report, verdict and comparison uses); ``val_accuracy`` is the same on the validation split,
    which served the training-time choices. ``latency`` is filled by an interleaved comparison
    in a torch-free child process; ``peak_mem_mb`` is that child's peak RSS for this model alone.
    """

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
    val_accuracy: float | None = None
    eval_split: str = "test"
    test_images: int | None = None
    onnx_path: str | None = None  # the measured ONNX file (relative to the run folder in reports)

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "val_accuracy": self.val_accuracy,
            "eval_split": self.eval_split,
            "test_images": self.test_images,
            "params": self.params,
            "nonzero_params": self.nonzero_params,
            "macs": self.macs,
            "onnx_bytes": self.onnx_bytes,
            "onnx_zip_bytes": self.onnx_zip_bytes,
            "latency": self.latency.to_dict() if self.latency else None,
            "peak_mem_mb": self.peak_mem_mb,
            "parity_max_abs_diff": self.parity_max_abs_diff,
            "format": self.format,
            "onnx_path": self.onnx_path,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMetrics:
        lat = data.get("latency")
        val = data.get("val_accuracy")
        test_images = data.get("test_images")
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
            val_accuracy=None if val is None else float(val),
            eval_split=str(data.get("eval_split", "val")),
            test_images=None if test_images is None else int(test_images),
            onnx_path=data.get("onnx_path"),
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
    rounds: int = 5,
    device: torch.device | str = "cpu",
    macs_hint: int | None = None,
    onnx_name: str = "model.onnx",
    parity_atol: float = 1e-3,
    check_cancel: Callable[[], None] | None = None,
) -> ModelMetrics:
    """Measure one model state on ``data`` (a DatasetBundle): test and val accuracy, params,
    MACs, ONNX sizes and, unless ``latency_runs=0``, latency.

    A torch model is exported to ``work_dir/onnx_name`` first (and its parity with torch
    checked); an ONNX state is measured as it is. ``macs_hint`` fills in MACs for ONNX states,
    whose MACs torch cannot count (quantization keeps the MACs of its fp32 input). Latency is
    measured alone here; a comparison of several states belongs in one interleaved call of
    :func:`compression.latency.measure_latency_isolated` (the pipeline does that).
    ``check_cancel`` is called between evaluation batches and steps, and may raise.
    """
    from compression.onnx_export import check_parity, export_onnx

    def cancel_point() -> None:
        if check_cancel is not None:
            check_cancel()

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    test_acc = accuracy(model, data.test_loader(), device, check_cancel=check_cancel)
    val_acc = accuracy(model, data.val_loader(), device, check_cancel=check_cancel)
    parity: float | None = None
    if model.module is not None:
        module = model.module
        params = count_params(module)
        nonzero = count_nonzero_params(module)
        macs: int | None = count_macs(module, model.input_shape)
        cancel_point()
        onnx_path = export_onnx(module, model.input_shape, work_dir / onnx_name)
        cancel_point()
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
        cancel_point()
        latency = measure_latency_isolated(
            [onnx_path],
            input_shapes=(batch_size, *model.input_shape),
            threads=threads,
            warmup=warmup,
            runs=latency_runs,
            rounds=rounds,
            should_cancel=_as_poll(check_cancel),
        )[0]
    return ModelMetrics(
        accuracy=test_acc,
        params=params,
        nonzero_params=nonzero,
        macs=macs,
        onnx_bytes=raw,
        onnx_zip_bytes=zipped,
        latency=latency,
        peak_mem_mb=latency.peak_rss_mb if latency else None,
        parity_max_abs_diff=parity,
        format=fmt,
        val_accuracy=val_acc,
        eval_split="test",
        test_images=len(data.test),
        onnx_path=str(onnx_path),
    )


def _as_poll(check_cancel: Callable[[], None] | None) -> Callable[[], bool] | None:
    """Turn a raising cancel check into the ``should_cancel() -> bool`` the harness polls."""
    if check_cancel is None:
        return None
    check = check_cancel

    def poll() -> bool:
        try:
            check()
        except Exception:
            return True
        return False

    return poll
