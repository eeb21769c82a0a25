"""report.json for a detection run, written by hand to the issue-15 contract
(/work/notes: ``task``, ``metric`` mAP@0.5, ``accuracy`` = mAP@0.5 in percent, a ``detection``
block with map50/map50_95/per_class, ``latency`` of the network alone and ``latency_e2e`` with
decoding and NMS, artifacts of kind ``detections_grid`` and ``onnx_e2e``)."""

from __future__ import annotations

from typing import Any

CLASSES = [str(d) for d in range(10)]
GRID_PATH = "detections_grid.png"


def latency(p50: float, *, throughput: float) -> dict[str, Any]:
    return {
        "p50_ms": p50,
        "p90_ms": p50 * 1.1,
        "p99_ms": None,
        "iqr_ms": p50 / 20,
        "rounds": 5,
        "runs": 10,
        "round_p50_ms": [p50] * 5,
        "throughput": throughput,
        "cv": 0.01,
    }


def detection_metrics(
    map50: float,
    map50_95: float,
    *,
    p50: float,
    e2e_p50: float,
    macs: int,
    size: int,
    fmt: str = "torch",
    per_class: dict[str, tuple[float | None, float | None]] | None = None,
) -> dict[str, Any]:
    """One state's metrics: ``map50`` and ``map50_95`` are fractions (0-1), as the contract
    has them; ``accuracy`` carries mAP@0.5 in percent."""
    per = per_class or {}
    return {
        "task": "detection",
        "metric": "mAP@0.5",
        "accuracy": 100.0 * map50,
        "val_accuracy": 100.0 * map50 + 1.0,
        "eval_split": "test",
        "test_images": 48,
        "params": 2_000_000 if macs > 100_000_000 else 500_000,
        "nonzero_params": 2_000_000 if macs > 100_000_000 else 500_000,
        "macs": macs,
        "onnx_bytes": size,
        "onnx_zip_bytes": int(size * 0.9),
        "format": fmt,
        "detection": {
            "map50": map50,
            "map50_95": map50_95,
            "val_map50": map50 + 0.01,
            "per_class": [
                {"class": name, "ap50": ap50, "ap50_95": ap5095}
                for name, (ap50, ap5095) in per.items()
            ],
            "images": 48,
            "boxes": 131,
        },
        "latency": latency(p50, throughput=1000.0 / p50),
        "latency_e2e": latency(e2e_p50, throughput=1000.0 / e2e_p50),
    }


def detection_report(*, grid: bool = True) -> dict[str, Any]:
    """A YOLOv3-tiny run: baseline, channel pruning, int8; mAP@0.5 71.25 % -> 70.50 %."""
    base = detection_metrics(
        0.7125, 0.4150, p50=8.0, e2e_p50=9.5, macs=300_000_000, size=8_000_000,
        per_class={"3": (0.80, 0.50), "7": (0.625, 0.33), "9": (None, None)},
    )  # fmt: skip
    pruned = detection_metrics(
        0.7075, 0.4100, p50=3.0, e2e_p50=4.25, macs=90_000_000, size=2_500_000,
        per_class={"3": (0.79, 0.49), "7": (0.6250, 0.32), "9": (None, None)},
    )  # fmt: skip
    final = detection_metrics(
        0.7050, 0.4050, p50=1.5, e2e_p50=2.5, macs=90_000_000, size=700_000, fmt="onnx",
        per_class={"3": (0.7750, 0.48), "7": (0.6350, 0.31), "9": (None, None)},
    )  # fmt: skip
    artifacts: list[dict[str, Any]] = [
        {"kind": "onnx_fp32", "path": "final.onnx", "bytes": 2_500_000},
        {"kind": "onnx_int8", "path": "final.int8.onnx", "bytes": 700_000},
        {"kind": "onnx_e2e", "path": "final.e2e.onnx", "bytes": 2_600_000},
    ]
    if grid:
        artifacts.append({"kind": "detections_grid", "path": GRID_PATH, "bytes": 1234})
    return {
        "task": "detection",
        "recipe": {"name": "prune-int8", "seed": 0, "eval": {"batch_size": 1, "threads": 2}},
        "model": {"arch": "yolov3_tiny", "task": "detection"},
        "dataset": {
            "name": "mnist_scenes",
            "classes": CLASSES,
            "input_shape": [3, 96, 96],
            "totals": {"train": 384, "val": 48, "test": 48},
            "boxes": {"train": 1050, "val": 128, "test": 131},
            "split_seed": 0,
            "fingerprint": "ef" * 32,
            "reported_split": "test",
        },
        "baseline": base,
        "stages": [
            {"index": 0, "method": "channel_pruning", "name": "prune", "metrics": pruned},
            {"index": 1, "method": "ptq_int8", "name": "int8", "metrics": final},
        ],
        "final": final,
        "targets": {"max_accuracy_drop": 1.0, "accuracy_drop": 0.75, "met": True},
        "artifacts": artifacts,
    }


def png_bytes(
    width: int = 8, height: int = 4, colour: tuple[int, int, int] = (200, 30, 30)
) -> bytes:
    """A real PNG of one colour."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, format="PNG")
    return buf.getvalue()
