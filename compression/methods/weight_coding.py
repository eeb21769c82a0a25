"""Weight coding: write the model as an EdgeSlim compressed container, and prove it decodes.

The last two steps of Deep Compression (Han, Mao & Dally 2016, seed 004): every conv and linear
weight that ``weight_sharing`` left with at most ``2**bits`` shared values is stored as its
codebook, the Huffman-coded cluster indices of its non-zero weights and their Huffman-coded
relative positions (CSR gaps with filler entries); biases, BatchNorm and the graph ride along
DEFLATE-compressed. The encoder is :func:`compression.weight_coding.encode_onnx`; the file format
is in ``docs/container-format.md``.

The stage never trusts its own file: it decodes the container with the numpy-only decoder the
device uses, checks that every tensor came back bit for bit, runs the decoded ONNX on the whole
test split and refuses the stage unless its predictions equal the pre-coding ONNX's exactly.

BatchNorm is exported unfolded: folding it into the convs would scale each output channel and
turn a layer's 256 shared values into thousands, which the encoder would then store raw.
The model handed to the next stage is unchanged (the coding is lossless); the container is the
stage's ``container`` artifact and its size table is the report's ``deep_compression`` section.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from compression.errors import CompressionError, StageScopeError
from compression.registry import param, register_method
from compression.stage import StageContext, StageResult

CONTAINER_NAME = "model.esdc"


class CodingVerificationError(CompressionError):
    """The decoded container does not reproduce the model it was written from."""


@dataclass(frozen=True)
class WeightCodingConfig:
    conv_index_bits: int = param(
        8, help="bits of a conv layer's relative index (gap); longer gaps take filler entries; "
        "0 chooses per layer the width that codes in the fewest bytes",
        ge=0, le=8,
    )  # fmt: skip
    fc_index_bits: int = param(
        5, help="bits of a linear layer's relative index (the paper's 5 for LeNet); 0 chooses "
        "per layer", ge=0, le=8,
    )  # fmt: skip
    max_codebook_bits: int = param(
        8, help="a weight with more than 2**bits distinct non-zero values is stored raw",
        ge=1, le=8,
    )  # fmt: skip
    min_elements: int = param(
        64, help="weights smaller than this stay inside the graph (DEFLATE) like biases",
        ge=1, le=1_000_000,
    )  # fmt: skip
    opset: int = param(17, help="ONNX opset when exporting a torch model", ge=13, le=21)


def _source_onnx(ctx: StageContext, cfg: WeightCodingConfig) -> Path:
    if ctx.model.module is not None:
        from compression.onnx_export import check_parity, export_onnx

        path = export_onnx(
            ctx.model.module,
            ctx.model.input_shape,
            ctx.work_dir / "precoding.onnx",
            opset=cfg.opset,
            fold_batchnorm=False,
        )
        check_parity(ctx.model.module, path, ctx.model.input_shape)
        return path
    if ctx.model.onnx_path is None:
        raise StageScopeError(
            "weight_coding: the model has neither a torch module nor an ONNX file"
        )
    return Path(ctx.model.onnx_path)


def _predictions(path: Path, ctx: StageContext) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(logits, predictions, labels)`` of the ONNX at ``path`` over the whole test split."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the same kernels and order for both models
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    logits, labels = [], []
    for x, y in ctx.data.test_loader():
        ctx.check_cancel()
        logits.append(np.asarray(session.run(None, {name: x.numpy()})[0]))
        labels.append(y.numpy())
    out = np.concatenate(logits) if logits else np.zeros((0, ctx.model.num_classes))
    return out, out.argmax(axis=1), np.concatenate(labels) if labels else np.zeros(0)


def _initializers(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path), load_external_data=True)
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def deep_compression_table(stats: dict[str, Any]) -> dict[str, Any]:
    """The report's ``deep_compression`` section from the encoder's stats (``to_dict()``).

    Per layer the paper's columns (weights kept, bits per weight and per index before and after
    Huffman coding, sizes after each step); totals two ways: the coded conv/linear weights alone
    (the paper's accounting) and the whole model, where every other tensor counts at fp32 until
    the container, whose every byte counts.
    """
    layers = []
    for s in stats["layers"]:
        nz = max(int(s["nonzero"]), 1)
        values, gaps = s.get("values"), s.get("gaps")
        # A layer's symbols sit in streams shared with other layers (format 3): its Huffman bits
        # are its codes there (``code_bits``); a report of format 2 had the stream's bytes.
        v_bits, g_bits = _code_bits(values), _code_bits(gaps)
        layers.append(
            {
                "name": s["name"],
                "kind": s["kind"],
                "shape": list(s["shape"]),
                "stored_as": s["stored_as"],
                "weights": int(s["weights"]),
                "nonzero": int(s["nonzero"]),
                "kept": s["nonzero"] / max(int(s["weights"]), 1),
                "codebook_size": int(s["codebook_size"]),
                "weight_bits": int(s["codebook_bits"]),
                "index_bits": int(s["index_bits"]),
                "entries": int(s["entries"]),
                "filler_entries": int(s["filler_entries"]),
                "weight_bits_huffman": v_bits / nz if v_bits is not None else None,
                "index_bits_huffman": g_bits / nz if g_bits is not None else None,
                "bytes_dense_fp32": int(s["bytes_dense_fp32"]),
                "bytes_pruned": int(s["bytes_pruned"]),
                "bytes_shared": int(s["bytes_shared"]),
                "bytes_huffman": int(s["bytes_huffman"]),
                "ratio_pruned": s["bytes_dense_fp32"] / max(s["bytes_pruned"], 1),
                "ratio_shared": s["bytes_dense_fp32"] / max(s["bytes_shared"], 1),
                "ratio_huffman": s["bytes_dense_fp32"] / max(s["bytes_huffman"], 1),
                "values_entropy_bytes": values["entropy_bytes"] if values else None,
                "gaps_entropy_bytes": gaps["entropy_bytes"] if gaps else None,
                "values_code_bits": v_bits,
                "gaps_code_bits": g_bits,
                "values_stream": values.get("stream") if values else None,
                "gaps_stream": gaps.get("stream") if gaps else None,
                "values_symbols": values["symbols"] if values else None,
                "gaps_symbols": gaps["symbols"] if gaps else None,
            }
        )
    streams = [
        {
            "role": st.get("role", ""),
            "layers": list(st.get("layers", [])),
            "symbols": int(st["symbols"]),
            "distinct": int(st["distinct"]),
            "entropy_bits_per_symbol": float(st["entropy_bits_per_symbol"]),
            "entropy_bytes": float(st["entropy_bytes"]),
            "coded_bytes": int(st["coded_bytes"]),
            "table_bytes": int(st["table_bytes"]),
            "mode": int(st.get("mode", 1)),
            "table_bits": int(st.get("table_bits", 0)),
            "payload_bits": int(st.get("payload_bits", 0)),
            "overhead": st["coded_bytes"] / st["entropy_bytes"] - 1.0
            if st["entropy_bytes"] > 0
            else None,
            # the codes alone (rule 4 of docs/benchmarks.md); None where not recorded
            "payload_overhead": st["payload_bits"] / (8 * st["entropy_bytes"]) - 1.0
            if st["entropy_bytes"] > 0 and "payload_bits" in st
            else None,
        }
        for st in stats.get("streams", [])
    ]
    dense_layers = int(stats["bytes_dense_fp32"])
    rest = int(stats["params_bytes_fp32"]) - dense_layers  # biases, BatchNorm, small tensors
    whole = {
        "dense_fp32": int(stats["params_bytes_fp32"]),
        "pruned": int(stats["bytes_pruned"]) + rest,
        "shared": int(stats["bytes_shared"]) + rest,
        "container": int(stats["total_bytes"]),
    }
    weights_only = {
        "dense_fp32": dense_layers,
        "pruned": int(stats["bytes_pruned"]),
        "shared": int(stats["bytes_shared"]),
        "huffman": int(stats["bytes_huffman"]),
    }
    nz_total = sum(layer["nonzero"] for layer in layers)
    w_total = sum(layer["weights"] for layer in layers)
    return {
        "layers": layers,
        "streams": streams,
        "totals": {
            "weights": w_total,
            "nonzero": nz_total,
            "kept": nz_total / max(w_total, 1),
            "weights_only_bytes": weights_only,
            "whole_model_bytes": whole,
            "other_fp32_bytes": rest,
            "header_bytes": int(stats["header_bytes"]),
            "graph_bytes": int(stats["graph_bytes"]),
            "stream_bytes": int(stats.get("stream_bytes", 0)),
            "container_bytes": int(stats["total_bytes"]),
        },
        "ratios": {
            "weights_only": {
                k: dense_layers / max(v, 1) for k, v in weights_only.items() if k != "dense_fp32"
            },
            "whole_model": {
                k: whole["dense_fp32"] / max(v, 1) for k, v in whole.items() if k != "dense_fp32"
            },
        },
        "container": {
            "version": int(stats["version"]),
            "sha256": stats["sha256"],
            "bytes": int(stats["total_bytes"]),
            "decoded_bytes": int(stats["decoded_bytes"]),
        },
        "notes": list(stats.get("notes", [])),
    }


def _code_bits(symbols: dict[str, Any] | None) -> float | None:
    """Bits a layer's symbols of one role take: their codes in a shared stream (format 3), or
    the whole stream of their own (format 2, table included)."""
    if not symbols:
        return None
    if "code_bits" in symbols:
        return float(symbols["code_bits"])
    return 8.0 * float(symbols["coded_bytes"])


@register_method(
    "weight_coding",
    config=WeightCodingConfig,
    summary="Write the model as a compressed container (codebooks, Huffman-coded indices and "
    "relative positions), then decode it and check it predicts exactly like the model.",
    inputs=("torch", "onnx"),
    tasks=("classification",),
)
def run(ctx: StageContext, cfg: WeightCodingConfig) -> StageResult:
    """Encode ``ctx.model`` into ``work_dir/model.esdc`` and verify the decoded model."""
    from compression.container import decode_container
    from compression.weight_coding import encode_onnx

    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    source = _source_onnx(ctx, cfg)
    ctx.report(0.1, "exported the model with BatchNorm unfolded", {})
    container = ctx.work_dir / CONTAINER_NAME
    stats = encode_onnx(
        source,
        container,
        conv_index_bits=cfg.conv_index_bits,
        fc_index_bits=cfg.fc_index_bits,
        max_codebook_bits=cfg.max_codebook_bits,
        min_elements=cfg.min_elements,
    )
    ctx.report(0.4, f"wrote the container: {stats.total_bytes} bytes", {})
    ctx.check_cancel()
    decoded_dir = ctx.work_dir / "decoded"
    shutil.rmtree(decoded_dir, ignore_errors=True)
    decoded = decode_container(container, decoded_dir)
    ctx.report(0.6, f"decoded it in {decoded.decode_seconds * 1000:.1f} ms", {})

    # 1. Every tensor back bit for bit.
    want, got = _initializers(source), _initializers(decoded.onnx_path)
    if set(want) != set(got):
        missing = sorted(set(want) ^ set(got))[:3]
        raise CodingVerificationError(f"decoded model has different tensors: {missing}")
    for name, arr in want.items():
        if (
            arr.dtype != got[name].dtype
            or arr.shape != got[name].shape
            or not np.array_equal(arr.view(np.uint8), got[name].view(np.uint8))
        ):
            raise CodingVerificationError(f"tensor {name!r} did not decode bit for bit")
    # 2. The same predictions on the whole test split.
    logits_a, pred_a, labels = _predictions(source, ctx)
    logits_b, pred_b, _ = _predictions(decoded.onnx_path, ctx)
    if pred_a.shape != pred_b.shape or not np.array_equal(pred_a, pred_b):
        differ = int((pred_a != pred_b).sum()) if pred_a.shape == pred_b.shape else -1
        raise CodingVerificationError(
            f"the decoded model predicts differently on {differ} of {len(pred_a)} test images"
        )
    max_diff = float(np.max(np.abs(logits_a - logits_b))) if logits_a.size else 0.0
    accuracy = 100.0 * float((pred_b == labels).mean()) if labels.size else 0.0
    ctx.report(1.0, "the decoded container predicts exactly like the model", {})

    table = deep_compression_table(stats.to_dict())
    table["verification"] = {
        "split": "test",
        "samples": len(pred_a),
        "predictions_equal": True,
        "tensors_bit_identical": True,
        "max_abs_logit_diff": max_diff,
        "decoded_accuracy": accuracy,
        "decode_seconds": decoded.decode_seconds,
        "peak_alloc_bytes": decoded.peak_alloc_bytes,
    }
    ratios = table["ratios"]
    metrics = {
        "container_bytes": float(stats.total_bytes),
        "dense_fp32_bytes": float(stats.params_bytes_fp32),
        "ratio": float(stats.ratio),
        "ratio_pruned": float(ratios["whole_model"]["pruned"]),
        "ratio_shared": float(ratios["whole_model"]["shared"]),
        "weights_ratio_huffman": float(ratios["weights_only"]["huffman"]),
        "layers_shared": float(sum(1 for s in stats.layers if s.stored_as == "shared")),
        "layers_raw": float(sum(1 for s in stats.layers if s.stored_as == "raw")),
        "decode_seconds": float(decoded.decode_seconds),
        "decoded_test_acc": accuracy,
        "max_abs_logit_diff": max_diff,
    }
    return StageResult(
        model=ctx.model,
        metrics=metrics,
        artifacts={"container": container, "onnx_precoding": source},
        extras={"deep_compression": table},
    )
