"""Post-training int8 quantization with ONNX Runtime's quantization tool.

Static mode calibrates activation ranges on a few training images and writes a QDQ model that
ORT's CPU provider fuses into integer kernels (QLinearConv, MatMulInteger); dynamic mode only
quantizes the weights and computes activation scales at run time. Before quantizing,
``quant_pre_process`` runs ORT's graph optimizer, which folds Conv+BatchNorm (the operator
fusion of seed 003) and infers shapes, so each conv gets one scale instead of a conv scale and
a BN scale.

A detection model is calibrated on images of its detection data set (training split,
letterboxed to the model's input as evaluation and the agent feed it), its fp32 ONNX is the
raw head outputs of :func:`compression.detection_export.export_detector`, and the int8 file
keeps the detector metadata, so the shared post-processing decodes it like the fp32 one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from compression.detection_data import DetectionBundle
from compression.detection_transforms import letterbox
from compression.errors import StageScopeError
from compression.registry import param, register_method
from compression.stage import ModelState, StageContext, StageResult

_CALIBRATION = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


@dataclass(frozen=True)
class PtqInt8Config:
    mode: Literal["static", "dynamic"] = param(
        "static",
        help="static: calibrated int8 activations (fast convs); dynamic: int8 weights only",
    )
    per_channel: bool = param(True, help="one weight scale per output channel (more accurate)")
    calibrate_method: Literal["minmax", "entropy", "percentile"] = param(
        "minmax", help="static only: how activation ranges are chosen from calibration data"
    )
    calibration_samples: int = param(
        128, help="static only: training images used for calibration", ge=1, le=10000
    )
    quant_format: Literal["qdq", "qoperator"] = param(
        "qdq", help="QuantizeLinear/DequantizeLinear pairs (portable) or fused QLinear ops"
    )
    activation_type: Literal["uint8", "int8"] = param(
        "uint8", help="static only: activation integer type (uint8 suits x86 CPUs)"
    )
    # On by default: most x86 CPUs in the field lack VNNI, where 8-bit weights saturate ORT's
    # int16 intermediate (measured: 1.39 pt lost on digits VGG-11 without it, 0 pt with it).
    reduce_range: bool = param(
        True, help="7-bit weights: avoids int16 overflow on x86 CPUs without VNNI"
    )
    preprocess: bool = param(
        True, help="run ORT's pre-processing first (Conv+BN folding, shape inference)"
    )
    opset: int = param(17, help="ONNX opset when exporting a torch model", ge=13, le=21)


class _ArrayReader(CalibrationDataReader):  # type: ignore[misc]
    """Feeds the calibration arrays one at a time under the model's input name.

    ``check_cancel`` runs before every sample: ONNX Runtime's calibrator pulls samples in
    Python, so a cancel raised here stops the calibration pass within one inference.
    """

    def __init__(
        self, input_name: str, arrays: list[np.ndarray], check_cancel: Callable[[], None]
    ) -> None:
        self._items = iter([{input_name: a} for a in arrays])
        self._check_cancel = check_cancel

    def get_next(self) -> dict[str, np.ndarray] | None:
        self._check_cancel()
        return next(self._items, None)


def _input_name(path: Path) -> str:
    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise StageScopeError(f"ptq_int8 needs a model with one input, this one has {len(inputs)}")
    return inputs[0]


def detection_calibration_arrays(
    bundle: DetectionBundle, n: int, *, size: int, seed: int = 0
) -> list[np.ndarray]:
    """``n`` (1, 3, size, size) float32 arrays in [0, 1]: training images of ``bundle`` drawn
    with ``seed`` and letterboxed to ``size`` (the test split is never seen)."""
    if not bundle.train:
        raise StageScopeError(
            f"ptq_int8: the detection data set {bundle.name!r} has no training images"
        )
    rng = np.random.default_rng(seed)
    count = len(bundle.train)
    out = []
    for i in rng.choice(count, size=min(n, count), replace=False):
        image, _ = letterbox(bundle.train[int(i)].image, size)
        out.append(image.transpose(2, 0, 1)[None].astype(np.float32) / 255.0)
    return out


def _check_calibration_data(ctx: StageContext) -> None:
    data: object = ctx.data
    if ctx.model.task == "detection":
        if not isinstance(data, DetectionBundle):
            raise StageScopeError(
                "ptq_int8: a detection model is calibrated on a detection data set, "
                f"got {type(data).__name__}"
            )
        c, h, w = ctx.model.input_shape
        if c != 3 or h != w:
            raise StageScopeError(
                f"ptq_int8: a detector's input must be 3 x S x S, got {c} x {h} x {w}"
            )
    elif isinstance(data, DetectionBundle):
        raise StageScopeError(
            f"ptq_int8: the {ctx.model.task} model cannot be calibrated on the detection data "
            f"set {data.name!r}"
        )


def _calibration_arrays(ctx: StageContext, n: int) -> list[np.ndarray]:
    _check_calibration_data(ctx)
    data: object = ctx.data
    if isinstance(data, DetectionBundle):
        return detection_calibration_arrays(data, n, size=ctx.model.input_shape[1], seed=ctx.seed)
    return ctx.data.calibration_arrays(n, seed=ctx.seed)


def _fp32_onnx(ctx: StageContext, opset: int) -> Path:
    if ctx.model.onnx_path is not None and ctx.model.module is None:
        return Path(ctx.model.onnx_path)
    if ctx.model.module is None:
        raise StageScopeError("ptq_int8: the model has neither a torch module nor an ONNX file")
    if ctx.model.task == "detection":
        from compression.detection_export import export_detector

        return export_detector(ctx.model.module, ctx.work_dir / "fp32.onnx", opset=opset)
    from compression.onnx_export import export_onnx

    return export_onnx(
        ctx.model.module, ctx.model.input_shape, ctx.work_dir / "fp32.onnx", opset=opset
    )


@register_method(
    "ptq_int8",
    config=PtqInt8Config,
    summary="Quantize weights (and, statically calibrated, activations) to int8 with "
    "ONNX Runtime; the result is an ONNX model.",
    inputs=("torch", "onnx"),
    tasks=("classification", "detection"),
    output="onnx",
)
def run(ctx: StageContext, cfg: PtqInt8Config) -> StageResult:
    """Quantize ``ctx.model`` into ``ctx.work_dir/model_int8.onnx``."""
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    if cfg.mode == "static":
        _check_calibration_data(ctx)  # before the export: a wrong data set fails at once
    fp32 = _fp32_onnx(ctx, cfg.opset)
    ctx.report(0.1, "exported the fp32 model", {})
    source = fp32
    if cfg.preprocess:
        ctx.check_cancel()
        source = ctx.work_dir / "fp32_preprocessed.onnx"
        # ORT's symbolic shape inference gives up on a YOLO's padded max-pool (its coarse level
        # stays symbolic); ONNX's own shape inference, which runs anyway, is enough there.
        detector = ctx.model.task == "detection"
        quant_pre_process(str(fp32), str(source), skip_symbolic_shape=detector)
        ctx.report(0.2, "pre-processed (Conv+BN folded, shapes inferred)", {})
    out = ctx.work_dir / "model_int8.onnx"
    ctx.check_cancel()
    weight_type = QuantType.QInt8
    fmt = QuantFormat.QDQ if cfg.quant_format == "qdq" else QuantFormat.QOperator
    if cfg.mode == "static":
        arrays = _calibration_arrays(ctx, cfg.calibration_samples)
        reader = _ArrayReader(_input_name(source), arrays, ctx.check_cancel)
        quantize_static(
            str(source),
            str(out),
            calibration_data_reader=reader,
            quant_format=fmt,
            per_channel=cfg.per_channel,
            reduce_range=cfg.reduce_range,
            activation_type=QuantType.QUInt8 if cfg.activation_type == "uint8" else QuantType.QInt8,
            weight_type=weight_type,
            calibrate_method=_CALIBRATION[cfg.calibrate_method],
        )
    else:
        quantize_dynamic(
            str(source),
            str(out),
            per_channel=cfg.per_channel,
            reduce_range=cfg.reduce_range,
            weight_type=weight_type,
        )
    if ctx.model.task == "detection":
        from compression.detection_export import read_detector_meta, write_detector_meta

        meta = read_detector_meta(fp32)
        if meta is not None:  # the quantizer drops the file's metadata
            write_detector_meta(out, meta)
    ctx.report(1.0, "quantized to int8", {})
    size_before = fp32.stat().st_size
    size_after = out.stat().st_size
    model = ModelState(
        input_shape=ctx.model.input_shape,
        num_classes=ctx.model.num_classes,
        task=ctx.model.task,
        module=None,
        onnx_path=out,
        arch=ctx.model.arch,
    )
    return StageResult(
        model=model,
        metrics={
            "size_bytes_before": float(size_before),
            "size_bytes_after": float(size_after),
            "size_ratio": size_before / max(size_after, 1),
        },
        artifacts={"onnx_int8": out, "onnx_fp32": fp32},
    )
