"""Tiny ONNX models and evaluation sets made on the spot for the device tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

WEIGHTS = np.array(
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.5]], dtype=np.float32
)


def write_linear_model(path: Path, *, features: int = 4, classes: int = 3) -> Path:
    """A MatMul classifier with a symbolic batch axis: [N, features] -> [N, classes]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = WEIGHTS[:features, :classes]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        initializer=[numpy_helper.from_array(weights, name="w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def write_eval_set(path: Path, *, samples: int = 60, wrong: int = 6) -> Path:
    """An .npz whose labels the linear model gets right except for ``wrong`` of them."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=samples)
    x = np.zeros((samples, 4), dtype=np.float32)
    x[np.arange(samples), y] = 5.0
    labels = y.copy()
    labels[:wrong] = (labels[:wrong] + 1) % 3
    np.savez(path, x=x, y=labels)
    return path


def write_matmul_model(path: Path) -> Path:
    """A 512x512 MatMul: slow enough at large batches to kill the agent mid-benchmark."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 512])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 512])],
        initializer=[numpy_helper.from_array(w, name="w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path
