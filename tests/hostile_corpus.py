"""A hostile-input corpus, generated at test time (no binaries in the repository).

Each function writes or returns one hostile input the catalog, the jobs API, the device registry
or the HTTP layer must refuse with a clear sentence: oversized request heads, a YAML alias bomb,
an archive whose entries are each harmless but whose total expands a thousandfold, malformed
safetensors headers, ONNX files with an empty graph or with external data hidden in functions
and subgraphs, and names carrying Unicode bidi and other format controls.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

KiB = 1024
MiB = 1024**2
GiB = 1024**3


# --- HTTP ---------------------------------------------------------------------------------------


def http_head(method: str, path: str, *, length: int | None, headers: dict[str, str]) -> bytes:
    """A request head announcing ``length`` body bytes (``None``: a chunked body)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(
        f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    )
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# --- recipes ------------------------------------------------------------------------------------


def yaml_alias_bomb(levels: int = 6, fanout: int = 9) -> str:
    """A "billion laughs" recipe: ``fanout ** levels`` strings from a few hundred bytes, as the
    value of a config field that must be an integer (so an error message quotes it).

    The default expands to about 590,000 strings, a 4.3 MB ``repr`` (the security review's
    344-byte bomb gave a 4.3 MB error body); one more level is nine times that.
    """
    names = "abcdefghijklmnopqrstuvwxyz"
    items = [f"&{names[0]} [{','.join(['lol'] * fanout)}]"]
    for level in range(1, levels):
        items.append(f"&{names[level]} [{','.join([f'*{names[level - 1]}'] * fanout)}]")
    inner = ",\n  ".join(items)
    return f"stages:\n- method: finetune\n  config: {{epochs: [\n  {inner}]}}\n"


# --- archives -----------------------------------------------------------------------------------


def zip_many_small_bombs(path: Path, *, entries: int = 1000, entry_bytes: int = MiB) -> Path:
    """``entries`` files of ``entry_bytes`` zeros each: every entry alone passes a per-entry
    ratio check at 1 MiB, the archive as a whole expands about 1000:1."""
    zeros = b"\0" * entry_bytes
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for i in range(entries):
            zf.writestr(f"train/class{i % 2}/img{i:04d}.png", zeros)
    return path


# --- safetensors --------------------------------------------------------------------------------


def safetensors_with_header(path: Path, header: object, *, data: bytes = b"") -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


MALFORMED_SAFETENSORS_HEADERS: dict[str, object] = {
    # A tensor entry without data_offsets (was a bare KeyError 'data_offsets').
    "no_offsets": {"w": {"dtype": "F32", "shape": [2]}},
    # A tensor entry that is not a mapping (was a bare TypeError).
    "entry_not_mapping": {"w": 3},
    # data_offsets that are not two integers.
    "offsets_not_numbers": {"w": {"dtype": "F32", "shape": [2], "data_offsets": ["a", None]}},
    "offsets_short": {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0]}},
}


# --- ONNX ---------------------------------------------------------------------------------------


def onnx_empty_graph(path: Path) -> Path:
    """A model with no nodes, inputs or outputs (ORT refuses it, mentioning an allocator)."""
    import onnx
    from onnx import helper

    graph = helper.make_graph([], "empty", [], [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def _external_tensor(name: str, location: str) -> object:
    import onnx

    tensor = onnx.TensorProto()
    tensor.name = name
    tensor.data_type = onnx.TensorProto.FLOAT
    tensor.dims.extend([4])
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    return tensor


def onnx_external_data_in_function(path: Path, *, location: str = "/etc/passwd") -> Path:
    """A model whose main graph calls a model-local function holding a Constant whose tensor
    lives in an external file."""
    import onnx
    from onnx import TensorProto, helper

    const = helper.make_node("Constant", [], ["c"], name="leak")
    const.attribute.append(helper.make_attribute("value", _external_tensor("leak", location)))
    add = helper.make_node("Add", ["x", "c"], ["y"])
    function = helper.make_function(
        "edgeslim.test", "Leak", ["x"], ["y"], [const, add],
        opset_imports=[helper.make_opsetid("", 17)],
    )  # fmt: skip
    call = helper.make_node("Leak", ["x"], ["y"], domain="edgeslim.test")
    graph = helper.make_graph(
        [call], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )  # fmt: skip
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("edgeslim.test", 1)],
        functions=[function],
    )
    onnx.save(model, str(path))
    return path


def onnx_external_data_in_subgraph(path: Path, *, location: str = "../../secret.bin") -> Path:
    """An ``If`` whose ``then`` branch holds a sparse-tensor Constant with external values."""
    import onnx
    from onnx import TensorProto, helper

    sparse = onnx.SparseTensorProto()
    sparse.dims.extend([4])
    sparse.values.CopyFrom(_external_tensor("hidden_values", location))
    sparse.indices.CopyFrom(helper.make_tensor("hidden_idx", TensorProto.INT64, [4], [0, 1, 2, 3]))
    const = helper.make_node("Constant", [], ["t"])
    const.attribute.append(helper.make_attribute("sparse_value", sparse))
    then_graph = helper.make_graph(
        [const], "then", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, [4])]
    )
    else_const = helper.make_node(
        "Constant", [], ["e"], value=helper.make_tensor("e", TensorProto.FLOAT, [4], [0.0] * 4)
    )
    else_graph = helper.make_graph(
        [else_const], "else", [], [helper.make_tensor_value_info("e", TensorProto.FLOAT, [4])]
    )
    node = helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


# --- names --------------------------------------------------------------------------------------

FORMAT_CONTROL_NAMES = [
    "dog\u202egnp.exe",  # RIGHT-TO-LEFT OVERRIDE: shows as "dogexe.png"
    "model\u2066x\u2069",  # LEFT-TO-RIGHT ISOLATE ... POP DIRECTIONAL ISOLATE
    "zero\u200bwidth",  # ZERO WIDTH SPACE
    "bom\ufeffname",  # ZERO WIDTH NO-BREAK SPACE (BOM)
    "soft\u00adhyphen",  # SOFT HYPHEN
    "tag\U000e0041",  # TAG LATIN CAPITAL LETTER A
]
