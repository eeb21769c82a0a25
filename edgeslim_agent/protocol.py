"""The agent <-> server websocket protocol, defined once: the server and the agent both import it.

Every frame is one JSON object ``{"v": PROTOCOL_VERSION, "type": <name>, ...fields}``. Decoding
is strict: an unknown type or version, a missing or extra field, a wrong type, an out-of-range
value or a frame over :data:`MAX_MESSAGE_BYTES` raises :class:`ProtocolError`. The docs page
``docs/protocol.md`` describes every message; keep the two in step.

Stdlib only: the agent installs without Django and without torch.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024
MAX_BATCH_SIZES = 16
MAX_PROVIDERS = 8
MAX_STRING = 4096

# Result kinds. Each deployment's results have deterministic sequence numbers (see
# ``result_seq``), so a result recomputed after a crash gets the same number and the server's
# unique key (deployment, device, seq) stores it once.
RESULT_LATENCY = "latency"
RESULT_ACCURACY = "accuracy"
RESULT_COMPLETE = "complete"
RESULT_FAILED = "failed"
RESULT_KINDS = (RESULT_LATENCY, RESULT_ACCURACY, RESULT_COMPLETE, RESULT_FAILED)
TERMINAL_KINDS = (RESULT_COMPLETE, RESULT_FAILED)

PROGRESS_STAGES = ("queued", "downloading", "verifying", "benchmarking", "evaluating")

# Reasons an agent gives in a ``failed`` result.
FAIL_UNSIGNED = "unsigned"
FAIL_BAD_SIGNATURE = "bad_signature"
FAIL_ROLLBACK = "rollback"
FAIL_HASH_MISMATCH = "hash_mismatch"
FAIL_SIZE_MISMATCH = "size_mismatch"
FAIL_DOWNLOAD = "download_failed"
FAIL_BENCHMARK = "benchmark_failed"
FAIL_DECODE = "decode_failed"  # a compressed container the decoder refused: nothing was benchmarked
FAIL_CANCELLED = "cancelled"  # the server cancelled the deployment while it ran (a ``cancel``)

# What a manifest's artifact is: a plain ONNX file, or an EdgeSlim compressed container
# (docs/container-format.md) that the agent decodes into an ONNX before benchmarking it.
FORMAT_ONNX = "onnx"
FORMAT_CONTAINER = "container"
ARTIFACT_FORMATS = (FORMAT_ONNX, FORMAT_CONTAINER)

# Fields every latency result of a container deployment carries (the decode, measured once).
DECODE_KEYS = ("decode_ms", "decode_peak_rss_mb", "container_bytes", "onnx_bytes")

# Websocket close codes the server uses (4000-4999 are the application's).
CLOSE_EVICTED = 4000  # a newer connection with the same device identity took over
# The device was enrolled again: this connection's credential is replaced. The agent re-reads
# its credential file (the new enrollment wrote it) and reconnects (agent 0.4.0 on).
CLOSE_REENROLLED = 4001
CLOSE_REVOKED = 4003  # the device was revoked
CLOSE_PROTOCOL = 4400  # a malformed or unexpected message
CLOSE_TOO_BIG = 4413  # a frame over MAX_MESSAGE_BYTES
CLOSE_RATE = 4429  # too many messages


class ProtocolError(ValueError):
    """A frame that is not a valid message of this protocol version."""


def _check_range(name: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise ProtocolError(f"{name}={value} is outside [{lo}, {hi}]")


@dataclass(frozen=True, kw_only=True)
class DeviceFacts:
    """What the agent reports about its machine."""

    cpu: str
    cores: int
    memory_mb: int
    os: str
    arch: str
    python: str
    ort_version: str
    providers: list[str]

    def validate(self) -> None:
        _check_range("cores", self.cores, 0, 4096)
        _check_range("memory_mb", self.memory_mb, 0, 1 << 40)
        if len(self.providers) > 32:
            raise ProtocolError("too many providers")


@dataclass(frozen=True, kw_only=True)
class BenchSettings:
    """How to benchmark a deployed artifact."""

    warmup: int = 10
    runs: int = 50
    threads: int = 1
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])
    profile: bool = False
    accuracy: bool = False
    # Full input shape with the batch first (its value is replaced by each batch size); None
    # means "the model's declared shape".
    input_shape: list[int] | None = None

    def validate(self) -> None:
        _check_range("warmup", self.warmup, 0, 10_000)
        _check_range("runs", self.runs, 1, 100_000)
        _check_range("threads", self.threads, 1, 256)
        if not 1 <= len(self.batch_sizes) <= MAX_BATCH_SIZES:
            raise ProtocolError(f"batch_sizes needs 1 to {MAX_BATCH_SIZES} entries")
        if len(set(self.batch_sizes)) != len(self.batch_sizes):
            raise ProtocolError("batch_sizes has duplicates")
        for b in self.batch_sizes:
            _check_range("batch size", b, 1, 4096)
        if not 1 <= len(self.providers) <= MAX_PROVIDERS:
            raise ProtocolError(f"providers needs 1 to {MAX_PROVIDERS} entries")
        if self.input_shape is not None:
            if not 1 <= len(self.input_shape) <= 8:
                raise ProtocolError("input_shape needs 1 to 8 dims")
            for d in self.input_shape:
                _check_range("input_shape dim", d, 1, 1 << 16)


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """The signed description of one artifact pushed by one deployment.

    The signature covers :meth:`signing_bytes`; the download URL is not part of it because the
    downloaded bytes are checked against ``sha256`` and ``size``.
    """

    deployment_id: int
    artifact_id: int
    name: str
    sha256: str
    size: int
    issued_at: int  # milliseconds since the epoch; the agent refuses one older than it has run
    eval_sha256: str | None = None
    eval_size: int | None = None
    # "onnx" or "container" (agent 0.2.0 on). At its default "onnx" it is left out of the frame
    # and of the signed bytes, so agents and signatures from before the field see what they knew.
    format: str = FORMAT_ONNX
    # The id of the key that signed this manifest (``trust.key_id``: 16 hex digits of the sha256
    # of its public key; agent 0.5.0 on). Part of the signed bytes, so it cannot be swapped.
    key_id: str = ""

    OMIT_IF_DEFAULT: ClassVar[tuple[str, ...]] = ("format", "key_id")

    def validate(self) -> None:
        if self.format not in ARTIFACT_FORMATS:
            raise ProtocolError(f"unknown artifact format {self.format!r}")
        for name, digest in (("sha256", self.sha256), ("eval_sha256", self.eval_sha256)):
            if digest is not None and (
                len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest)
            ):
                raise ProtocolError(f"{name} is not a lowercase hex sha256")
        _check_range("size", self.size, 0, 1 << 40)
        if self.key_id and (
            len(self.key_id) != 16 or any(c not in "0123456789abcdef" for c in self.key_id)
        ):
            raise ProtocolError("key_id is 16 lowercase hex digits")
        if (self.eval_sha256 is None) != (self.eval_size is None):
            raise ProtocolError("eval_sha256 and eval_size go together")

    def signing_bytes(self) -> bytes:
        """The canonical bytes the server signs: sorted-key compact JSON with a domain tag."""
        body = dataclasses.asdict(self)
        if body["format"] == FORMAT_ONNX:
            del body["format"]
        if not body["key_id"]:
            del body["key_id"]
        body["_domain"] = "edgeslim-artifact-manifest-v1"
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


# --- messages ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Message:
    """Base of every message; ``TYPE`` is its wire name."""

    TYPE: ClassVar[str] = ""

    def validate(self) -> None:
        """Range checks beyond the types; raise ProtocolError."""


# agent -> server


@dataclass(frozen=True, kw_only=True)
class Hello(Message):
    """The agent's first message after the handshake."""

    TYPE: ClassVar[str] = "hello"
    agent_version: str
    facts: DeviceFacts


