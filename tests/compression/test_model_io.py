"""Untrusted model files: what loads, what is refused, and that refusing has no side effects."""

from __future__ import annotations

import json
import os
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from compression import model_io
from compression.errors import InvalidModelError, UnsafeModelError
from compression.inspection import inspect_module, inspect_onnx
from compression.model_io import load_model_file, probe_onnx, save_model_safetensors
from compression.onnx_export import export_onnx
from compression.zoo import create_model

EXPORT_HINTS = ("safetensors.torch.save_file", "torch.onnx.export")


@pytest.fixture
def lenet() -> nn.Module:
    torch.manual_seed(0)
    return create_model("lenet5", num_classes=10, in_channels=1).eval()


def _same_outputs(a: nn.Module, b: nn.Module) -> bool:
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


# --- what loads ----------------------------------------------------------------------------


def test_it_loads_safetensors_into_the_named_architecture(tmp_path: Path, lenet: nn.Module) -> None:
    path = save_model_safetensors(lenet, tmp_path / "m.safetensors")
    state = load_model_file(path, arch="lenet5")
    assert state.arch is not None and state.arch.name == "lenet5"
    assert (state.num_classes, state.arch.in_channels, state.input_shape) == (10, 1, (1, 32, 32))
    assert state.module is not None and _same_outputs(state.module, lenet)


def test_it_loads_a_weights_only_state_dict_and_a_training_checkpoint(
    tmp_path: Path, lenet: nn.Module
) -> None:
    torch.save(lenet.state_dict(), tmp_path / "sd.pt")
    torch.save({"epoch": 3, "state_dict": lenet.state_dict()}, tmp_path / "ckpt.pth")
    for name in ("sd.pt", "ckpt.pth"):
        state = load_model_file(tmp_path / name, arch="lenet5")
        assert state.module is not None and _same_outputs(state.module, lenet)


def test_it_loads_an_onnx_file_and_reads_its_shapes(tmp_path: Path, lenet: nn.Module) -> None:
    path = export_onnx(lenet, (1, 32, 32), tmp_path / "m.onnx")
    state = load_model_file(path)
    assert state.format == "onnx" and state.input_shape == (1, 32, 32) and state.num_classes == 10


# --- pickles -------------------------------------------------------------------------------


class _Payload:
    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.canary}",))


def test_a_pickle_payload_is_refused_and_never_runs(tmp_path: Path) -> None:
    canary = tmp_path / "CANARY"
    path = tmp_path / "evil.pt"
    torch.save({"weight": _Payload(canary)}, path)
    with pytest.raises(UnsafeModelError, match=r"posix.system|system"):
        load_model_file(path, arch="lenet5")
    assert not canary.exists()


def test_a_pickle_payload_with_a_misleading_extension_is_refused(tmp_path: Path) -> None:
    canary = tmp_path / "CANARY"
    path = tmp_path / "evil.safetensors"
    torch.save({"weight": _Payload(canary)}, path)
    with pytest.raises(UnsafeModelError):
        load_model_file(path, arch="lenet5")
    assert not canary.exists()


def test_a_full_pickled_module_is_refused_with_the_export_hint(
    tmp_path: Path, lenet: nn.Module
) -> None:
    torch.save(lenet, tmp_path / "full.pt")
    with pytest.raises(UnsafeModelError, match="pickled model object") as info:
        load_model_file(tmp_path / "full.pt", arch="lenet5")
    assert all(h in str(info.value) for h in EXPORT_HINTS)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_a_torchscript_archive_is_refused(tmp_path: Path) -> None:
    torch.jit.save(torch.jit.script(nn.Sequential(nn.Conv2d(1, 2, 3))), tmp_path / "ts.pt")
    with pytest.raises(UnsafeModelError, match="TorchScript") as info:
        load_model_file(tmp_path / "ts.pt", arch="lenet5")
    assert all(h in str(info.value) for h in EXPORT_HINTS)


def test_a_torch_export_program_is_refused(tmp_path: Path) -> None:
    module = nn.Sequential(nn.Conv2d(1, 2, 3))
    program = torch.export.export(module, (torch.zeros(1, 1, 8, 8),))
    torch.export.save(program, tmp_path / "model.pt2")
    # Renamed to .pt it is still recognised by its content.
    (tmp_path / "model.pt2").rename(tmp_path / "model.pt")
    with pytest.raises(UnsafeModelError, match=r"\.pt2"):
        load_model_file(tmp_path / "model.pt", arch="lenet5")


