"""Load untrusted model files safely: safetensors, weights-only state dicts, and checked ONNX.

Nothing here ever unpickles arbitrary objects. ``.pt``/``.pth`` files go through
``torch.load(weights_only=True)`` only, with no fallback; TorchScript, torch.package, ``.pt2``
and pickled modules are recognised by their content and refused with a hint on how to export.
ONNX files are checked for external data in-process and run by ONNX Runtime in a separate,
memory-capped subprocess, so a hostile model can only kill that child.
"""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compression.errors import InvalidModelError, UnsafeModelError, quote
from compression.stage import ArchSpec, ModelState

if TYPE_CHECKING:
    import torch
    from torch import nn

# torch is imported inside the functions that need it: the upload inspector's ONNX path (sniff,
# probe, metadata) runs in a fresh process per upload and must not pay torch's import.

MiB = 1024**2
GiB = 1024**3
MAX_SAFETENSORS_HEADER = 100 * MiB
MAX_MODEL_FILE_BYTES = 4 * GiB
ONNX_PROBE_MEMORY_BYTES = 4 * GiB
ONNX_PROBE_TIMEOUT_S = 120.0

EXPORT_HINT = (
    "save the weights instead: safetensors.torch.save_file(model.state_dict(), "
    '"model.safetensors") (and pick the architecture), or export ONNX with '
    'torch.onnx.export(model, example_input, "model.onnx")'
)


def _unsafe(what: str) -> UnsafeModelError:
    return UnsafeModelError(f"{what} is refused because loading it can run code; {EXPORT_HINT}")


# --- sniffing ------------------------------------------------------------------------------