@dataclass(frozen=True, kw_only=True)
class Heartbeat(Message):
    TYPE: ClassVar[str] = "heartbeat"
    ts: float  # the agent's clock, seconds since the epoch
    busy: bool = False  # a deployment is running


@dataclass(frozen=True, kw_only=True)
class Progress(Message):
    """Live progress of one deployment on this device. Not acknowledged, not resent."""

    TYPE: ClassVar[str] = "progress"
    deployment_id: int
    stage: str
    fraction: float
    message: str = ""

    def validate(self) -> None:
        if self.stage not in PROGRESS_STAGES:
            raise ProtocolError(f"unknown stage {self.stage!r}")
        _check_range("fraction", self.fraction, 0.0, 1.0)


@dataclass(frozen=True, kw_only=True)
class Result(Message):
    """One result of one deployment on this device; kept on disk until acknowledged."""

    TYPE: ClassVar[str] = "result"
    deployment_id: int
    seq: int
    kind: str
    data: dict[str, Any]

    def validate(self) -> None:
        _check_range("seq", self.seq, 1, 1 << 31)
        if self.kind not in RESULT_KINDS:
            raise ProtocolError(f"unknown result kind {self.kind!r}")


# server -> agent


@dataclass(frozen=True, kw_only=True)
class Welcome(Message):
    TYPE: ClassVar[str] = "welcome"
    device_id: int
    device_name: str
    heartbeat_s: float
    server_time: float

    def validate(self) -> None:
        _check_range("heartbeat_s", self.heartbeat_s, 0.05, 3600)


