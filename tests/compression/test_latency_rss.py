"""An isolated child's peak RSS is its own, not the (large) parent's that started it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from compression.latency import measure_latency_isolated


@pytest.mark.skipif(sys.platform != "linux", reason="VmHWM is Linux's")
def test_an_isolated_childs_peak_rss_is_not_its_parents(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "relu.onnx"
    onnx.save(model, str(path))
    ballast = np.ones((600 << 20) // 8)  # 600 MB resident in this (parent) process
    (result,) = measure_latency_isolated([path], input_shapes=[[1, 4]], runs=5, warmup=1, rounds=1)
    assert ballast[-1] == 1.0
    assert result.peak_rss_mb is not None and 5 < result.peak_rss_mb < 400