def sniff_format(path: Path | str) -> str:
    """What a model file really is, from its content (the extension only breaks ties).

    Returns one of ``safetensors``, ``torch_state`` (a torch.save zip or legacy pickle),
    ``torchscript``, ``torch_package``, ``pt2``, ``onnx`` or ``unknown``.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return _sniff_zip(path)
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{" and n > 0:
            return "safetensors"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "torch_state"  # a legacy (non-zip) torch.save file is a pickle stream
    if path.suffix.lower() == ".onnx":
        return "onnx"
    if path.suffix.lower() == ".safetensors":
        return "safetensors"
    return "unknown"


def _sniff_zip(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidModelError(
            f"{path.name} looks like a zip archive but cannot be read: {exc}"
        ) from exc
    tails = {n.split("/", 1)[1] if "/" in n else n for n in names}
    if any(t.startswith(".data/extern_modules") for t in tails):
        return "torch_package"
    if "archive_format" in tails or any(
        t.startswith("models/") and t.endswith(".json") for t in tails
    ):
        return "pt2"
    if "constants.pkl" in tails or any(t.startswith("code/") for t in tails):
        return "torchscript"
    if "data.pkl" in tails:
        return "torch_state"
    if path.suffix.lower() == ".pt2":
        return "pt2"
    return "unknown"


# --- safetensors ---------------------------------------------------------------------------


def read_safetensors(
    path: Path | str, *, max_header: int = MAX_SAFETENSORS_HEADER
) -> dict[str, torch.Tensor]:
    """Read a safetensors file after checking its header length against the file and a cap.

    Raises:
        InvalidModelError: truncated, header too large, or malformed.
    """
    from safetensors.torch import load_file

    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        prefix = fh.read(8)
    if len(prefix) < 8:
        raise InvalidModelError(f"{path.name} is truncated: no safetensors header")
    (header_len,) = struct.unpack("<Q", prefix)
    if header_len > max_header:
        raise InvalidModelError(
            f"{path.name}: safetensors header of {header_len} bytes is larger than the {max_header}-byte limit"
        )
    if 8 + header_len > size:
        raise InvalidModelError(f"{path.name} is truncated: its header needs {header_len} bytes")
    with open(path, "rb") as fh:
        fh.seek(8)
        try:
            header = json.loads(fh.read(header_len))
        except ValueError as exc:
            raise InvalidModelError(
                f"{path.name}: the safetensors header is not valid JSON"
            ) from exc
    if not isinstance(header, dict):
        raise InvalidModelError(f"{path.name}: the safetensors header is not a mapping")
    end = _safetensors_data_end(path.name, header)
    if 8 + header_len + end > size:
        raise InvalidModelError(f"{path.name} is truncated: tensors need {end} bytes of data")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise InvalidModelError(f"{path.name} is not a valid safetensors file: {exc}") from exc


def _safetensors_data_end(name: str, header: dict[str, Any]) -> int:
    """Check every tensor entry of a safetensors header and return where the data ends.

    Each entry must be ``{"dtype": str, "shape": [int, ...], "data_offsets": [begin, end]}``
    with ``0 <= begin <= end``; ``__metadata__``, when present, maps strings to strings.
    """

    def bad(key: str, what: str) -> InvalidModelError:
        return InvalidModelError(
            f"{name} is not a valid safetensors file: in its header, tensor {quote(key, 60)} {what}"
        )

    metadata = header.get("__metadata__")
    if metadata is not None and not (
        isinstance(metadata, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    ):
        raise InvalidModelError(
            f"{name} is not a valid safetensors file: its __metadata__ is not a mapping of "
            "strings to strings"
        )
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise bad(key, "is not described by a mapping (dtype, shape, data_offsets)")
        if not isinstance(entry.get("dtype"), str):
            raise bad(key, "has no dtype")
        shape = entry.get("shape")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise bad(key, "has no shape (a list of sizes of 0 or more)")
        offsets = entry.get("data_offsets")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise bad(key, "has no data_offsets (a pair of byte offsets)")
        if not 0 <= offsets[0] <= offsets[1]:
            raise bad(key, f"has data_offsets that run backwards ({offsets[0]} to {offsets[1]})")
        end = max(end, offsets[1])
    return end


# --- torch state dicts ---------------------------------------------------------------------

_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


def read_torch_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """Load a ``.pt``/``.pth`` state dict with ``weights_only=True`` and never anything else.

    Accepts a plain state dict or a training checkpoint holding one under ``state_dict``,
    ``model_state_dict`` or ``model``; strips a DataParallel ``module.`` prefix.

    Raises:
        UnsafeModelError: the file needs more than plain tensors to load (a pickled module,
            a code-execution payload, TorchScript, torch.package or ``.pt2``).
        InvalidModelError: it loads but holds no state dict.
    """
    path = Path(path)
    kind = sniff_format(path)
    if kind == "torchscript":
        raise _unsafe(f"{path.name} is a TorchScript archive, which")
    if kind == "torch_package":
        raise _unsafe(f"{path.name} is a torch.package archive, which")
    if kind == "pt2":
        raise _unsafe(f"{path.name} is a torch.export (.pt2) program, which")
    if kind != "torch_state":
        raise InvalidModelError(f"{path.name} is not a torch checkpoint (detected: {kind})")
    import torch
    from torch import nn

    try:
        # A file object, not the path: torch must not pick a loader from the extension.
        with open(path, "rb") as fh:
            obj = torch.load(fh, weights_only=True, map_location="cpu")
    except Exception as exc:
        msg = str(exc)
        if "weights_only" in msg.lower() or "Unpickl" in type(exc).__name__ or "GLOBAL" in msg:
            found = _GLOBAL_RE.findall(msg)
            name = found[0] if found else "an object"
            if found and _names_a_module_class(name):
                raise _unsafe(f"{path.name} is a pickled model object ({name}), which") from None
            raise _unsafe(f"{path.name} contains pickled Python objects ({name}), which") from None
        detail = msg.strip().splitlines()[0][:200] if msg.strip() else "it is damaged"
        raise InvalidModelError(
            f"{path.name} could not be read as a weights-only torch checkpoint: {detail}"
        ) from None
    if isinstance(obj, nn.Module):  # only reachable if torch ever allow-lists modules
        raise _unsafe(f"{path.name} is a pickled model object, which")
    return _extract_state_dict(obj, path.name)


def _names_a_module_class(dotted: str) -> bool:
    """Whether a pickle GLOBAL names an ``nn.Module`` class.

    Only modules that are already imported are looked at: importing one named by an untrusted
    file could run its code.
    """
    if dotted.startswith(("torch.nn.", "torchvision.models.", "timm.models.")):
        return True
    from torch import nn

    module_name, _, attr = dotted.rpartition(".")
    module = sys.modules.get(module_name)
    obj = getattr(module, attr, None) if module is not None else None
    return isinstance(obj, type) and issubclass(obj, nn.Module)


def _extract_state_dict(obj: Any, name: str) -> dict[str, torch.Tensor]:
    import torch

    if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if (
                isinstance(inner, Mapping)
                and inner
                and all(isinstance(v, torch.Tensor) for v in inner.values())
            ):
                obj = inner
                break
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(v, torch.Tensor) for v in obj.values())
    ):
        raise InvalidModelError(
            f"{name} holds no state dict (a mapping of parameter names to tensors); {EXPORT_HINT}"
        )
    state = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def fit_state_dict(
    module: nn.Module, state: Mapping[str, torch.Tensor], *, allow_resized: bool = False
) -> None:
    """Load ``state`` into ``module`` strictly, or say exactly which keys and shapes differ.

    With ``allow_resized`` a state with fewer channels (a pruned model) resizes the layers.

    Raises:
        InvalidModelError: naming the missing and unexpected keys and the shape mismatches.
    """
    from compression.checkpoint import describe_key_mismatch, load_state_dict_resized

    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if allow_resized and not missing and not unexpected:
        load_state_dict_resized(module, state)
        return
    shapes = [
        (k, tuple(state[k].shape), tuple(own[k].shape))
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        raise InvalidModelError(describe_key_mismatch(missing, unexpected, shapes))
    module.load_state_dict(dict(state), strict=True)


def _infer_sizes(arch: str, state: Mapping[str, torch.Tensor]) -> tuple[int | None, int | None]:
    """Guess ``(num_classes, in_channels)`` from a state dict for the zoo ``arch``."""
    from torch import nn

    from compression.zoo import create_model

    probe = create_model(arch, num_classes=10, in_channels=3)
    num_classes = in_channels = None
    linears = [n for n, m in probe.named_modules() if isinstance(m, nn.Linear)]
    convs = [n for n, m in probe.named_modules() if isinstance(m, nn.Conv2d)]
    if linears and f"{linears[-1]}.weight" in state:
        num_classes = int(state[f"{linears[-1]}.weight"].shape[0])
    if convs and f"{convs[0]}.weight" in state:
        in_channels = int(state[f"{convs[0]}.weight"].shape[1])
    return num_classes, in_channels


def save_model_safetensors(module: nn.Module, path: Path | str) -> Path:
    """Write ``module``'s state dict as safetensors (the format we ask users to upload)."""
    from safetensors.torch import save_file

    from compression.checkpoint import plain_state_dict

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(plain_state_dict(module), str(path))
    return path


