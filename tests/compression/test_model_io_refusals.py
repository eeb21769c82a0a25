"""Model-file refusals read as sentences; ONNX Runtime failures are classified by cause."""

from __future__ import annotations

import pytest
from hostile_corpus import (
    onnx_empty_graph,
    onnx_external_data_in_function,
    onnx_external_data_in_subgraph,
)

from compression.errors import InvalidModelError, UnsafeModelError
from compression.model_io import (
    check_onnx_external_data,
    clean_runtime_message,
    describe_onnx_failure,
    probe_onnx,
)

GiB = 1024**3
# What ONNX Runtime 1.2x says for a model with an empty graph: "Allocator" in the C++ signature.
EMPTY_GRAPH_MESSAGE = (
    "[ONNXRuntimeError] : 1 : FAIL : Exception during initialization: "
    "/onnxruntime_src/onnxruntime/core/framework/session_state_utils.cc:294 "
    "onnxruntime::common::Status onnxruntime::session_state_utils::SaveInitializedTensors("
    "const onnxruntime::Env&, const onnxruntime::AllocatorPtr&, "
    "const std::function<void(int)>&, onnxruntime::ITensorAllocator&) "
    "ort_value_name_idx_map.MaxIdx() > -1 was false. OrtValue indexes should have been populated."
)


def test_an_allocator_in_a_signature_is_not_out_of_memory():
    text = describe_onnx_failure(
        "m.onnx", {"stage": "load", "exc": "Fail", "error": EMPTY_GRAPH_MESSAGE}, 4 * GiB
    )
    assert "memory cap" not in text
    assert text == (
        "ONNX Runtime cannot load m.onnx: ort_value_name_idx_map.MaxIdx() > -1 was false. "
        "OrtValue indexes should have been populated."
    )


@pytest.mark.parametrize(
    "result",
    [
        {"stage": "load", "exc": "MemoryError", "error": ""},
        {"stage": "run", "exc": "RuntimeException", "error": "std::bad_alloc"},
        {"stage": "run", "exc": "Fail", "error": "BFCArena: Failed to allocate memory for 9 GB"},
    ],
)
def test_only_real_allocation_failures_are_out_of_memory(result):
    text = describe_onnx_failure("m.onnx", result, 4 * GiB)
    assert text.startswith("m.onnx: the ONNX model needs more than the 4096 MiB memory cap while ")


def test_unsupported_operators_and_checker_refusals_are_sentences():
    unsupported = describe_onnx_failure(
        "m.onnx",
        {
            "stage": "load",
            "exc": "NotImplemented",
            "error": "[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation for Foo(1) node with name ''",
        },
        GiB,
    )
    assert unsupported == (
        "m.onnx uses an operator or data type that ONNX Runtime cannot run on the CPU: "
        "Could not find an implementation for Foo(1) node with name ''"
    )
    checked = describe_onnx_failure(
        "m.onnx",
        {
            "stage": "check",
            "exc": "ValidationError",
            "error": "Field 'shape' of 'type' is required but missing.\n\n==> Context: Bad node spec",
        },
        GiB,
    )
    assert checked == (
        "m.onnx is not a valid ONNX model: the ONNX checker refuses it: "
        "Field 'shape' of 'type' is required but missing."
    )
    assert clean_runtime_message("x" * 1000).endswith("…")


def test_the_probe_names_an_empty_graph(tmp_path):
    with pytest.raises(
        InvalidModelError, match=r"^e\.onnx is not a usable model: its graph is empty"
    ):
        probe_onnx(onnx_empty_graph(tmp_path / "e.onnx"))


def test_external_data_is_found_in_functions_and_subgraphs(tmp_path):
    with pytest.raises(UnsafeModelError, match=r"tensor 'leak' keeps its data in an external file"):
        check_onnx_external_data(onnx_external_data_in_function(tmp_path / "f.onnx"))
    with pytest.raises(UnsafeModelError, match=r"tensor 'hidden_values' keeps its data"):
        check_onnx_external_data(onnx_external_data_in_subgraph(tmp_path / "s.onnx"))