@dataclass(frozen=True, kw_only=True)
class Ack(Message):
    TYPE: ClassVar[str] = "ack"
    deployment_id: int
    seq: int


@dataclass(frozen=True, kw_only=True)
class Deploy(Message):
    """Download, verify and benchmark an artifact. Resent on every connect until it finishes."""

    TYPE: ClassVar[str] = "deploy"
    manifest: Manifest
    signature: str  # base64 Ed25519 signature of manifest.signing_bytes(); "" when unsigned
    artifact_url: str  # path on the server, e.g. /api/v1/agent/artifacts/7
    eval_url: str | None
    settings: BenchSettings


@dataclass(frozen=True, kw_only=True)
class Cancel(Message):
    """The deployment was cancelled: do not start it; if it is running, stop before its next
    batch size and report ``failed`` with reason ``cancelled``. Sent only to agents that know
    it (:data:`CANCEL_AGENT` on): an older agent would refuse the unknown type."""

    TYPE: ClassVar[str] = "cancel"
    deployment_id: int


# The first agent version that understands ``cancel``.
CANCEL_AGENT = (0, 6, 0)


@dataclass(frozen=True, kw_only=True)
class ErrorMessage(Message):
    """Why the server is about to close the connection."""

    TYPE: ClassVar[str] = "error"
    code: str
    message: str


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (Hello, Heartbeat, Progress, Result, Welcome, Ack, Deploy, Cancel, ErrorMessage)
}
AGENT_MESSAGES = (Hello, Heartbeat, Progress, Result)
SERVER_MESSAGES = (Welcome, Ack, Deploy, Cancel, ErrorMessage)


def accuracy_percent(correct: int, samples: int) -> float:
    """Top-1 accuracy in percent (0-100) from integer counts: the one conversion, used by the
    agent when it reports and by the server when it stores (so both give the same float)."""
    if samples < 1 or not 0 <= correct <= samples:
        raise ProtocolError(f"accuracy counts out of range: {correct} of {samples}")
    return 100.0 * correct / samples


def decode_figures(data: dict[str, Any]) -> dict[str, Any]:
    """The decode figures of a container deployment's latency result, checked.

    ``decode_ms`` and ``decode_peak_rss_mb`` are non-negative numbers, ``container_bytes`` and
    ``onnx_bytes`` positive integers (the container downloaded and the ONNX it became).

    Raises:
        ProtocolError: a figure is missing, of the wrong type or out of range.
    """
    out: dict[str, Any] = {}
    for key in DECODE_KEYS:
        value = data.get(key)
        if key.endswith("_bytes"):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ProtocolError(f"a container result needs a positive integer {key!r}")
            _check_range(key, value, 1, 1 << 40)
        else:
            if not isinstance(value, int | float) or isinstance(value, bool) or value != value:
                raise ProtocolError(f"a container result needs a number {key!r}")
            _check_range(key, float(value), 0.0, 1e9)
        out[key] = value
    return out