# --- ONNX ----------------------------------------------------------------------------------


def check_onnx_external_data(
    path: Path | str, *, allowed_external: frozenset[str] = frozenset()
) -> Any:
    """Parse an ONNX file (without loading external data) and refuse any external tensor.

    An upload is one file, so a tensor stored elsewhere can only point at files on the server
    (``../``, absolute paths, symlinks): every external location is refused, except a plain
    file name in ``allowed_external`` that is a regular file beside the model (a decoded
    container's ``weights.bin``, written by the decoder itself).

    Returns:
        The parsed ``onnx.ModelProto``.
    """
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise InvalidModelError(
            f"{path.name} is not an ONNX file: its contents cannot be parsed as an ONNX model"
        ) from exc
    for tensor in _all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            location = next((e.value for e in tensor.external_data if e.key == "location"), "?")
            beside = path.parent / location
            if (
                location in allowed_external
                and "/" not in location
                and "\\" not in location
                and not beside.is_symlink()
                and beside.is_file()
            ):
                continue
            raise UnsafeModelError(
                f"{path.name}: tensor {quote(tensor.name, 60)} keeps its data in an external file "
                f"({_describe_location(path, location)}); upload a single-file ONNX "
                "(onnx.save(model, path, save_as_external_data=False))"
            )
    return model


