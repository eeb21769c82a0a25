"""Run a recipe: measure the baseline, run stages one at a time, checkpoint, resume, report.

After every stage the model is checkpointed and ``state.json`` is rewritten atomically, so a run
that dies (a killed worker, a crash) resumes after its last completed stage when it is started
again with the same ``out_dir`` and recipe. Everything the run writes stays inside ``out_dir``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import platform
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from compression.checkpoint import load_checkpoint, save_checkpoint, sha256_file
from compression.datasets import DatasetBundle, check_dataset_matches_model, dataset_report
from compression.detection_data import DetectionBundle
from compression.errors import Cancelled, CompressionError, ConfigError
from compression.latency import measure_latency_isolated
from compression.metrics import (
    ModelMetrics,
    letterboxed_inputs,
    measure_detection_latency_isolated,
    measure_model,
)
from compression.preprocessing import stamp_onnx
from compression.recipe import Recipe, check_recipe_for_state, recipe_hash, recipe_to_dict
from compression.registry import get_method
from compression.stage import LayerChange, ModelState, ProgressFn, StageContext, StageResult

SCHEMA_VERSION = 2
STATE_VERSION = 2
# A detection run's final artifacts: the end-to-end graph's thresholds, and the grid of test
# images with the baseline's and the final model's boxes.
E2E_SCORE_THRESHOLD = 0.25
E2E_MAX_DETECTIONS = 100
GRID_IMAGES = 8
GRID_SIDE = 192  # pixels of each image in the grid
GRID_SCORE_THRESHOLD = 0.3  # boxes drawn in the grid: at least this score
# Shares of the overall progress bar: the baseline measurement, the stages, the final export.
_BASELINE_SHARE = 0.05
_FINAL_SHARE = 0.03


class RunStateError(CompressionError):
    """``out_dir`` holds a run that cannot be resumed with this recipe."""


@dataclass
class StageReport:
    """One completed stage as the report shows it."""

    index: int
    method: str
    name: str
    config: dict[str, Any]
    metrics: ModelMetrics
    method_metrics: dict[str, float]
    layers: list[dict[str, Any]]
    history: list[dict[str, float]]
    duration_s: float
    checkpoint: str  # relative to out_dir
    artifacts: dict[str, str] = field(default_factory=dict)  # relative to out_dir
    resumed: bool = False  # completed by an earlier attempt and loaded from state.json
    extras: dict[str, Any] = field(default_factory=dict)  # e.g. weight_coding's size table

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["metrics"] = self.metrics.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageReport:
        values = dict(d)
        values["metrics"] = ModelMetrics.from_dict(d["metrics"])
        return cls(**values)


@dataclass
class RunReport:
    """The outcome of a run; ``to_dict()`` is ``report.json`` (schema version 1)."""

    recipe: dict[str, Any]
    recipe_hash: str
    baseline: ModelMetrics
    stages: list[StageReport]
    final: ModelMetrics
    final_format: str
    targets: dict[str, Any]
    artifacts: list[dict[str, Any]]
    dataset: dict[str, Any]
    model: dict[str, Any]
    environment: dict[str, Any]
    started_at: str
    finished_at: str
    duration_s: float
    resumed_from_stage: int | None = None
    schema_version: int = SCHEMA_VERSION
    preprocessing: dict[str, Any] = field(default_factory=dict)
    identity: dict[str, Any] = field(default_factory=dict)
    eval_settings: dict[str, Any] = field(default_factory=dict)
    # The last weight_coding stage's per-layer size table (docs/report-schema.md), else None.
    deep_compression: dict[str, Any] | None = None
    task: str = "classification"

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "task": self.task,
            "recipe": self.recipe,
            "recipe_hash": self.recipe_hash,
            "model": self.model,
            "dataset": self.dataset,
            "baseline": self.baseline.to_dict(),
            "stages": [s.to_dict() for s in self.stages],
            "final": {"format": self.final_format, **self.final.to_dict()},
            "targets": self.targets,
            "artifacts": self.artifacts,
            "environment": self.environment,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_s": self.duration_s,
            "resumed_from_stage": self.resumed_from_stage,
            "preprocessing": self.preprocessing,
            "identity": self.identity,
            "eval": self.eval_settings,
            "deep_compression": self.deep_compression,
        }


@dataclass(frozen=True)
class SharedBaseline:
    """A baseline measured once (:func:`measure_baseline`) for several runs of one model on one
    data set with the same eval settings: the children of a sweep. ``run_recipe(baseline=...)``
    copies its ONNX into the run and uses its numbers (latency included) instead of measuring
    the baseline again. ``identity`` must match the run's model, data and eval settings."""

    metrics: ModelMetrics
    onnx_path: Path
    identity: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": self.metrics.to_dict(),
            "onnx_path": str(self.onnx_path),
            "identity": dict(self.identity),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SharedBaseline:
        return cls(
            metrics=ModelMetrics.from_dict(d["metrics"]),
            onnx_path=Path(d["onnx_path"]),
            identity=dict(d["identity"]),
        )


# --- helpers -------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so a stage is reproducible."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is a clear error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", "CUDA was requested but no GPU is available")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ConfigError("device", f"unknown device {device!r}") from exc