# Fields a detector's latency result carries besides the network-alone statistics (agent 0.7.0
# on): frames per second of the network alone and end to end (network + numpy decode + NMS),
# both from the same timed runs, and the end-to-end latency statistics in milliseconds.
DETECTION_LATENCY_KEYS = (
    "fps", "fps_e2e", "net_p50_ms", "e2e_p50_ms", "e2e_p90_ms", "e2e_mean_ms",
    "postprocess_p50_ms", "detections_per_image", "e2e_score_threshold",
)  # fmt: skip
DETECTION_LATENCY_OPTIONAL = ("e2e_p99_ms",)  # null below 100 timed runs, as p99_ms
MAX_PER_CLASS_ROWS = 200
TASK_DETECTION = "detection"
# The first agent version that benchmarks detectors end to end and scores them with mAP.
DETECTION_AGENT = (0, 7, 0)


def _number(data: dict[str, Any], key: str, lo: float, hi: float, *, what: str) -> float:
    value = data.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool) or value != value:
        raise ProtocolError(f"{what} needs a number {key!r}, got {value!r}")
    _check_range(key, float(value), lo, hi)
    return float(value)


def detection_latency_figures(data: dict[str, Any]) -> dict[str, Any]:
    """The detector figures of a latency result, checked: ``fps`` and ``fps_e2e`` positive
    frames per second (``fps_e2e`` at most ``fps``: post-processing never makes it faster,
    with 5 % slack for timing noise), the millisecond statistics non-negative, and
    ``e2e_score_threshold`` in [0, 1].

    Raises:
        ProtocolError: a figure is missing, of the wrong type or out of range.
    """
    what = "a detector's latency result"
    out: dict[str, Any] = {}
    for key in DETECTION_LATENCY_KEYS:
        if key in ("fps", "fps_e2e"):
            lo, hi = 1e-9, 1e9
        elif key == "e2e_score_threshold":
            lo, hi = 0.0, 1.0
        else:
            lo, hi = 0.0, 1e9
        out[key] = _number(data, key, lo, hi, what=what)
    for key in DETECTION_LATENCY_OPTIONAL:
        if data.get(key) is not None:
            out[key] = _number(data, key, 0.0, 1e9, what=what)
        else:
            out[key] = None
    if out["fps_e2e"] > out["fps"] * 1.05:
        raise ProtocolError(
            f"fps_e2e={out['fps_e2e']} is above fps={out['fps']}: the end-to-end rate includes "
            "the network's"
        )
    return out


def detection_accuracy_figures(
    data: dict[str, Any], *, eval_count: int | None = None
) -> dict[str, Any]:
    """A detector's accuracy result, checked: ``task`` ``"detection"``, ``map50`` and
    ``map50_95`` in [0, 1] with ``map50_95 <= map50`` (AP falls as the IoU threshold rises),
    ``samples`` a positive integer (images, at most ``eval_count`` when the server built the
    set), ``boxes`` a non-negative integer, and ``per_class`` (optional) at most
    :data:`MAX_PER_CLASS_ROWS` rows ``{"class": str, "ap50": 0-1 | null, "ap50_95": 0-1 | null,
    "boxes": int}``. A ``top1_pct`` is refused: a detector has no top-1.

    Raises:
        ProtocolError: naming the field that is missing, of the wrong type or out of range.
    """
    what = "a detector's accuracy result"
    if data.get("task") != TASK_DETECTION:
        raise ProtocolError(f"{what} needs task 'detection', got {data.get('task')!r}")
    if "top1_pct" in data or "top1" in data:
        raise ProtocolError(f"{what} carries mAP, not top-1 accuracy")
    map50 = _number(data, "map50", 0.0, 1.0, what=what)
    map50_95 = _number(data, "map50_95", 0.0, 1.0, what=what)
    if map50_95 > map50 + 1e-6:
        raise ProtocolError(f"map50_95={map50_95} is above map50={map50}")
    for key, lo in (("samples", 1), ("boxes", 0)):
        value = data.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ProtocolError(f"{what} needs an integer {key!r}")
        _check_range(key, value, lo, 1 << 31)
    if eval_count is not None and data["samples"] > eval_count:
        raise ProtocolError(
            f"an accuracy result over {data['samples']} images, but the evaluation set holds "
            f"{eval_count}"
        )
    per_class = data.get("per_class", [])
    if not isinstance(per_class, list) or len(per_class) > MAX_PER_CLASS_ROWS:
        raise ProtocolError(f"per_class must be a list of at most {MAX_PER_CLASS_ROWS} rows")
    for row in per_class:
        if not isinstance(row, dict) or not isinstance(row.get("class"), str):
            raise ProtocolError("a per_class row needs a string 'class'")
        for key in ("ap50", "ap50_95"):
            if row.get(key) is not None:
                _number(row, key, 0.0, 1.0, what="a per_class row")
        boxes = row.get("boxes", 0)
        if not isinstance(boxes, int) or isinstance(boxes, bool) or boxes < 0:
            raise ProtocolError("a per_class row's 'boxes' is a non-negative integer")
    out = dict(data)
    out["map50"], out["map50_95"], out["metric"] = map50, map50_95, "mAP@0.5"
    return out