def _describe_location(model_path: Path, location: str) -> str:
    if location.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", location):
        return f"absolute path {quote(location, 60)}"
    if ".." in re.split(r"[/\\]", location):
        return f"{quote(location, 60)} points outside the model's folder"
    candidate = model_path.parent / location
    if candidate.is_symlink():
        return f"{quote(location, 60)} is a symbolic link"
    return quote(location, 60)


def _all_tensors(model: Any) -> list[Any]:
    """Every tensor a model can carry: the main graph's initializers, sparse initializers and
    tensor attributes, the same in every subgraph (``If``/``Loop``/``Scan`` bodies, at any
    depth), and in the nodes of model-local functions (and their subgraphs)."""
    out: list[Any] = []
    _graph_tensors(model.graph, out)
    for function in model.functions:
        for node in function.node:
            _node_tensors(node, out)
    return out


def _graph_tensors(graph: Any, out: list[Any]) -> None:
    out += list(graph.initializer)
    for sparse in graph.sparse_initializer:
        out += [sparse.values, sparse.indices]
    for node in graph.node:
        _node_tensors(node, out)


def _node_tensors(node: Any, out: list[Any]) -> None:
    import onnx

    kinds = onnx.AttributeProto
    for attr in node.attribute:
        if attr.type == kinds.TENSOR:
            out.append(attr.t)
        elif attr.type == kinds.TENSORS:
            out += list(attr.tensors)
        elif attr.type == kinds.SPARSE_TENSOR:
            out += [attr.sparse_tensor.values, attr.sparse_tensor.indices]
        elif attr.type == kinds.SPARSE_TENSORS:
            for sparse in attr.sparse_tensors:
                out += [sparse.values, sparse.indices]
        elif attr.type == kinds.GRAPH:
            _graph_tensors(attr.g, out)
        elif attr.type == kinds.GRAPHS:
            for graph in attr.graphs:
                _graph_tensors(graph, out)


# The child imports only onnx, onnxruntime and numpy; it caps its own address space first so
# a model declaring huge tensors fails there instead of swapping the worker to death. It reports
# what failed where (stage, exception class, raw message); the parent turns that into a sentence
# (:func:`describe_onnx_failure`), so the rules live in one importable, tested place.
_PROBE_SCRIPT = r"""
import json, resource, sys
path, cap = sys.argv[1], int(sys.argv[2])
if cap > 0:
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
def fail(stage, exc, msg):
    print(json.dumps({"ok": False, "stage": stage, "exc": exc, "error": str(msg)[:4000]}))
    sys.exit(3)
stage = "parse"
try:
    import numpy as np
    import onnx
    import onnxruntime as ort
    model = onnx.load(path, load_external_data=False)
    stage = "check"
    onnx.checker.check_model(model)
except MemoryError:
    fail(stage, "MemoryError", "")
except Exception as exc:
    fail(stage, type(exc).__name__, exc)
if not len(model.graph.node):
    fail("structure", "", "no_nodes")
if not len(model.graph.output):
    fail("structure", "", "no_outputs")
types = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
         "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(int64)": np.int64}
stage = "load"
try:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 4
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    stage = "run"
    feeds, inputs = {}, []
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
        inputs.append({"name": i.name, "shape": [d if isinstance(d, int) else str(d) for d in i.shape], "type": i.type})
        feeds[i.name] = np.zeros(shape, dtype=types.get(i.type, np.float32))
    outs = sess.run(None, feeds)
    outputs = [{"name": o.name, "shape": [d if isinstance(d, int) else str(d) for d in o.shape],
                "type": o.type, "run_shape": list(np.asarray(v).shape)}
               for o, v in zip(sess.get_outputs(), outs)]
except MemoryError:
    fail(stage, "MemoryError", "")
except Exception as exc:
    fail(stage, type(exc).__name__, exc)
print(json.dumps({"ok": True, "inputs": inputs, "outputs": outputs,
                  "opset": [{"domain": o.domain, "version": o.version} for o in model.opset_import],
                  "producer": model.producer_name, "ir_version": model.ir_version}))
"""