def model_fingerprint(model: ModelState) -> str:
    """sha256 of a model's weights (every state-dict tensor, in name order) or its ONNX file."""
    if model.module is None:
        assert model.onnx_path is not None
        return sha256_file(model.onnx_path)
    h = hashlib.sha256()
    for name, tensor in sorted(model.module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # reshape(-1): a 0-dim tensor (BatchNorm's num_batches_tracked) cannot be viewed as bytes.
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def eval_hash(recipe: Recipe) -> str:
    """A digest of how states are measured: a change re-measures, never mixes."""
    data = recipe_to_dict(recipe)["eval"]
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def _temp_inside(out_dir: Path) -> Iterator[None]:
    """Point :mod:`tempfile` at ``out_dir/tmp`` for the run.

    Libraries we call (ONNX Runtime's quantizer among them) make temporary folders; keeping
    them inside ``out_dir`` honours "nothing is written outside out_dir" and lets a crashed
    run's leftovers be cleaned with the run.
    """
    tmp = out_dir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    previous = tempfile.tempdir
    tempfile.tempdir = str(tmp)
    try:
        yield
    finally:
        tempfile.tempdir = previous
        shutil.rmtree(tmp, ignore_errors=True)


def _layer_dict(change: LayerChange | dict[str, Any]) -> dict[str, Any]:
    return dict(change) if isinstance(change, dict) else asdict(change)


def _environment(device: torch.device) -> dict[str, Any]:
    import onnx
    import onnxruntime as ort

    from compression.latency import HardwareFacts

    env: dict[str, Any] = {
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "hardware": asdict(HardwareFacts.current()),
    }
    try:
        import torch_pruning

        env["torch_pruning"] = torch_pruning.__version__
    except ImportError:  # pragma: no cover - a declared dependency
        pass
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def _artifact(out_dir: Path, path: Path, kind: str) -> dict[str, Any]:
    return {
        "name": path.name,
        "kind": kind,
        "path": str(path.relative_to(out_dir)),
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
    }


def _model_summary(model: ModelState) -> dict[str, Any]:
    return {
        "format": model.format,
        "arch": asdict(model.arch) if model.arch else None,
        "input_shape": list(model.input_shape),
        "num_classes": model.num_classes,
        "task": model.task,
    }


# --- the run -------------------------------------------------------------------------------


class _Progress:
    """Maps a stage's own 0..1 onto the overall bar and forwards to the caller's callback."""

    def __init__(self, callback: ProgressFn | None, n_stages: int) -> None:
        self.callback = callback
        self.n = n_stages
        self.span = (1.0 - _BASELINE_SHARE - _FINAL_SHARE) / max(n_stages, 1)

    def stage_start(self, i: int) -> float:
        return _BASELINE_SHARE + i * self.span

    def emit(self, fraction: float, message: str, metrics: dict[str, Any]) -> None:
        if self.callback is not None:
            self.callback(min(max(fraction, 0.0), 1.0), message, metrics)

    def for_stage(self, i: int, method: str) -> ProgressFn:
        base = self.stage_start(i)
        # The stage's own training gets 85% of its slot; measuring the result the rest.
        train_span = self.span * 0.85

        def report(fraction: float, message: str, metrics: dict[str, Any]) -> None:
            frac = min(max(float(fraction), 0.0), 1.0)
            payload = {"stage": i, "method": method, "stage_fraction": frac * 0.85, **metrics}
            payload.setdefault("event", "stage_progress")
            self.emit(base + frac * train_span, message, payload)

        return report


def run_recipe(
    recipe: Recipe,
    model: ModelState,
    data: DatasetBundle | DetectionBundle,
    out_dir: Path | str,
    *,
    progress: ProgressFn | None = None,
    should_cancel: Callable[[], bool] | None = None,
    device: str | torch.device = "cpu",
    load_model: Callable[[str], ModelState] | None = None,
    restart: bool = False,
    shared_baseline: SharedBaseline | None = None,
) -> RunReport:
    """Run ``recipe`` on ``model`` and write checkpoints, ``final.onnx`` and ``report.json``.

    Args:
        recipe: a validated recipe (:func:`compression.recipe.parse_recipe`).
        model: the starting model; it is copied, not modified.
        data: the data set; its classes and channels must match the model. A detection model
            (``model.task == "detection"``) takes a DetectionBundle and is measured by mAP.
        out_dir: the run's folder; rerunning with the same folder and recipe resumes.
        progress: ``(fraction 0..1, message, metrics)``; metrics carry an ``event`` key
            (``baseline``, ``stage_start``, ``stage_progress``/``epoch``, ``stage_end``, ``done``).
            An exception raised here stops the run (after the last checkpoint).
        should_cancel: polled between batches; returning True raises :class:`Cancelled`.
        device: ``cpu``, ``cuda``, ``cuda:1`` or ``auto`` (training only; latency is ORT on CPU).
        load_model: resolves model references in configs (a distillation teacher).
            ``baseline`` and ``stage:N`` are resolved by the pipeline itself.
        restart: discard an existing run in ``out_dir`` made with a different recipe.
        shared_baseline: a baseline measured once for several runs (a sweep's children); it is used
            instead of measuring and timing the baseline here.

    Raises:
        StageScopeError, DatasetError, ConfigError: before anything is written.
        RunStateError: ``out_dir`` holds another recipe's run and ``restart`` is False.
        Cancelled: when ``should_cancel`` says so; completed stages stay checkpointed.
        ConfigError: ``shared_baseline`` was measured on another model, data set or eval settings.
    """
    # Validate everything before a single file is written.
    check_recipe_for_state(recipe, model)  # format, task, and each method's check_model hook
    check_dataset_matches_model(data, model)
    if model.module is not None and model.arch is None:
        raise ConfigError(
            "model", "a torch model needs its zoo architecture (ModelState.arch) to be checkpointed"
        )
    _check_detector_exports(model)
    dev = resolve_device(device)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    started_at = _now()
    digest = recipe_hash(recipe)
    identity = {
        "recipe_hash": digest,
        "model_sha256": model_fingerprint(model),
        "dataset_fingerprint": data_fingerprint(data),
        "eval_hash": eval_hash(recipe),
    }
    if shared_baseline is not None:
        for key in ("model_sha256", "dataset_fingerprint", "eval_hash"):
            if shared_baseline.identity.get(key) != identity[key]:
                raise ConfigError(
                    "baseline",
                    f"the shared baseline was measured with another {key.split('_')[0]}; "
                    "measure it again for this run",
                )
    state_path = out_dir / "state.json"
    state = _load_state(state_path, identity, restart=restart, out_dir=out_dir)
    if state is None:
        state = {
            "version": STATE_VERSION,
            "recipe_hash": digest,
            "identity": identity,
            "recipe": recipe_to_dict(recipe),
            "baseline": None,
            "baseline_onnx": None,
            "completed": [],
            "status": "running",
            "started_at": started_at,
        }
    state["recipe"] = recipe_to_dict(recipe)
    state["identity"] = identity
    bar = _Progress(progress, len(recipe.stages))

    def check_cancel() -> None:
        if should_cancel is not None and should_cancel():
            raise Cancelled("the run was cancelled")

    baseline_model = _copy_state(model)
    with _temp_inside(out_dir):
        # Baseline -------------------------------------------------------------------------
        if state["baseline"] is None and shared_baseline is not None:
            # Measured once for every run that shares it: copy its ONNX, keep its numbers.
            base_dir = out_dir / "baseline"
            shutil.rmtree(base_dir, ignore_errors=True)
            base_dir.mkdir(parents=True)
            shutil.copyfile(shared_baseline.onnx_path, base_dir / "model.onnx")
            state["baseline"] = {
                **shared_baseline.metrics.to_dict(),
                "onnx_path": str((base_dir / "model.onnx").relative_to(out_dir)),
            }
            state["baseline_onnx"] = str((base_dir / "model.onnx").relative_to(out_dir))
            state["baseline_shared"] = True
            _write_json_atomic(state_path, state)
        if state["baseline"] is None:
            bar.emit(0.0, "measuring the baseline", {"event": "baseline_start"})
            base_dir = out_dir / "baseline"
            shutil.rmtree(base_dir, ignore_errors=True)
            to_measure = baseline_model
            if model.module is None:
                # Measure (and later ship as final.onnx) a copy kept inside the run folder.
                assert model.onnx_path is not None
                base_dir.mkdir(parents=True)
                shutil.copyfile(model.onnx_path, base_dir / "model.onnx")
                to_measure = _copy_state(model)
                to_measure.onnx_path = base_dir / "model.onnx"
            baseline = _measure(
                recipe, to_measure, data, base_dir, dev, macs_hint=None, check_cancel=check_cancel
            )
            baseline.onnx_path = str((base_dir / "model.onnx").relative_to(out_dir))
            state["baseline"] = baseline.to_dict()
            state["baseline_onnx"] = str((base_dir / "model.onnx").relative_to(out_dir))
            _write_json_atomic(state_path, state)
        baseline = ModelMetrics.from_dict(state["baseline"])
        bar.emit(_BASELINE_SHARE, "baseline measured", {"event": "baseline", **_flat(baseline)})

        # Resume point --------------------------------------------------------------------
        completed: list[dict[str, Any]] = state["completed"]
        resumed_from = len(completed) if completed else None
        if state.pop("remeasure", False):
            # The eval settings changed since these stages ran: their checkpoints stand, their
            # numbers are measured again the new way (never mixed with the old ones).
            prev_macs = baseline.macs
            for record in completed:
                check_cancel()
                bar.emit(
                    _BASELINE_SHARE,
                    f"re-measuring stage {record['index'] + 1} with the new eval settings",
                    {"event": "remeasure", "stage": record["index"]},
                )
                again = load_checkpoint(out_dir / record["checkpoint"])
                mdir = out_dir / "stages" / f"{record['index']:02d}_{record['method']}" / "measure"
                shutil.rmtree(mdir, ignore_errors=True)
                m = _measure(
                    recipe, again, data, mdir, dev, macs_hint=prev_macs, check_cancel=check_cancel
                )
                m.onnx_path = _rel(out_dir, Path(m.onnx_path or ""))
                if again.module is not None:
                    record.setdefault("artifacts", {})["onnx_fp32"] = m.onnx_path
                record["metrics"] = m.to_dict()
                prev_macs = m.macs
            _write_json_atomic(state_path, state)
        if completed:
            current = load_checkpoint(out_dir / completed[-1]["checkpoint"])
        else:
            current = _copy_state(model)
        reports = [StageReport.from_dict({**c, "resumed": True}) for c in completed]
        last_macs = reports[-1].metrics.macs if reports else baseline.macs

        def resolve(ref: str) -> ModelState:
            if ref in ("baseline", "input"):
                return _copy_state(baseline_model)
            if ref.startswith("stage:"):
                try:
                    k = int(ref.split(":", 1)[1])
                    record = state["completed"][k]
                except (ValueError, IndexError):
                    raise ConfigError(
                        "teacher", f"{ref!r} does not name a completed earlier stage"
                    ) from None
                return load_checkpoint(out_dir / record["checkpoint"])
            if load_model is None:
                raise ConfigError("teacher", f"cannot resolve model reference {ref!r} here")
            return load_model(ref)

        # Stages --------------------------------------------------------------------------
        for i, stage in enumerate(recipe.stages):
            if i < len(completed):
                continue
            check_cancel()
            spec = get_method(stage.method)
            work_dir = out_dir / "stages" / f"{i:02d}_{stage.method}"
            shutil.rmtree(work_dir, ignore_errors=True)  # leftovers of a crashed attempt
            work_dir.mkdir(parents=True)
            seed_everything(recipe.seed + i)
            label = f"stage {i + 1}/{len(recipe.stages)} {stage.name}"
            bar.emit(
                bar.stage_start(i),
                f"{label}: started",
                {"event": "stage_start", "stage": i, "method": stage.method, "stage_fraction": 0.0},
            )
            ctx = StageContext(
                model=current,
                # a DetectionBundle for a detector (methods declare the tasks they take)
                data=cast(Any, data),
                device=dev,
                work_dir=work_dir,
                seed=recipe.seed + i,
                report=bar.for_stage(i, stage.method),
                check_cancel=check_cancel,
                load_model=resolve,
            )
            t0 = time.monotonic()
            result: StageResult = spec.run(ctx, stage.config)
            duration = time.monotonic() - t0
            check_cancel()
            current = result.model
            if current.module is not None:
                current.module.to("cpu").eval()

            bar.emit(
                bar.stage_start(i) + bar.span * 0.85,
                f"{label}: measuring",
                {
                    "event": "stage_measure",
                    "stage": i,
                    "method": stage.method,
                    "stage_fraction": 0.85,
                },
            )
            stem = out_dir / "checkpoints" / f"stage_{i:02d}_{stage.method}"
            ckpt = save_checkpoint(current, stem)
            if current.module is None:
                # Keep pointing at the checkpoint copy: the stage folder is scratch space.
                current.onnx_path = ckpt
            metrics = _measure(
                recipe,
                current,
                data,
                work_dir / "measure",
                dev,
                macs_hint=last_macs,
                check_cancel=check_cancel,
            )
            metrics.onnx_path = _rel(out_dir, Path(metrics.onnx_path or ""))
            last_macs = metrics.macs
            artifacts = {
                k: str(Path(v).resolve().relative_to(out_dir.resolve()))
                for k, v in result.artifacts.items()
                if Path(v).exists() and Path(v).resolve().is_relative_to(out_dir.resolve())
            }
            if current.module is not None:
                artifacts["onnx_fp32"] = str(
                    (work_dir / "measure" / "model.onnx").relative_to(out_dir)
                )
            report = StageReport(
                index=i,
                method=stage.method,
                name=stage.name,
                config=recipe_to_dict(recipe)["stages"][i]["config"],
                metrics=metrics,
                method_metrics={k: float(v) for k, v in result.metrics.items()},
                layers=[_layer_dict(c) for c in result.layers],
                history=[dict(h) for h in result.history],
                duration_s=duration,
                checkpoint=str(ckpt.relative_to(out_dir)),
                artifacts=artifacts,
                extras=dict(result.extras),
            )
            completed.append({k: v for k, v in report.to_dict().items() if k != "resumed"})
            _write_json_atomic(state_path, state)
            reports.append(report)
            bar.emit(
                bar.stage_start(i + 1),
                f"{label}: done",
                {
                    "event": "stage_end",
                    "stage": i,
                    "stage_fraction": 1.0,
                    "method": stage.method,
                    "duration_s": duration,
                    **_flat(metrics),
                },
            )

        # Latency: every state side by side --------------------------------------------------
        check_cancel()
        if recipe.eval.latency_runs > 0:
            # A shared baseline was timed once, with the same eval settings; only this run's
            # states are timed here.
            shared = bool(state.get("baseline_shared")) and baseline.latency is not None
            states = ([] if shared else [baseline]) + [r.metrics for r in reports]
            bar.emit(
                1.0 - _FINAL_SHARE,
                f"timing {len(states)} models side by side "
                f"({recipe.eval.rounds} interleaved rounds of {recipe.eval.latency_runs} runs)",
                {"event": "latency_start"},
            )
            results = measure_latency_isolated(
                [out_dir / str(m.onnx_path) for m in states],
                input_shapes=(recipe.eval.batch_size, *model.input_shape),
                threads=recipe.eval.threads,
                warmup=recipe.eval.warmup,
                runs=recipe.eval.latency_runs,
                rounds=recipe.eval.rounds,
                should_cancel=(lambda: should_cancel()) if should_cancel is not None else None,
            )
            for m, lat in zip(states, results, strict=True):
                m.latency = lat
                m.peak_mem_mb = lat.peak_rss_mb
            if isinstance(data, DetectionBundle):
                # End to end: the same states, network + numpy decode + NMS, interleaved too.
                check_cancel()
                e2e = measure_detection_latency_isolated(
                    [out_dir / str(m.onnx_path) for m in states],
                    letterboxed_inputs(data.test, model.input_shape[1], recipe.eval.batch_size),
                    threads=recipe.eval.threads,
                    warmup=recipe.eval.warmup,
                    runs=recipe.eval.latency_runs,
                    rounds=recipe.eval.rounds,
                    should_cancel=(lambda: should_cancel()) if should_cancel is not None else None,
                )
                for m, lat in zip(states, e2e, strict=True):
                    m.latency_e2e = lat
        check_cancel()

        # Final ---------------------------------------------------------------------------
        final_metrics = reports[-1].metrics
        final_artifacts = _final_artifacts(out_dir, state, recipe, current)
        pre_dict: dict[str, Any] = {}
        if isinstance(data, DatasetBundle):
            pre = data.preprocessing
            pre_dict = pre.to_dict()
            for art in final_artifacts:
                if art["kind"].startswith("onnx"):
                    stamp_onnx(out_dir / art["path"], pre)
                    art["bytes"] = (out_dir / art["path"]).stat().st_size
                    art["sha256"] = sha256_file(out_dir / art["path"])
        else:
            bar.emit(1.0 - _FINAL_SHARE / 2, "drawing the detections", {"event": "final"})
            final_artifacts[1:1] = _detection_artifacts(
                out_dir, state, data, final_artifacts, check_cancel
            )
        targets = _verdict(recipe, baseline, reports)
        run_report = RunReport(
            recipe=recipe_to_dict(recipe),
            recipe_hash=digest,
            baseline=baseline,
            stages=reports,
            final=final_metrics,
            final_format=current.format,
            targets=targets,
            artifacts=final_artifacts,
            dataset=_dataset_summary(data, model),
            model=_model_summary(model),
            environment=_environment(dev),
            started_at=state.get("started_at", started_at),
            finished_at=_now(),
            duration_s=time.monotonic() - started,
            resumed_from_stage=resumed_from,
            preprocessing=pre_dict,
            identity=identity,
            eval_settings=recipe_to_dict(recipe)["eval"],
            deep_compression=_deep_compression(reports),
            task=model.task,
        )
        _write_json_atomic(out_dir / "report.json", run_report.to_dict())
        state["status"] = "done"
        _write_json_atomic(state_path, state)
    bar.emit(1.0, "done", {"event": "done", **_flat(final_metrics), "targets_met": targets["met"]})
    return run_report


def measure_baseline(
    recipe: Recipe,
    model: ModelState,
    data: DatasetBundle | DetectionBundle,
    out_dir: Path | str,
    *,
    progress: ProgressFn | None = None,
    should_cancel: Callable[[], bool] | None = None,
    device: str | torch.device = "cpu",
) -> SharedBaseline:
    """Measure ``model`` once as the baseline of several runs of ``recipe``'s eval settings:
    test and val accuracy, size, MACs and (unless the recipe times nothing) its latency.

    Writes ``out_dir/model.onnx`` and ``out_dir/baseline.json``; a second call with the same
    model, data and eval settings returns the stored measurement.

    Raises:
        StageScopeError, DatasetError, ConfigError: the recipe does not fit the model or data.
        Cancelled: when ``should_cancel`` says so.
    """
    check_recipe_for_state(recipe, model)
    check_dataset_matches_model(data, model)
    _check_detector_exports(model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    identity = {
        "model_sha256": model_fingerprint(model),
        "dataset_fingerprint": data_fingerprint(data),
        "eval_hash": eval_hash(recipe),
    }
    stored = out_dir / "baseline.json"
    if stored.is_file():
        try:
            previous = SharedBaseline.from_dict(json.loads(stored.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError):
            previous = None
        if previous is not None and previous.identity == identity and previous.onnx_path.is_file():
            return previous

    def check_cancel() -> None:
        if should_cancel is not None and should_cancel():
            raise Cancelled("the run was cancelled")

    def emit(fraction: float, message: str, metrics: dict[str, Any]) -> None:
        if progress is not None:
            progress(fraction, message, metrics)

    emit(0.0, "measuring the baseline", {"event": "baseline_start"})
    work = out_dir / "measure"
    shutil.rmtree(work, ignore_errors=True)
    to_measure = _copy_state(model)
    if model.module is None:
        assert model.onnx_path is not None
        work.mkdir(parents=True)
        shutil.copyfile(model.onnx_path, work / "model.onnx")
        to_measure.onnx_path = work / "model.onnx"
    with _temp_inside(out_dir):
        metrics = _measure(
            recipe, to_measure, data, work, resolve_device(device), macs_hint=None,
            check_cancel=check_cancel,
        )  # fmt: skip
        check_cancel()
        onnx_path = out_dir / "model.onnx"
        shutil.copyfile(work / "model.onnx", onnx_path)
        if recipe.eval.latency_runs > 0:
            emit(0.7, "timing the baseline", {"event": "latency_start"})
            (metrics.latency,) = measure_latency_isolated(
                [onnx_path],
                input_shapes=(recipe.eval.batch_size, *model.input_shape),
                threads=recipe.eval.threads,
                warmup=recipe.eval.warmup,
                runs=recipe.eval.latency_runs,
                rounds=recipe.eval.rounds,
                should_cancel=should_cancel,
            )
            metrics.peak_mem_mb = metrics.latency.peak_rss_mb
            if isinstance(data, DetectionBundle):
                (metrics.latency_e2e,) = measure_detection_latency_isolated(
                    [onnx_path],
                    letterboxed_inputs(data.test, model.input_shape[1], recipe.eval.batch_size),
                    threads=recipe.eval.threads,
                    warmup=recipe.eval.warmup,
                    runs=recipe.eval.latency_runs,
                    rounds=recipe.eval.rounds,
                    should_cancel=should_cancel,
                )
    metrics.onnx_path = "model.onnx"
    shared = SharedBaseline(metrics=metrics, onnx_path=onnx_path, identity=identity)
    _write_json_atomic(stored, shared.to_dict())
    emit(1.0, "baseline measured", {"event": "baseline", **_flat(metrics)})
    return shared


def _verdict(recipe: Recipe, baseline: ModelMetrics, reports: list[StageReport]) -> dict[str, Any]:
    """Compare the final model with the recipe's reference (the baseline or stage N)."""
    ref_name = recipe.targets.reference
    ref = baseline if ref_name == "baseline" else reports[int(ref_name.split(":", 1)[1])].metrics
    final = reports[-1].metrics
    drop = ref.accuracy - final.accuracy
    limit = recipe.targets.max_accuracy_drop
    speedup = None
    if ref.latency and final.latency and final.latency.p50_ms > 0:
        speedup = ref.latency.p50_ms / final.latency.p50_ms
    return {
        "reference": ref_name,
        "eval_split": "test",
        "reference_accuracy": ref.accuracy,
        "max_accuracy_drop": limit,
        "accuracy_drop": drop,
        "met": None if limit is None else bool(drop <= limit + 1e-9),
        "target_device": recipe.targets.target_device,
        "size_ratio": ref.onnx_bytes / final.onnx_bytes if final.onnx_bytes else None,
        "zip_size_ratio": ref.onnx_zip_bytes / final.onnx_zip_bytes
        if final.onnx_zip_bytes
        else None,
        "mac_ratio": ref.macs / final.macs if ref.macs and final.macs else None,
        "latency_speedup": speedup,
    }


def _deep_compression(reports: list[StageReport]) -> dict[str, Any] | None:
    """The last weight_coding stage's size table, with the stage it came from."""
    for r in reversed(reports):
        table = r.extras.get("deep_compression")
        if table:
            return {"stage": r.index, **table}
    return None


def _check_detector_exports(model: ModelState) -> None:
    """Refuse, before anything is written, a torch detector the pipeline cannot export (every
    state is measured and shipped as ONNX)."""
    if model.task != "detection" or model.module is None:
        return
    from compression.metrics import exportable_detector
    from compression.onnx_export import ExportError

    try:
        exportable_detector(model.module, model.input_shape[1])
    except ExportError as exc:
        raise ConfigError("model", str(exc)) from None


def _copy_state(model: ModelState) -> ModelState:
    module = copy.deepcopy(model.module).to("cpu") if model.module is not None else None
    return ModelState(
        input_shape=model.input_shape,
        num_classes=model.num_classes,
        task=model.task,
        module=module,
        onnx_path=model.onnx_path,
        arch=model.arch,
    )


def _measure(
    recipe: Recipe,
    model: ModelState,
    data: DatasetBundle | DetectionBundle,
    work_dir: Path,
    device: torch.device,
    *,
    macs_hint: int | None,
    check_cancel: Callable[[], None] | None = None,
) -> ModelMetrics:
    """Accuracy (test and val; a detector's mAP), size and MACs; latency comes later, all
    states interleaved."""
    return measure_model(
        model,
        data,
        work_dir,
        latency_runs=0,
        device=device,
        macs_hint=macs_hint,
        check_cancel=check_cancel,
    )


def _rel(out_dir: Path, path: Path) -> str:
    return str(path.resolve().relative_to(out_dir.resolve()))


def _flat(m: ModelMetrics) -> dict[str, Any]:
    """The few numbers a progress line shows."""
    return {
        "task": m.task,
        "metric": m.metric,
        "accuracy": m.accuracy,
        "val_accuracy": m.val_accuracy,
        "map50_95": m.detection.get("map50_95") if m.detection else None,
        "params": m.params,
        "nonzero_params": m.nonzero_params,
        "macs": m.macs,
        "onnx_bytes": m.onnx_bytes,
        "onnx_zip_bytes": m.onnx_zip_bytes,
        "p50_ms": m.latency.p50_ms if m.latency else None,
        "p50_e2e_ms": m.latency_e2e.p50_ms if m.latency_e2e else None,
    }


def data_fingerprint(data: DatasetBundle | DetectionBundle) -> str:
    """What identifies the data a run measures on: a classification bundle's own fingerprint,
    or for a detection set the sha256 of its name, classes and every split's images, boxes and
    labels (deterministic, so a resumed run on the same set matches)."""
    if isinstance(data, DatasetBundle):
        return data.fingerprint()
    h = hashlib.sha256()
    h.update(json.dumps([data.name, list(data.classes)]).encode())
    for split in ("train", "val", "test"):
        samples = data.split(split)
        h.update(f"|{split}:{len(samples)}|".encode())
        for s in samples:
            h.update(f"{s.name}|{s.image.shape}|".encode())
            h.update(np.ascontiguousarray(s.image).tobytes())
            h.update(np.asarray(s.boxes, dtype=np.float32).tobytes())
            h.update(np.asarray(s.labels, dtype=np.int64).tobytes())
    return "det-" + h.hexdigest()


def _dataset_summary(
    data: DatasetBundle | DetectionBundle, model: ModelState | None = None
) -> dict[str, Any]:
    if isinstance(data, DetectionBundle):
        det = data.report
        return {
            "task": "detection",
            "name": data.name,
            "format": data.format,
            "classes": list(data.classes),
            "input_shape": list(model.input_shape) if model is not None else None,
            "totals": {k: len(data.split(k)) for k in ("train", "val", "test")},
            "boxes": {
                k: int(sum(len(s.boxes) for s in data.split(k))) for k in ("train", "val", "test")
            },
            "negatives": det.negatives,
            "corrupt_files": int(det.problem_counts.get("corrupt_image", 0)),
            "split_seed": data.split_seed,
            "split_sources": dict(det.split_sources),
            "fingerprint": data_fingerprint(data),
            "reported_split": "test",
        }
    rep = dataset_report(data).to_dict()
    return {
        "name": rep["name"],
        "classes": rep["classes"],
        "input_shape": rep["input_shape"],
        "totals": rep["totals"],
        "corrupt_files": len(rep["corrupt"]),
        "split_seed": rep["split_seed"],
        "split_sources": rep["split_sources"],
        "fingerprint": data.fingerprint(),
        "reported_split": "test",
    }


def _load_state(
    path: Path, identity: dict[str, Any], *, restart: bool, out_dir: Path
) -> dict[str, Any] | None:
    """The state of an earlier attempt that this run may resume, or None to start afresh.

    Resuming needs the same recipe (seed and stages), the same starting model (sha256) and the
    same data (fingerprint). Changed eval settings keep the checkpoints but re-measure every
    state (``remeasure``), so old and new numbers never mix.
    """
    if not path.exists():
        return None
    try:
        state: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        if not restart:
            raise RunStateError(
                f"{path} is unreadable ({exc}); use a new output folder or restart"
            ) from None
        state = {}
    old = state.get("identity") or {}
    same = state.get("version") == STATE_VERSION and all(
        old.get(k) == identity[k] for k in ("recipe_hash", "model_sha256", "dataset_fingerprint")
    )
    if same:
        # Checkpoints must still be there; otherwise resume from the last one that is.
        good = []
        for record in state.get("completed", []):
            if not (out_dir / record["checkpoint"]).exists():
                break
            good.append(record)
        state["completed"] = good
        if old.get("eval_hash") != identity["eval_hash"]:
            state["baseline"] = None
            state["remeasure"] = True
        return state
    if not restart:
        if (
            state.get("version") == STATE_VERSION
            and old.get("recipe_hash") == identity["recipe_hash"]
        ):
            what = (
                "a different starting model"
                if old.get("model_sha256") != identity["model_sha256"]
                else "different data"
            )
            raise RunStateError(
                f"{out_dir} holds a run of this recipe on {what}; use a new output folder, "
                "or restart to discard it"
            )
        raise RunStateError(
            f"{out_dir} holds a run of a different recipe; use a new output folder, "
            "or restart to discard it"
        )
    for name in ("checkpoints", "stages", "baseline", "tmp"):
        shutil.rmtree(out_dir / name, ignore_errors=True)
    for name in (
        "state.json",
        "report.json",
        "final.onnx",
        "final.int8.onnx",
        "final.compressed.onnx",
        "final.esdc",
        "final.e2e.onnx",
        "detections_grid.png",
    ):
        (out_dir / name).unlink(missing_ok=True)
    return None


def _final_artifacts(
    out_dir: Path, state: dict[str, Any], recipe: Recipe, current: ModelState
) -> list[dict[str, Any]]:
    """Write ``final.onnx`` (fp32), after quantization ``final.int8.onnx``, after weight coding
    ``final.esdc`` (the compressed container); describe all."""
    completed = state["completed"]
    # The newest fp32 ONNX export: the last torch stage's, else the baseline's.
    fp32_source: Path | None = None
    for record in reversed(completed):
        rel = record.get("artifacts", {}).get("onnx_fp32")
        if rel:
            fp32_source = out_dir / rel
            break
    if fp32_source is None and state.get("baseline_onnx"):
        fp32_source = out_dir / state["baseline_onnx"]
    final_paths: list[tuple[Path, str]] = []
    if current.module is None:
        assert current.onnx_path is not None
        last_onnx_stage = next(
            (r["method"] for r in reversed(completed) if r["metrics"].get("format") == "onnx"), ""
        )
        name = (
            "final.int8.onnx"
            if ("int8" in last_onnx_stage or "quant" in last_onnx_stage)
            else "final.compressed.onnx"
        )
        target = out_dir / name
        shutil.copyfile(current.onnx_path, target)
        final_paths.append(
            (target, "onnx_int8" if name == "final.int8.onnx" else "onnx_compressed")
        )
    if fp32_source is not None and fp32_source.exists():
        target = out_dir / "final.onnx"
        shutil.copyfile(fp32_source, target)
        final_paths.insert(0, (target, "onnx_fp32"))
    # The newest compressed container (weight_coding), the file a device decodes.
    for record in reversed(completed):
        rel = record.get("artifacts", {}).get("container")
        if rel and (out_dir / rel).exists():
            target = out_dir / "final.esdc"
            shutil.copyfile(out_dir / rel, target)
            final_paths.append((target, "container"))
            break
    arts = [_artifact(out_dir, p, kind) for p, kind in final_paths]
    for record in completed:
        ckpt = out_dir / record["checkpoint"]
        arts.append(_artifact(out_dir, ckpt, "checkpoint"))
    return arts


# --- a detector's final artifacts ------------------------------------------------------------


def _detection_artifacts(
    out_dir: Path,
    state: dict[str, Any],
    data: DetectionBundle,
    final_artifacts: list[dict[str, Any]],
    check_cancel: Callable[[], None],
) -> list[dict[str, Any]]:
    """The end-to-end ONNX of the final model (decode and ``NonMaxSuppression`` in the graph,
    score threshold :data:`E2E_SCORE_THRESHOLD`, at most :data:`E2E_MAX_DETECTIONS` boxes per
    image) and the grid of test images with the baseline's and the final model's boxes.

    Both models run as ONNX through ONNX Runtime and the shared numpy post-processing, the
    final one in its final format (int8 after ``ptq_int8``)."""
    import dataclasses

    from compression.detection_export import export_end_to_end, read_detector_meta
    from compression.evaluation import detect_onnx
    from compression.onnx_export import ExportError

    by_kind = {a["kind"]: out_dir / a["path"] for a in final_artifacts}
    final_raw = (
        by_kind.get("onnx_int8") or by_kind.get("onnx_compressed") or by_kind.get("onnx_fp32")
    )
    if final_raw is None:
        raise ExportError("the run left no final ONNX detector to draw and export")
    meta = read_detector_meta(final_raw)
    if meta is None:
        raise ExportError(f"{final_raw.name} carries no detection metadata")
    out: list[dict[str, Any]] = []
    check_cancel()
    e2e = export_end_to_end(
        final_raw,
        out_dir / "final.e2e.onnx",
        meta=dataclasses.replace(
            meta, score_threshold=E2E_SCORE_THRESHOLD, max_detections=E2E_MAX_DETECTIONS
        ),
    )
    out.append(_artifact(out_dir, e2e, "onnx_e2e"))
    samples = data.test[:GRID_IMAGES]
    baseline_onnx = out_dir / str(state.get("baseline_onnx") or "")
    if samples and baseline_onnx.is_file():
        check_cancel()
        before = detect_onnx(baseline_onnx, samples, score_threshold=GRID_SCORE_THRESHOLD)
        after = detect_onnx(final_raw, samples, score_threshold=GRID_SCORE_THRESHOLD)
        grid = draw_detections_grid(samples, data.classes, [("baseline", before), ("final", after)])
        path = out_dir / "detections_grid.png"
        tmp = path.with_name(path.name + ".tmp")
        grid.save(tmp, format="PNG")
        os.replace(tmp, path)
        out.append(_artifact(out_dir, path, "detections_grid"))
    return out


def draw_detections_grid(
    samples: Any,
    classes: list[str],
    rows: list[tuple[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]],
    *,
    side: int = GRID_SIDE,
) -> Any:
    """A PIL image: one row per ``(title, detections)`` (detections per sample, boxes in image
    pixels), one column per sample. Every cell shows the image scaled so its longer side is
    ``side``, its ground-truth boxes as thin white outlines and the detections in their class's
    colour with the class name and score."""
    from PIL import Image, ImageDraw

    from compression.detection_data import BOX_COLORS

    gap, title_h = 4, 14
    n = len(samples)
    width = gap + n * (side + gap)
    height = gap + len(rows) * (title_h + side + gap)
    canvas = Image.new("RGB", (width, height), (32, 32, 32))
    draw = ImageDraw.Draw(canvas)
    for r, (title, found) in enumerate(rows):
        top = gap + r * (title_h + side + gap)
        draw.text(
            (gap, top),
            f"{title}: boxes scoring >= {GRID_SCORE_THRESHOLD:g} (white: ground truth)",
            fill=(255, 255, 255),
        )
        for c, (sample, (boxes, scores, labels)) in enumerate(zip(samples, found, strict=True)):
            left = gap + c * (side + gap)
            cell_top = top + title_h
            scale = side / max(sample.width, sample.height)
            size = (max(1, round(sample.width * scale)), max(1, round(sample.height * scale)))
            image = Image.fromarray(sample.image).resize(size, Image.Resampling.BILINEAR)
            canvas.paste(image, (left, cell_top))

            for box in np.asarray(sample.boxes).reshape(-1, 4).tolist():
                draw.rectangle(_grid_box(box, scale, left, cell_top), outline=(255, 255, 255))
            for box, score, label in zip(
                np.asarray(boxes).reshape(-1, 4).tolist(),
                np.asarray(scores).reshape(-1).tolist(),
                np.asarray(labels).reshape(-1).tolist(),
                strict=True,
            ):
                color = BOX_COLORS[int(label) % len(BOX_COLORS)]
                x1, y1, x2, y2 = _grid_box(box, scale, left, cell_top)
                draw.rectangle((x1, y1, x2, y2), outline=color, width=2)
                name = classes[int(label)] if 0 <= int(label) < len(classes) else str(label)
                text = f"{name} {score:.2f}"
                ty = y1 - 11 if y1 - 11 >= cell_top else y2 + 1
                draw.rectangle(draw.textbbox((x1, ty), text), fill=(0, 0, 0))
                draw.text((x1, ty), text, fill=color)
    return canvas


def _grid_box(
    box: list[float], scale: float, left: float, top: float
) -> tuple[float, float, float, float]:
    """An image-pixel box as a rectangle in a grid cell whose image starts at (left, top)."""
    x1, y1, x2, y2 = (v * scale for v in box)
    return (left + x1, top + y1, left + max(x1, x2 - 1), top + max(y1, y2 - 1))