def result_seq(settings: BenchSettings, kind: str, batch_index: int = 0) -> int:
    """The deterministic sequence number of a result: latency per batch, accuracy, terminal."""
    n = len(settings.batch_sizes)
    if kind == RESULT_LATENCY:
        return batch_index + 1
    if kind == RESULT_ACCURACY:
        return n + 1
    return n + 2


# --- encoding --------------------------------------------------------------------------------


def _to_wire(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        omit = getattr(value, "OMIT_IF_DEFAULT", ())
        return {
            f.name: _to_wire(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not (f.name in omit and getattr(value, f.name) == f.default)
        }
    return value


def encode(msg: Message) -> str:
    """The JSON text of a message (validated first, so a bad message never leaves)."""
    _validate_tree(msg)
    body = {"v": PROTOCOL_VERSION, "type": msg.TYPE, **_to_wire(msg)}
    text = json.dumps(body, separators=(",", ":"), allow_nan=False)
    if len(text.encode()) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message is over {MAX_MESSAGE_BYTES} bytes")
    return text


def _validate_tree(value: Any) -> None:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            _validate_tree(getattr(value, f.name))
        value.validate()  # type: ignore[attr-defined]


def _reject_constant(name: str) -> Any:
    raise ProtocolError(f"{name} is not valid JSON here")


def decode(text: str | bytes, *, allowed: tuple[type[Message], ...] | None = None) -> Message:
    """Parse and strictly validate one frame; ``allowed`` limits the accepted message classes."""
    if len(text) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message is over {MAX_MESSAGE_BYTES} bytes")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError("message is not UTF-8") from exc
    if len(text.encode()) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message is over {MAX_MESSAGE_BYTES} bytes")
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ProtocolError("a message is a JSON object")
    version = body.pop("v", None)
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise ProtocolError(
            f"unsupported protocol version {version!r} (this is {PROTOCOL_VERSION})"
        )
    kind = body.pop("type", None)
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message type {kind!r}")
    if allowed is not None and cls not in allowed:
        raise ProtocolError(f"message type {kind!r} is not expected here")
    msg = _build(cls, body, kind)
    _validate_tree(msg)
    return msg  # type: ignore[no-any-return]


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _build(cls: type, body: Any, where: str) -> Any:
    if not isinstance(body, dict):
        raise ProtocolError(f"{where}: expected an object")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    extra = set(body) - set(fields)
    if extra:
        raise ProtocolError(f"{where}: unknown fields {sorted(extra)}")
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in body:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ProtocolError(f"{where}: missing field {name!r}")
            continue
        values[name] = _coerce(hints[name], body[name], f"{where}.{name}")
    return cls(**values)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(inner[0], value, where)
        raise ProtocolError(f"{where}: unsupported union")  # pragma: no cover - not used
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)  # type: ignore[arg-type]
    if tp is bool:
        if not isinstance(value, bool):
            raise ProtocolError(f"{where}: expected a boolean")
        return value
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ProtocolError(f"{where}: expected an integer")
        return value
    if tp is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ProtocolError(f"{where}: expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ProtocolError(f"{where}: expected a string")
        if len(value) > MAX_STRING:
            raise ProtocolError(f"{where}: string too long")
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ProtocolError(f"{where}: expected a list")
        return [_coerce(item, v, f"{where}[]") for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ProtocolError(f"{where}: expected an object")
        return value  # free-form result data: JSON already, bounded by the frame size
    raise ProtocolError(f"{where}: unsupported type {tp!r}")  # pragma: no cover


# --- signatures ------------------------------------------------------------------------------


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise ProtocolError("not base64") from exc