# Only these say an allocation really failed; "alloc" alone also names ORT's allocator classes,
# which appear in the C++ signatures of unrelated errors (an empty graph's, for one).
_OUT_OF_MEMORY = re.compile(
    r"bad_alloc|failed to allocate|out of memory|cannot allocate memory|MemoryError", re.I
)
_ORT_PREFIX = re.compile(r"^\s*\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")
# "/onnxruntime_src/.../x.cc:294 onnxruntime::common::Status onnxruntime::f(const A&, B<C>&) "
_CPP_LOCATION = re.compile(
    r"\S+\.(?:cc|cpp|cxx|h|hpp):\d+\s+(?:[^()\s]+\s+)*[^()\s]+\((?:[^()]|\([^()]*\))*\)\s*"
)
_STAGE_WORDS = {
    "parse": "reading the file",
    "check": "checking the model",
    "structure": "checking the model",
    "load": "loading it into ONNX Runtime",
    "run": "running it once",
}


def clean_runtime_message(message: str, limit: int = 300) -> str:
    """ONNX Runtime's or the checker's message without the error-code prefix, C++ source
    locations and signatures, or the checker's context dump; one line, at most ``limit``."""
    text = _ORT_PREFIX.sub("", message)
    text = text.split("==> Context:", 1)[0]
    text = _CPP_LOCATION.sub("", text)
    text = " ".join(text.split())
    text = text.removeprefix("Exception during initialization: ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_onnx_failure(name: str, result: dict[str, Any], memory_bytes: int) -> str:
    """The sentence for a failed ONNX probe: what was being done, and why it failed, classified
    by cause (only a real allocation failure is called out of memory)."""
    stage = str(result.get("stage") or "load")
    exc = str(result.get("exc") or "")
    raw = str(result.get("error") or "")
    if exc == "MemoryError" or _OUT_OF_MEMORY.search(raw):
        return (
            f"{name}: the ONNX model needs more than the {memory_bytes // MiB} MiB memory cap "
            f"while {_STAGE_WORDS.get(stage, 'inspecting it')}"
        )
    detail = clean_runtime_message(raw)
    if stage == "parse":
        return f"{name} is not an ONNX file: its contents cannot be parsed as an ONNX model"
    if stage == "check":
        return f"{name} is not a valid ONNX model: the ONNX checker refuses it: {detail}"
    if stage == "structure":
        if raw == "no_outputs":
            return f"{name} is not a usable model: its graph declares no outputs"
        return f"{name} is not a usable model: its graph is empty (it holds no operators)"
    if stage == "run":
        return (
            f"ONNX Runtime loads {name} but running it once on zeros of its declared input "
            f"shape fails: {detail}"
        )
    if exc == "NotImplemented":
        return (
            f"{name} uses an operator or data type that ONNX Runtime cannot run on the CPU: "
            f"{detail}"
        )
    return f"ONNX Runtime cannot load {name}: {detail}"


def probe_onnx(
    path: Path | str,
    *,
    memory_bytes: int = ONNX_PROBE_MEMORY_BYTES,
    timeout_s: float = ONNX_PROBE_TIMEOUT_S,
    script: str | None = None,
    allowed_external: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Check and run an ONNX file once in a memory-capped subprocess; return what it saw.

    Raises:
        UnsafeModelError: external data.
        InvalidModelError: invalid, crashed the runtime, ran out of memory or time. The
            message names the reason; the calling process is unaffected.
    """
    path = Path(path)
    check_onnx_external_data(path, allowed_external=allowed_external)
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR")}
    env["OMP_NUM_THREADS"] = "1"
    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-c", script or _PROBE_SCRIPT, str(path), str(memory_bytes)],
            capture_output=True,
            timeout=timeout_s,
            env=env,
            cwd=str(path.parent),
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise InvalidModelError(
            f"{path.name}: inspecting the ONNX model took longer than {timeout_s:g}s"
        ) from None
    lines = proc.stdout.decode("utf-8", "replace").strip().splitlines()
    result: dict[str, Any] | None = None
    if lines:
        try:
            result = json.loads(lines[-1])
        except ValueError:
            result = None
    if proc.returncode == 0 and result and result.get("ok"):
        return result
    if result and not result.get("ok"):
        raise InvalidModelError(describe_onnx_failure(path.name, result, memory_bytes))
    if proc.returncode < 0:
        try:
            sig = signal.Signals(-proc.returncode).name
        except ValueError:
            sig = str(-proc.returncode)
        raise InvalidModelError(
            f"{path.name}: ONNX Runtime crashed on this model ({sig}) in the inspector process"
        )
    tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
    if _OUT_OF_MEMORY.search(tail[0]):
        raise InvalidModelError(
            f"{path.name}: the ONNX model needs more than the {memory_bytes // MiB} MiB memory cap"
        )
    raise InvalidModelError(
        f"{path.name}: the ONNX inspector stopped without an answer (exit {proc.returncode})"
    )


def _onnx_state(
    path: Path,
    probe: dict[str, Any],
    input_shape: tuple[int, int, int] | None,
    num_classes: int | None,
) -> ModelState:
    inputs, outputs = probe["inputs"], probe["outputs"]
    if len(inputs) != 1 or not outputs:
        raise InvalidModelError(
            f"{path.name}: expected one image input, found {len(inputs)} inputs"
        )
    declared = inputs[0]["shape"]
    if input_shape is None:
        if len(declared) != 4 or not all(isinstance(d, int) for d in declared[1:]):
            raise InvalidModelError(
                f"{path.name}: the input shape {declared} is not (N, C, H, W); pass the input shape"
            )
        input_shape = (int(declared[1]), int(declared[2]), int(declared[3]))
    run_shape = outputs[0]["run_shape"]
    found_classes = int(run_shape[-1]) if run_shape else None
    if num_classes is not None and found_classes is not None and num_classes != found_classes:
        raise InvalidModelError(f"{path.name} outputs {found_classes} classes, not {num_classes}")
    if found_classes is None and num_classes is None:
        raise InvalidModelError(f"{path.name}: cannot tell the number of classes from the output")
    return ModelState(
        input_shape=input_shape,
        num_classes=int(num_classes if num_classes is not None else found_classes),  # type: ignore[arg-type]
        onnx_path=path,
    )


def _onnx_detector_state(
    path: Path,
    probe: dict[str, Any],
    input_shape: tuple[int, int, int] | None,
    num_classes: int | None,
) -> ModelState | None:
    """The state of an ONNX detector (one carrying EdgeSlim's detection metadata, see
    :mod:`compression.detection_export`), after checking that its outputs are what the
    post-processing decodes; None for a file without the metadata whose outputs do not look
    like a detector's raw outputs.

    Raises:
        InvalidModelError: malformed metadata, outputs the post-processing does not recognise,
            a number of classes or input shape other than the metadata's, or a model that looks
            like a detector (several outputs, or outputs with a spatial or box layout) but
            carries no metadata.
    """
    from compression.detect_post import DetectionError, recognise_outputs
    from compression.detector_meta import read_detector_meta

    try:
        meta = read_detector_meta(path)
    except DetectionError as exc:
        raise InvalidModelError(f"{path.name}: {exc}") from exc
    outputs = probe["outputs"]
    shapes = [o.get("run_shape") or o["shape"] for o in outputs]
    if meta is None:
        looks_like_detector = len(outputs) > 1 or any(
            len(s) >= 3 and any(isinstance(d, int) and d > 1 for d in s[2:]) for s in shapes
        )
        if looks_like_detector:
            found = ", ".join(str(tuple(s)) for s in shapes)
            raise InvalidModelError(
                f"{path.name} has outputs {found}, not a classifier's (batch, classes), and "
                "carries no detection metadata: EdgeSlim decodes an ONNX detector's raw outputs "
                "only with the metadata its export stores (compression.detection_export)"
            )
        return None
    inputs = probe["inputs"]
    try:
        recognise_outputs(shapes, meta, input_shape=inputs[0]["shape"] if inputs else None)
    except DetectionError as exc:
        raise InvalidModelError(
            f"{path.name} is refused: its outputs are not what the detector's post-processing "
            f"recognises: {exc}"
        ) from exc
    if len(inputs) != 1:
        raise InvalidModelError(f"{path.name}: expected one image input, found {len(inputs)}")
    if num_classes is not None and num_classes != meta.num_classes:
        raise InvalidModelError(
            f"{path.name} is a detector of {meta.num_classes} classes, not {num_classes}"
        )
    shape = (3, meta.input_size, meta.input_size)
    if input_shape is not None and tuple(input_shape) != shape:
        raise InvalidModelError(
            f"{path.name} is a detector with input {shape}, not {tuple(input_shape)}"
        )
    return ModelState(
        input_shape=shape, num_classes=meta.num_classes, task="detection", onnx_path=path
    )


# --- the entry point -----------------------------------------------------------------------


def load_model_file(
    path: Path | str,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
    input_shape: tuple[int, int, int] | None = None,
    allow_resized: bool = False,
    max_file_bytes: int = MAX_MODEL_FILE_BYTES,
    onnx_memory_bytes: int = ONNX_PROBE_MEMORY_BYTES,
    allowed_external: frozenset[str] = frozenset(),
) -> ModelState:
    """Load an uploaded model file into a :class:`ModelState`.

    Args:
        path: ``.safetensors``, ``.pt``/``.pth`` (a state dict) or ``.onnx``.
        arch: the zoo architecture a state dict belongs to (required for those).
        num_classes: classes; inferred from the state dict or the ONNX output when omitted.
        in_channels: input channels; inferred from the first convolution when omitted.
        input_shape: (C, H, W); defaults to the architecture's usual input.
        allow_resized: accept a state dict with fewer channels than the architecture (pruned).
        max_file_bytes: refuse larger files.
        onnx_memory_bytes: address-space cap of the ONNX inspector subprocess.
        allowed_external: external-data file names an ONNX may use, beside it (see
            :func:`check_onnx_external_data`); none for an upload.

    Raises:
        UnsafeModelError: a pickle, TorchScript, torch.package, ``.pt2`` or external-data ONNX.
        InvalidModelError: malformed, truncated, or not fitting ``arch``.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidModelError(f"{path} does not exist or is not a file")
    size = path.stat().st_size
    if size > max_file_bytes:
        raise InvalidModelError(
            f"{path.name} is {size} bytes, over the {max_file_bytes}-byte limit"
        )
    kind = sniff_format(path)
    if kind == "onnx":
        probe = probe_onnx(path, memory_bytes=onnx_memory_bytes, allowed_external=allowed_external)
        detector = _onnx_detector_state(path, probe, input_shape, num_classes)
        return detector or _onnx_state(path, probe, input_shape, num_classes)
    import torch

    from compression.zoo import create_model, default_input_size, has_model, model_task

    if kind == "safetensors":
        state = read_safetensors(path)
    elif kind in ("torch_state", "torchscript", "torch_package", "pt2"):
        state = read_torch_state_dict(path)
    else:
        raise InvalidModelError(
            f"{path.name}: unrecognised model format; upload .safetensors, a .pt state dict or .onnx"
        )
    if arch is None:
        raise InvalidModelError(
            f"{path.name} holds weights only: choose the architecture it belongs to"
        )
    if not has_model(arch):
        create_model(arch)  # raises ConfigError naming the known architectures
    if model_task(arch) != "classification":
        raise InvalidModelError(
            f"{arch!r} is a {model_task(arch)} architecture: weights files are read for "
            "classification architectures only"
        )
    guessed_classes, guessed_channels = _infer_sizes(arch, state)
    num_classes = num_classes or guessed_classes or 10
    in_channels = in_channels or (input_shape[0] if input_shape else None) or guessed_channels or 3
    module = create_model(arch, num_classes=num_classes, in_channels=in_channels)
    fit_state_dict(module, state, allow_resized=allow_resized)
    module.eval()
    if input_shape is None:
        side = default_input_size(arch)
        input_shape = (in_channels, side, side)
    with torch.no_grad():
        try:
            module(torch.zeros((1, *input_shape)))
        except RuntimeError as exc:
            raise InvalidModelError(
                f"{path.name}: a forward pass at input {input_shape} fails: {exc}"
            ) from exc
    return ModelState(
        input_shape=input_shape,
        num_classes=num_classes,
        module=module,
        arch=ArchSpec(arch, num_classes, in_channels),
    )