def test_a_torch_package_is_refused(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.package import PackageExporter

        with PackageExporter(tmp_path / "pkg.pt") as exporter:
            exporter.extern("torch.**")
            exporter.intern("**")
            exporter.save_pickle("model", "model.pkl", nn.Sequential(nn.ReLU()))
    with pytest.raises(UnsafeModelError, match=r"torch.package"):
        load_model_file(tmp_path / "pkg.pt", arch="lenet5")


def test_keys_that_do_not_fit_the_architecture_are_named(tmp_path: Path, lenet: nn.Module) -> None:
    state = lenet.state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["features.0.bias"]
    state["classifier.5.weight"] = torch.zeros(3, 84)
    save_path = tmp_path / "m.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(save_path))
    with pytest.raises(InvalidModelError) as info:
        load_model_file(save_path, arch="lenet5", num_classes=10)
    msg = str(info.value)
    assert "missing keys: features.0.bias" in msg
    assert "unexpected keys: extra.weight" in msg
    assert "classifier.5.weight file [3, 84] vs model [10, 84]" in msg


def test_a_state_dict_without_an_architecture_asks_for_one(
    tmp_path: Path, lenet: nn.Module
) -> None:
    path = save_model_safetensors(lenet, tmp_path / "m.safetensors")
    with pytest.raises(InvalidModelError, match="architecture"):
        load_model_file(path)


# --- safetensors damage ----------------------------------------------------------------------


def test_a_truncated_safetensors_file_is_invalid(tmp_path: Path, lenet: nn.Module) -> None:
    path = save_model_safetensors(lenet, tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidModelError, match="truncated"):
        load_model_file(path, arch="lenet5")


def test_a_huge_safetensors_header_is_refused_before_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 10**12) + b'{"a": 1}')
    with pytest.raises(InvalidModelError, match="larger than"):
        load_model_file(path, arch="lenet5")


def test_a_header_longer_than_the_file_is_truncation(tmp_path: Path) -> None:
    path = tmp_path / "short.safetensors"
    path.write_bytes(struct.pack("<Q", 5000) + b"{}")
    with pytest.raises(InvalidModelError, match="truncated"):
        load_model_file(path, arch="lenet5")


# --- ONNX ----------------------------------------------------------------------------------


def _external_onnx(tmp_path: Path, location: str) -> Path:
    weight = numpy_helper.from_array(np.ones((2, 2), np.float32), name="w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [weight],
    )
    path = tmp_path / "ext.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    return path


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../x.bin"])
def test_onnx_external_data_outside_the_folder_is_refused(tmp_path: Path, location: str) -> None:
    path = _external_onnx(tmp_path, location)
    with pytest.raises(UnsafeModelError, match="external"):
        load_model_file(path)


def test_onnx_external_data_through_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "link.bin").symlink_to("/etc/hostname")
    path = _external_onnx(tmp_path, "link.bin")
    with pytest.raises(UnsafeModelError, match="symbolic link"):
        load_model_file(path)


def test_garbage_with_an_onnx_extension_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\x08\x07" + os.urandom(64))
    with pytest.raises(InvalidModelError):
        load_model_file(path)


def test_an_onnx_model_that_fails_the_checker_is_invalid(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("NoSuchOp", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
    )
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(InvalidModelError, match="not a valid ONNX model"):
        load_model_file(path)


def test_a_runtime_crash_kills_only_the_inspector_process(tmp_path: Path, lenet: nn.Module) -> None:
    path = export_onnx(lenet, (1, 32, 32), tmp_path / "m.onnx")
    crashing = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    with pytest.raises(InvalidModelError, match=r"crashed.*SIGSEGV"):
        probe_onnx(path, script=crashing)
    assert probe_onnx(path)["ok"]  # and this process carries on


def test_a_model_declaring_huge_tensors_hits_the_memory_cap(tmp_path: Path) -> None:
    # ConstantOfShape asks for 4e10 floats (160 GB) at run time.
    shape = numpy_helper.from_array(np.array([200_000, 200_000], np.int64), name="shape")
    graph = helper.make_graph(
        [
            helper.make_node("ConstantOfShape", ["shape"], ["big"]),
            helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0),
            helper.make_node("Add", ["x", "s"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [shape],
    )
    path = tmp_path / "huge.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(InvalidModelError, match=r"memory|alloc"):
        load_model_file(path, onnx_memory_bytes=2 * 1024**3)


def test_a_zip_that_is_no_torch_file_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(InvalidModelError):
        load_model_file(path, arch="lenet5")


# --- inspection ----------------------------------------------------------------------------


def test_inspection_counts_macs_and_lists_layers(lenet: nn.Module) -> None:
    info = inspect_module(lenet, (1, 32, 32))
    assert info.params == sum(p.numel() for p in lenet.parameters())
    assert info.num_classes == 10
    convs = [layer for layer in info.layers if layer.kind == "conv"]
    assert [(c.in_channels, c.out_channels, c.kernel) for c in convs] == [
        (1, 6, [5, 5]),
        (6, 16, [5, 5]),
    ]
    assert info.macs == sum(layer.macs or 0 for layer in info.layers)
    json.dumps(info.to_dict())


def test_onnx_inspection_reads_params_from_initializers(tmp_path: Path, lenet: nn.Module) -> None:
    path = export_onnx(lenet, (1, 32, 32), tmp_path / "m.onnx")
    info = inspect_onnx(path)
    assert info.params == sum(p.numel() for p in lenet.parameters())
    assert info.input_shape == [1, 32, 32] and info.num_classes == 10 and info.macs is None
    assert [layer.kind for layer in info.layers] == ["conv", "conv", "linear", "linear", "linear"]
    assert info.size_bytes == path.stat().st_size
    json.dumps(info.to_dict())


def test_sniffing_reads_content_not_extensions(tmp_path: Path, lenet: nn.Module) -> None:
    path = tmp_path / "weights.bin"
    save_model_safetensors(lenet, path)
    assert model_io.sniff_format(path) == "safetensors"
