"""Export a torch module to ONNX (dynamic batch, ``input`` -> ``logits``) and check the parity."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compression.errors import CompressionError

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class ExportError(CompressionError):
    """The module could not be exported, or the export does not match torch's outputs."""


def export_onnx(
    module: nn.Module,
    input_shape: tuple[int, int, int],
    path: Path | str,
    *,
    opset: int = 17,
    fold_batchnorm: bool = True,
    fuse: bool = False,
    output_names: Sequence[str] = (OUTPUT_NAME,),
    dynamic_axes: dict[str, dict[int, str]] | None = None,
) -> Path:
    """Write ``module`` as an ONNX file with a dynamic batch axis.

    The module is exported from an eval-mode CPU copy, so the caller's module (possibly on a GPU
    and in training mode) is left untouched.

    Args:
        module: the model.
        input_shape: (C, H, W) of one sample.
        path: where to write; parent folders are created.
        opset: ONNX opset version.
        fold_batchnorm: let the exporter fold eval-mode BatchNorm into the preceding conv (the
            default, fastest graph). ``False`` keeps BatchNormalization nodes, so the conv
            weights are written exactly as they are in torch: weight coding needs that, since
            folding scales every output channel and breaks the shared values.
        fuse: fold Conv+BN in torch first and simplify the exported graph with onnxslim
            (:mod:`compression.fusion`); the export is float, so simplifying is always safe.
        output_names: one name per output of the module (a detector has one per head), each
            with a dynamic batch axis.
        dynamic_axes: the exporter's dynamic axes instead of the batch axis of the input and
            every output (a Faster R-CNN takes one image and returns a variable count of boxes).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(module).to("cpu").eval()
    if fuse:
        from compression.fusion import fold_conv_bn

        fold_conv_bn(model)
    example = torch.zeros((1, *input_shape), dtype=torch.float32)
    # Write via a temp name so a crash never leaves a half-written model behind.
    tmp = path.with_name(path.name + ".tmp")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript-based exporter is deprecated but stable and fast for plain CNNs;
            # its deprecation warnings carry no information for our users.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                str(tmp),
                dynamo=False,
                export_params=True,
                opset_version=opset,
                do_constant_folding=True,
                # PRESERVE exports the eval-mode module as is, without the eval-mode peephole
                # pass that fuses Conv+BatchNorm.
                training=(
                    torch.onnx.TrainingMode.EVAL
                    if fold_batchnorm
                    else torch.onnx.TrainingMode.PRESERVE
                ),
                input_names=[INPUT_NAME],
                output_names=list(output_names),
                dynamic_axes=(
                    {INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in output_names}}
                    if dynamic_axes is None
                    else dynamic_axes
                ),
            )
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"ONNX export failed: {type(exc).__name__}: {exc}") from exc
    if fuse:
        from compression.fusion import simplify_onnx

        try:
            simplify_onnx(tmp, tmp)
        except Exception as exc:
            tmp.unlink(missing_ok=True)
            raise ExportError(f"simplifying the exported graph failed: {exc}") from exc
    tmp.replace(path)
    return path


def check_parity(
    module: nn.Module,
    onnx_path: Path | str,
    input_shape: tuple[int, int, int],
    *,
    atol: float = 1e-4,
    n: int = 4,
    seed: int = 0,
) -> float:
    """Compare torch and ONNX Runtime outputs on ``n`` seeded random inputs.

    Returns:
        The largest absolute difference seen.

    Raises:
        ExportError: the difference is above ``atol``.
    """
    import onnxruntime as ort

    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *input_shape), generator=generator, dtype=torch.float32)
    model = copy.deepcopy(module).to("cpu").eval()
    with torch.no_grad():
        expected = model(x).numpy()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    got = np.asarray(session.run(None, {name: x.numpy()})[0])
    diff = float(np.max(np.abs(got - expected))) if expected.size else 0.0
    if not diff <= atol:  # also catches NaN
        raise ExportError(f"ONNX output differs from torch by {diff:.3g} (tolerance {atol:g})")
    return diff
