"""Compression benchmark with decision rules: channel pruning, int8 PTQ, KD, job overhead.

Every stage runs through ``parse_recipe`` + ``run_recipe``, exactly as a user's job does; no
library code is patched. Accuracy is the pipeline's own figure on each data set's fixed **test**
split; MACs come from :func:`compression.macs.count_macs`; latency comes from one interleaved
call of :func:`compression.latency.measure_latency_isolated` (torch-free child processes, ONNX
Runtime on the CPU, batch 1, 2 threads, median and IQR across rounds). Each figure is a mean
± sd over seeds, and each decision rule (written in the doc before the numbers) is evaluated
on those numbers, so any of them can come out FAIL.

    .venv/bin/python benchmarks/compression_bench.py           # every section, writes the doc (~60 min on 2 idle cores)
    .venv/bin/python benchmarks/compression_bench.py --sections curve,kd   # re-measure two sections
    .venv/bin/python benchmarks/compression_bench.py --quick   # smoke run (~3 min idle), doc untouched
    .venv/bin/python benchmarks/compression_bench.py --render-only   # doc from benchmarks/results/compression.json

Raw numbers are kept in ``benchmarks/results/compression.json`` (in git), one entry per section
with its own machine load and wall time, so a section can be re-measured alone.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort
import torch
import torch_pruning as tp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._docs import replace_section  # noqa: E402
from benchmarks._stats import mean, sd, verdict  # noqa: E402
from compression.checkpoint import load_checkpoint  # noqa: E402
from compression.datasets import DatasetBundle, load_digits, load_mnist  # noqa: E402
from compression.latency import LatencyResult, measure_latency_isolated  # noqa: E402
from compression.macs import count_macs  # noqa: E402
from compression.methods._common import classifier_layer  # noqa: E402
from compression.pipeline import RunReport, run_recipe, seed_everything  # noqa: E402
from compression.recipe import parse_recipe  # noqa: E402
from compression.registry import get_method  # noqa: E402
from compression.stage import ArchSpec, ModelState, StageContext  # noqa: E402
from compression.zoo import create_model  # noqa: E402

SECTION = "compression"
HEADING = "## Compression quality (mnist and digits, CPU, decision rules)"
PRUNE_ARCH = "resnet20"  # the accuracy-vs-MACs curve (cheap enough for 16 points x 3 seeds)
VGG_ARCH = "vgg11_bn"  # the headline pruning and int8 PTQ (a compute-bound net)
STUDENT_ARCH = "lenet5"
KD_TEACHER_ARCH = "resnet20"
KD_CONFIG: dict[str, Any] = {}  # distillation's own defaults
# EdgeSlim's curve variants: name -> channel_pruning settings on top of the shared ones
# (target, round_to 1, lr, batch). Every variant gets the same training epochs after the
# starting point; bn_scale spends `sparsity_epochs` of them on sparsity training.
CURVE_VARIANTS: dict[str, dict[str, Any]] = {
    "bn_scale": {"importance": "bn_scale"},
    "l1": {"importance": "l1"},
    "l2": {"importance": "l2"},
    # seed 003's dynamic importance re-weighs |BN gamma| against channel independence between
    # steps, so it needs at least two
    "dynamic": {"importance": "dynamic", "iterative_steps": 2},
    # fine-tuning against the unpruned model's soft targets (recovery distillation)
    "l2_kd": {"importance": "l2", "recovery_distillation": 0.7},
}
TP_NAME = "plain_tp"
LR = 0.02  # every pruning, fine-tuning and KD phase
BASE_LR = 0.05  # training the starting points from scratch
BATCH = 64
THREADS = 2

# The rules, fixed before any number is seen; render() states them before the tables.
HEADLINE_MAC_TARGET = 3.0
HEADLINE_MAX_DROP = 0.5
HEADLINE_SPEEDUP_SHARE = 0.75
PTQ_MIN_SIZE_RATIO = 3.8
PTQ_MAX_DROP = 0.5
PTQ_MIN_SPEEDUP = 1.5


@dataclass(frozen=True)
class Budget:
    """Seeds, epochs and timing settings of one run (``--quick`` shrinks everything)."""

    name: str
    seeds: tuple[int, ...]
    base_epochs: int  # resnet20 from scratch (curve starting point, KD teacher)
    sparsity_epochs: int  # curve, bn_scale only; l1/l2/plain TP fine-tune these epochs instead
    finetune_epochs: int  # curve, every variant
    curve_targets: tuple[float, ...]
    digits_targets: tuple[float, ...]
    vgg_epochs: int  # vgg11_bn from scratch (headline pruning, PTQ)
    headline_sparsity_epochs: int
    headline_finetune_epochs: int
    kd_epochs: int
    kd_teacher_epochs: int
    latency_rounds: int
    latency_runs: int
    overhead_repeats: int
    subset: tuple[int, int, int] | None = None  # train/val/test images (smoke runs only)

    @property
    def curve_budget(self) -> int:
        """Training epochs after the starting point, equal for every curve variant."""
        return self.sparsity_epochs + self.finetune_epochs


FULL = Budget(
    "full",
    seeds=(0, 1, 2),
    base_epochs=10,  # the same resnet20 budget as the KD teacher: a converged starting point
    sparsity_epochs=1,
    finetune_epochs=1,
    curve_targets=(2.0, 4.0, 8.0, 16.0),
    digits_targets=(4.0, 16.0),
    vgg_epochs=2,
    headline_sparsity_epochs=1,
    headline_finetune_epochs=2,
    kd_epochs=5,
    kd_teacher_epochs=10,
    latency_rounds=7,
    latency_runs=50,
    overhead_repeats=3,
)
QUICK = Budget(
    "quick",
    seeds=(0, 1),
    base_epochs=1,
    sparsity_epochs=1,
    finetune_epochs=1,
    curve_targets=(2.0, 8.0),
    digits_targets=(4.0,),
    vgg_epochs=1,
    headline_sparsity_epochs=1,
    headline_finetune_epochs=1,
    kd_epochs=1,
    kd_teacher_epochs=1,
    latency_rounds=2,
    latency_runs=10,
    overhead_repeats=1,
    subset=(256, 128, 200),
)


# --- small helpers ---------------------------------------------------------------------------

_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{(time.monotonic() - _T0) / 60:5.1f} min] {msg}", flush=True)


def pm(xs: Sequence[float], digits: int = 2, unit: str = "") -> str:
    s = sd(xs)
    spread = "—" if math.isnan(s) else f"{s:.{digits}f}"
    return f"{mean(xs):.{digits}f} ± {spread}{unit}"


def state_for(module: torch.nn.Module, data: DatasetBundle, arch: str) -> ModelState:
    c = data.input_shape[0]
    return ModelState(
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        module=module,
        arch=ArchSpec(arch, num_classes=data.num_classes, in_channels=c),
    )


def fresh(arch: str, data: DatasetBundle, seed: int) -> ModelState:
    torch.manual_seed(seed)
    module = create_model(arch, num_classes=data.num_classes, in_channels=data.input_shape[0])
    return state_for(module, data, arch)


def run(
    recipe: dict[str, Any],
    model: ModelState,
    data: DatasetBundle,
    out: Path,
    *,
    load_model: Callable[[str], ModelState] | None = None,
    eval_settings: dict[str, Any] | None = None,
) -> tuple[RunReport, ModelState | None]:
    """One job through the shipped path; returns the report and the final torch state (if any).

    Latency is off here (``latency_runs: 0``) unless ``eval_settings`` says otherwise: the
    comparisons are timed together later, in one interleaved call.
    """
    full = {"eval": eval_settings or {"latency_runs": 0, "threads": THREADS}, **recipe}
    report = run_recipe(
        parse_recipe(full), model, data, out, device="cpu", load_model=load_model, restart=True
    )
    if report.final_format != "torch":
        return report, None
    return report, load_checkpoint(out / report.stages[-1].checkpoint)


def outcome(report: RunReport) -> dict[str, Any]:
    """The numbers a curve point keeps: test/val accuracy and MACs from the pipeline's report."""
    base, final = report.baseline, report.final
    assert base.macs and final.macs
    return {
        "test": final.accuracy,
        "val": final.val_accuracy,
        "base_test": base.accuracy,
        "macs": final.macs,
        "base_macs": base.macs,
        "mac_ratio": base.macs / final.macs,
    }


# --- the plain Torch-Pruning script ------------------------------------------------------------


def plain_tp_prune(module: torch.nn.Module, data: DatasetBundle, target: float) -> torch.nn.Module:
    """Torch-Pruning as its README uses it: MetaPruner, global L2 magnitude, stepped to a target.

    ``MagnitudeImportance(p=2)`` with TP's defaults (mean group reduction and normalisation),
    ``global_pruning=True``, the classifier ignored, no rounding; one step removes 1 % of the
    channels, and stepping stops at the first step whose MACs (the one counter) reach the
    target, as ``channel_pruning``'s own search does.
    """
    model = copy.deepcopy(module).cpu().eval()
    shape = data.input_shape
    head = classifier_layer(model, data.num_classes)
    steps = 95
    pruner = tp.pruner.MetaPruner(
        model,
        torch.zeros(1, *shape),
        importance=tp.importance.MagnitudeImportance(p=2),
        global_pruning=True,
        pruning_ratio=0.95,
        iterative_steps=steps,
        ignored_layers=[head] if head is not None else [],
    )
    base = count_macs(model, shape)
    for _ in range(steps):
        if base / count_macs(model, shape) >= target:
            break
        pruner.step()
    return model


# --- the phases --------------------------------------------------------------------------------


def train_from_scratch(
    arch: str, data: DatasetBundle, seed: int, epochs: int, out: Path
) -> tuple[ModelState, float]:
    """A zoo model trained with ``finetune``; returns it and its test accuracy."""
    recipe = {
        "name": f"{arch} from scratch",
        "seed": seed,
        "stages": [
            {
                "method": "finetune",
                "config": {"epochs": epochs, "lr": BASE_LR, "batch_size": BATCH},
            }
        ],
    }
    report, state = run(recipe, fresh(arch, data, seed), data, out)
    assert state is not None
    return state, report.final.accuracy


def curve_point(
    method: str,
    trained: ModelState,
    data: DatasetBundle,
    seed: int,
    target: float,
    budget: Budget,
    out: Path,
) -> dict[str, Any]:
    """One (method, MAC target, seed) point, fine-tuned for the same epochs as every other."""
    if method == TP_NAME:
        assert trained.module is not None
        pruned = plain_tp_prune(trained.module, data, target)
        recipe = {
            "name": f"plain TP {target:g}x fine-tuning",
            "seed": seed,
            "stages": [
                {
                    "method": "finetune",
                    "config": {"epochs": budget.curve_budget, "lr": LR, "batch_size": BATCH},
                }
            ],
        }
        arch = trained.arch.name if trained.arch else PRUNE_ARCH
        report, _ = run(recipe, state_for(pruned, data, arch), data, out)
        row = outcome(report)
        # The reduction is against the unpruned model (the run's baseline is the pruned one).
        row["base_macs"] = count_macs(trained.module, data.input_shape)
        row["mac_ratio"] = row["base_macs"] / row["macs"]
        return row
    settings = CURVE_VARIANTS[method]
    bn = settings["importance"] == "bn_scale"
    config = {
        **settings,
        "target_mac_reduction": target,
        "round_to": 1,  # resnet20's 16-channel layers cannot reach 16x in multiples of 8
        "sparsity_epochs": budget.sparsity_epochs if bn else 0,
        "finetune_epochs": budget.finetune_epochs if bn else budget.curve_budget,
        "lr": LR,
        "batch_size": BATCH,
    }
    recipe = {
        "name": f"{method} {target:g}x",
        "seed": seed,
        "stages": [{"method": "channel_pruning", "config": config}],
    }
    report, _ = run(recipe, trained, data, out)
    return outcome(report)


def curve(
    data: DatasetBundle, targets: Sequence[float], budget: Budget, out: Path
) -> dict[str, Any]:
    """resnet20 per seed, then every importance and the plain TP script at every MAC target."""
    methods = (*CURVE_VARIANTS, TP_NAME)
    points: dict[str, dict[str, list[dict[str, Any]]]] = {
        m: {f"{t:g}": [] for t in targets} for m in methods
    }
    base_test: list[float] = []
    teachers: dict[int, ModelState] = {}
    for seed in budget.seeds:
        log(f"{data.name}: {PRUNE_ARCH} from scratch, seed {seed}")
        trained, acc = train_from_scratch(
            PRUNE_ARCH, data, seed, budget.base_epochs, out / f"base_s{seed}"
        )
        teachers[seed] = trained
        base_test.append(acc)
        for t in targets:
            for m in methods:
                row = curve_point(m, trained, data, seed, t, budget, out / f"{m}_{t:g}x_s{seed}")
                points[m][f"{t:g}"].append(row)
                log(
                    f"  seed {seed} {m:>8} {t:>4g}x: {row['mac_ratio']:.2f}x MACs, "
                    f"test {row['test']:.2f}% (baseline {acc:.2f}%)"
                )
    return {
        "base_test": base_test,
        "points": points,
        "teachers": teachers,
        "variants": CURVE_VARIANTS,
    }


def best_importance(points: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    """The importance with the highest mean *validation* accuracy over all points and seeds.

    A training-time choice, so it is made on ``val``; the rule then judges it on ``test``.
    """
    return max(
        [m for m in points if m != TP_NAME],
        key=lambda m: mean([r["val"] for rows in points[m].values() for r in rows]),
    )


def headline_and_ptq(data: DatasetBundle, budget: Budget, out: Path) -> dict[str, Any]:
    """vgg11_bn per seed: pruned to 3x with channel_pruning's defaults, and int8 PTQ."""
    seeds: list[dict[str, Any]] = []
    for seed in budget.seeds:
        log(f"{data.name}: {VGG_ARCH} from scratch, seed {seed}")
        vgg, _ = train_from_scratch(VGG_ARCH, data, seed, budget.vgg_epochs, out / f"vgg_s{seed}")
        log(f"  seed {seed}: channel_pruning to {HEADLINE_MAC_TARGET:g}x (bn_scale, defaults)")
        pdir = out / f"slim_s{seed}"
        prep, _ = run(
            {
                "name": "headline slim",
                "seed": seed,
                "stages": [
                    {
                        "method": "channel_pruning",
                        "config": {
                            "target_mac_reduction": HEADLINE_MAC_TARGET,
                            "sparsity_epochs": budget.headline_sparsity_epochs,
                            "finetune_epochs": budget.headline_finetune_epochs,
                            "lr": LR,
                        },
                    }
                ],
            },
            vgg,
            data,
            pdir,
        )
        log(f"  seed {seed}: ptq_int8 (defaults)")
        qdir = out / f"int8_s{seed}"
        qrep, _ = run(
            {"name": "headline int8", "seed": seed, "stages": [{"method": "ptq_int8"}]},
            vgg,
            data,
            qdir,
        )
        assert prep.baseline.onnx_path and prep.final.onnx_path and qrep.final.onnx_path
        seeds.append(
            {
                "seed": seed,
                "fp32_test": prep.baseline.accuracy,
                "slim": outcome(prep),
                "int8_test": qrep.final.accuracy,
                "int8_fp32_test": qrep.baseline.accuracy,
                "fp32_bytes": qrep.baseline.onnx_bytes,
                "int8_bytes": qrep.final.onnx_bytes,
                "paths": {
                    "fp32": str(pdir / prep.baseline.onnx_path),
                    "slim": str(pdir / prep.final.onnx_path),
                    "int8": str(qdir / qrep.final.onnx_path),
                },
            }
        )
    # Every model of every seed in one call: same rounds, same machine state, order rotated.
    paths = [Path(s["paths"][k]) for s in seeds for k in ("fp32", "slim", "int8")]
    log(f"timing {len(paths)} models side by side ({budget.latency_rounds} rounds)")
    results = measure_latency_isolated(
        paths,
        input_shapes=(1, *data.input_shape),
        threads=THREADS,
        warmup=10,
        runs=budget.latency_runs,
        rounds=budget.latency_rounds,
    )
    it = iter(results)
    for s in seeds:
        for k in ("fp32", "slim", "int8"):
            lat: LatencyResult = next(it)
            s[f"{k}_p50_ms"] = lat.p50_ms
            s[f"{k}_iqr_ms"] = lat.iqr_ms
        s["slim_speedup"] = s["fp32_p50_ms"] / s["slim_p50_ms"]
        s["int8_speedup"] = s["fp32_p50_ms"] / s["int8_p50_ms"]
    return {"seeds": seeds}


def _copy_of(state: ModelState) -> Callable[[str], ModelState]:
    """A ``load_model`` that hands the pipeline a fresh copy of ``state`` for any reference."""

    def resolve(_ref: str) -> ModelState:
        return copy.deepcopy(state)

    return resolve


def distillation(data: DatasetBundle, budget: Budget, out: Path) -> dict[str, Any]:
    """The student alone vs distilled from a teacher trained here, same init, epochs and order.

    The teacher is trained per seed for ``kd_teacher_epochs`` (a clearly stronger model than
    the student: distillation can only pass on what the teacher knows better).
    """
    rows = []
    student_cfg = {"epochs": budget.kd_epochs, "lr": LR, "batch_size": BATCH}
    for seed in budget.seeds:
        log(f"{data.name}: KD teacher {KD_TEACHER_ARCH}, seed {seed}")
        teacher, teacher_acc = train_from_scratch(
            KD_TEACHER_ARCH, data, seed, budget.kd_teacher_epochs, out / f"teacher_s{seed}"
        )
        init = fresh(STUDENT_ARCH, data, seed)
        alone, _ = run(
            {"name": "student alone", "seed": seed,
             "stages": [{"method": "finetune", "config": student_cfg}]},
            copy.deepcopy(init), data, out / f"alone_s{seed}",
        )  # fmt: skip
        kd, _ = run(
            {"name": "student kd", "seed": seed,
             "stages": [{"method": "distillation",
                         "config": {**student_cfg, **KD_CONFIG, "teacher": KD_TEACHER_ARCH}}]},
            copy.deepcopy(init), data, out / f"kd_s{seed}",
            load_model=_copy_of(teacher),
        )  # fmt: skip
        row = {
            "seed": seed,
            "teacher": teacher_acc,
            "alone": alone.final.accuracy,
            "kd": kd.final.accuracy,
        }
        rows.append(row)
        log(f"  KD seed {seed}: teacher {teacher_acc:.2f}%, alone {row['alone']:.2f}%, "
            f"kd {row['kd']:.2f}%")  # fmt: skip
    return {"rows": rows, "teacher_arch": KD_TEACHER_ARCH, "config": KD_CONFIG}


def job_overhead(budget: Budget, out: Path) -> dict[str, Any]:
    """A tiny recipe through ``run_recipe`` in a warm process vs its stage's compute alone.

    The first call warms the process (imports, kernels, the latency child's interpreter
    cache); then, alternating, the timed ``run_recipe`` (baseline measurement, checkpoint,
    ONNX export and parity, test/val accuracy, interleaved latency with the default eval
    settings, report) and the same stage run directly (``get_method(...).run``, which is all
    the pipeline calls for the compute).
    """
    data = load_digits(size=32)
    recipe = {
        "name": "overhead",
        "seed": 0,
        "stages": [{"method": "finetune", "config": {"epochs": 2, "batch_size": BATCH}}],
    }
    parsed = parse_recipe(recipe)
    model = fresh(STUDENT_ARCH, data, 0)

    def full(i: int) -> float:
        t0 = time.perf_counter()
        run_recipe(parsed, model, data, out / f"job{i}", device="cpu", restart=True)
        return time.perf_counter() - t0

    def direct(i: int) -> float:
        state = copy.deepcopy(model)
        work = out / f"direct{i}"
        work.mkdir(parents=True, exist_ok=True)
        ctx = StageContext(
            model=state,
            data=data,
            device=torch.device("cpu"),
            work_dir=work,
            seed=parsed.seed,
            report=lambda f, m, d: None,
            check_cancel=lambda: None,
        )
        t0 = time.perf_counter()
        seed_everything(parsed.seed)
        get_method("finetune").run(ctx, parsed.stages[0].config)
        return time.perf_counter() - t0

    full(-1)  # warm-up
    direct(-1)
    fulls, directs = [], []
    for i in range(budget.overhead_repeats):
        fulls.append(full(i))
        directs.append(direct(i))
    f, d = statistics.median(fulls), statistics.median(directs)
    return {
        "recipe": recipe,
        "eval": asdict(parsed.eval),
        "run_recipe_s": fulls,
        "direct_s": directs,
        "run_recipe_median_s": f,
        "direct_median_s": d,
        "overhead_s": f - d,
        "ratio": f / d,
    }


# --- environment -------------------------------------------------------------------------------


def cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    return {
        "cpu": cpu_model_name(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "onnxruntime": ort.__version__,
        "torch_pruning": getattr(tp, "__version__", "?"),
        "python": platform.python_version(),
        "load_avg_start": os.getloadavg()[0],
    }


def load(name: str, size: int, budget: Budget) -> DatasetBundle:
    data = load_mnist(size=size) if name == "mnist" else load_digits(size=size)
    if budget.subset:
        tr, va, te = budget.subset
        data = data.subset(train=tr, val=va, test=te, seed=0)
    return data


SECTIONS = ("headline", "curve", "kd", "digits", "overhead")
RESULTS = ROOT / "benchmarks" / "results" / "compression.json"
# Rule 4 is judged on `benchmarks/distillation_bench.py`'s runs (alone vs Hinton KD, same
# student init and seeds) when this script's own `kd` section has not been measured.
DISTILLATION_RESULTS = ROOT / "benchmarks" / "results" / "distillation.json"


def distillation_rows() -> list[dict[str, Any]] | None:
    """Per seed: the student alone and Hinton KD on test, from the distillation benchmark."""
    if not DISTILLATION_RESULTS.exists():
        return None
    raw = json.loads(DISTILLATION_RESULTS.read_text())
    rows = []
    for run_ in raw["runs"]:
        for row in run_["rows"]:
            rows.append(
                {
                    "seed": row["seed"],
                    "teacher": row["teacher_test"],
                    "alone": row["alone"]["test"],
                    "kd": row["hinton"]["test"],
                }
            )
    return sorted(rows, key=lambda x: x["seed"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run; numbers meaningless")
    parser.add_argument(
        "--write", action="store_true", help="with --quick: write the doc anyway (marked)"
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help="comma-separated subset of " + ", ".join(SECTIONS) + " (default: all); the other"
        " sections keep their numbers from the results file",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "compression")
    parser.add_argument("--results", type=Path, default=RESULTS, help="raw numbers (JSON)")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--render-only", action="store_true", help="doc from the results file")
    args = parser.parse_args()
    if args.render_only:
        raw = json.loads(args.results.read_text())
        replace_section(args.doc, SECTION, HEADING, render(raw))
        return
    wanted = [x.strip() for x in args.sections.split(",") if x.strip()]
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    budget = QUICK if args.quick else FULL
    torch.set_num_threads(THREADS)
    out: Path = args.out
    results: Path = args.results if not args.quick else out / "results.json"
    # Sections not run keep their numbers; each section records its own budget and machine.
    r: dict[str, Any] = {"quick": args.quick, "budget": asdict(budget), "sections": {}}
    if results.exists() and not args.quick:
        r = json.loads(results.read_text())
        r["budget"] = asdict(budget)
    for name in wanted:
        # The pipeline resumes a run whose identity matches; start clean so nothing is reused.
        shutil.rmtree(out / name, ignore_errors=True)
        (out / name).mkdir(parents=True)
        started = time.monotonic()
        env = environment()
        section = run_section(name, budget, out / name)
        env["load_avg_end"] = os.getloadavg()[0]
        section["env"] = env
        section["duration_s"] = time.monotonic() - started
        r["sections"][name] = section
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(r, indent=2, default=str) + "\n")
        log(f"section {name} done in {section['duration_s'] / 60:.1f} min; saved {results}")
    text = render(r)
    if args.quick and not args.write:
        print(text)
        log("quick run done; doc not written")
        return
    replace_section(args.doc, SECTION, HEADING, text)
    log(f"wrote {args.doc}")


def run_section(name: str, budget: Budget, out: Path) -> dict[str, Any]:
    """One section of the benchmark; every comparison inside it is measured in this run."""
    if name == "digits":
        digits = load("digits", 32, budget)
        d = curve(digits, budget.digits_targets, budget, out)
        d.pop("teachers")
        d["sizes"] = {"train": len(digits.train), "val": len(digits.val), "test": len(digits.test)}
        d["base_epochs"] = budget.base_epochs
        return d
    mnist = load("mnist", 32, budget)
    sizes = {"train": len(mnist.train), "val": len(mnist.val), "test": len(mnist.test)}
    if name == "headline":
        return {**headline_and_ptq(mnist, budget, out), "sizes": sizes}
    if name == "curve":
        c = curve(mnist, budget.curve_targets, budget, out)
        c.pop("teachers")
        return {
            **c,
            "best": best_importance(c["points"]),
            "sizes": sizes,
            "base_epochs": budget.base_epochs,
        }
    if name == "kd":
        return {**distillation(mnist, budget, out), "sizes": sizes}
    assert name == "overhead"
    return job_overhead(budget, out)


# --- the rules and the doc -------------------------------------------------------------------


def evaluate_rules(r: dict[str, Any]) -> dict[str, Any]:
    """Every rule's numbers and PASS/FAIL, computed from the measurements only.

    A rule whose section has not been measured is ``None``.
    """
    sections = r["sections"]
    v: dict[str, Any] = {"headline": None, "curve": None, "ptq": None, "kd": None}
    if "headline" in sections:
        seeds = sections["headline"]["seeds"]
        drops = [s["fp32_test"] - s["slim"]["test"] for s in seeds]
        macr = [s["slim"]["mac_ratio"] for s in seeds]
        spd = [s["slim_speedup"] for s in seeds]
        headline = {
            "drop": mean(drops),
            "mac_min": min(macr),
            "mac_mean": mean(macr),
            "speedup": mean(spd),
            "pass_drop": mean(drops) <= HEADLINE_MAX_DROP,
            "pass_macs": min(macr) >= HEADLINE_MAC_TARGET,
            "pass_speedup": mean(spd) >= HEADLINE_SPEEDUP_SHARE * mean(macr),
        }
        headline["pass"] = (
            headline["pass_drop"] and headline["pass_macs"] and headline["pass_speedup"]
        )
        v["headline"] = headline

        q_drops = [s["int8_fp32_test"] - s["int8_test"] for s in seeds]
        sizes = [s["fp32_bytes"] / s["int8_bytes"] for s in seeds]
        q_spd = [s["int8_speedup"] for s in seeds]
        ptq = {
            "size": mean(sizes),
            "drop": mean(q_drops),
            "speedup": mean(q_spd),
            "pass_size": mean(sizes) >= PTQ_MIN_SIZE_RATIO,
            "pass_drop": mean(q_drops) <= PTQ_MAX_DROP,
            "pass_speedup": mean(q_spd) >= PTQ_MIN_SPEEDUP,
        }
        ptq["pass"] = ptq["pass_size"] and ptq["pass_drop"] and ptq["pass_speedup"]
        v["ptq"] = ptq

    if "curve" in sections:
        pts, best = sections["curve"]["points"], sections["curve"]["best"]
        per_point = []
        for t in pts[TP_NAME]:
            b = [x["test"] for x in pts[best][t]]
            p = [x["test"] for x in pts[TP_NAME][t]]
            margin = max(sd(b), sd(p))
            per_point.append(
                {
                    "target": t,
                    "best": mean(b),
                    "tp": mean(p),
                    "diff": mean(b) - mean(p),
                    "sd": margin,
                    "at_least": mean(b) >= mean(p),
                    "by_sd": not math.isnan(margin) and mean(b) - mean(p) > margin,
                }
            )
        curve = {
            "points": per_point,
            "pass_every": all(x["at_least"] for x in per_point),
            "pass_high": any(x["by_sd"] for x in per_point if float(x["target"]) >= 8),
        }
        curve["pass"] = curve["pass_every"] and curve["pass_high"]
        v["curve"] = curve

    rows = sections["kd"]["rows"] if "kd" in sections else distillation_rows()
    if rows:
        alone = [x["alone"] for x in rows]
        kd = [x["kd"] for x in rows]
        margin = max(sd(alone), sd(kd))
        v["kd"] = {
            "diff": mean(kd) - mean(alone),
            "sd": margin,
            "pass": not math.isnan(margin) and mean(kd) - mean(alone) > margin,
        }
    return v


def _not_measured(name: str) -> str:
    return (
        f"_Not measured in `benchmarks/results/compression.json` yet: run `--sections {name}`"
        " (earlier runs' numbers are in the git history of this page)._"
    )


def render(r: dict[str, Any]) -> str:
    b = r["budget"]
    S = r["sections"]
    v = evaluate_rules(r)
    n = len(b["seeds"])
    T = b["sparsity_epochs"] + b["finetune_epochs"]
    lines: list[str] = []
    add = lines.append
    if r["quick"]:
        add("**`--quick` smoke run on a data subset: the numbers below are meaningless.**")
        add("")
    add(
        "Written by `benchmarks/compression_bench.py`. Every job runs through `parse_recipe` +"
        " `run_recipe`, the code path users run; nothing in the library is patched. Accuracy is"
        " the pipeline's figure on each data set's fixed **test** split (percent); MACs are"
        " `compression.macs.count_macs`; latency is ONNX Runtime on the CPU at batch 1 with"
        " 2 threads, every compared model timed in one `measure_latency_isolated` call"
        " (a torch-free child process per model, thread env pinned, interleaved rounds with"
        " the order rotated; p50 = median of the per-round medians, IQR across rounds)."
        f" Every figure is mean ± sd (sample) over {n} seeds ({', '.join(map(str, b['seeds']))});"
        " a seed changes the starting model's initialisation and training order and every"
        " job's seed. Each section is one run (its comparisons side by side); sections may be"
        " re-run separately (`--sections`), and each states its own machine load and wall time."
    )
    add("")
    add("### Decision rules (fixed before the run)")
    add("")
    add(
        f"1. **Channel pruning headline** (`mnist`, `{VGG_ARCH}`, `channel_pruning` with its"
        f" defaults and `target_mac_reduction: {HEADLINE_MAC_TARGET:g}`): PASS if the mean"
        f" test-accuracy drop is ≤ {HEADLINE_MAX_DROP} pt, every seed reaches ≥"
        f" {HEADLINE_MAC_TARGET:g}x fewer MACs, and the mean measured ORT speedup is ≥"
        f" {HEADLINE_SPEEDUP_SHARE} × the mean MAC reduction."
    )
    add(
        f"2. **Accuracy vs MACs** (`mnist`, `{PRUNE_ARCH}`,"
        f" {'/'.join(f'{t:g}x' for t in b['curve_targets'])} fewer MACs): EdgeSlim's"
        " best variant — the one with the highest mean *validation* accuracy over all points"
        " and seeds, so the choice never sees the test split — PASS if its mean test accuracy"
        " is ≥ the plain Torch-Pruning script's at every point, and higher by more than one"
        " standard deviation (the larger of the two methods' sds) at 8x or at 16x. Every"
        " variant gets the same training epochs after the starting point."
    )
    add(
        f"3. **int8 PTQ** (`mnist`, `{VGG_ARCH}`, `ptq_int8` defaults): PASS if the ONNX file is"
        f" ≥ {PTQ_MIN_SIZE_RATIO}x smaller, the mean test-accuracy drop is ≤ {PTQ_MAX_DROP} pt,"
        f" and the mean speedup at batch 1 on 2 threads is ≥ {PTQ_MIN_SPEEDUP}x."
    )
    add(
        f"4. **Knowledge distillation** (`mnist`, `{STUDENT_ARCH}` student, a teacher trained"
        " per seed): PASS if the distilled student's mean test accuracy beats"
        " the student trained alone (same initialisation, epochs and data order) by more than"
        " one standard deviation (the larger of the two columns' sds)."
    )
    add("")
    add("| rule | result | verdict |")
    add("|---|---|---|")
    h, cv, q, k = v["headline"], v["curve"], v["ptq"], v["kd"]
    if h is None:
        add("| 1. pruning headline | not measured | — |")
        add("| 3. int8 PTQ | not measured | — |")
    else:
        add(
            f"| 1. pruning headline | drop {h['drop']:+.2f} pt, MACs {h['mac_mean']:.2f}x (min"
            f" {h['mac_min']:.2f}x), speedup {h['speedup']:.2f}x vs needed"
            f" {HEADLINE_SPEEDUP_SHARE * h['mac_mean']:.2f}x | {verdict(h['pass'])} |"
        )
    if cv is None:
        add("| 2. accuracy vs MACs | not measured | — |")
    else:
        add(
            f"| 2. accuracy vs MACs | best variant `{S['curve']['best']}`; ≥ plain TP at every"
            f" point: {'yes' if cv['pass_every'] else 'no'}; > 1 sd at 8x or 16x:"
            f" {'yes' if cv['pass_high'] else 'no'} | {verdict(cv['pass'])} |"
        )
    if q is not None:
        add(
            f"| 3. int8 PTQ | {q['size']:.2f}x smaller, drop {q['drop']:+.2f} pt,"
            f" {q['speedup']:.2f}x faster | {verdict(q['pass'])} |"
        )
    if k is None:
        add("| 4. distillation | not measured | — |")
    else:
        add(
            f"| 4. distillation | KD − alone {k['diff']:+.2f} pt vs one sd {k['sd']:.2f} pt |"
            f" {verdict(k['pass'])} |"
        )
    add("")

    add("### Setup")
    add("")
    if "headline" in S or "curve" in S or "kd" in S:
        m = next(S[x]["sizes"] for x in ("curve", "headline", "kd") if x in S)
        add(
            f"- Data: built-in `mnist` (5,000 real MNIST digits, fixed split {m['train']} train /"
            f" {m['val']} val / {m['test']} test, bilinearly resized to 32x32; one test image ="
            f" {100 / m['test']:.2f} pt) and `digits` (scikit-learn's 8x8 digits upscaled to"
            " 32x32)."
        )
    add(
        f"- Starting points, trained from scratch with `finetune` (lr {BASE_LR}, batch {BATCH}):"
        f" `{PRUNE_ARCH}` {b['base_epochs']} epochs, `{VGG_ARCH}` {b['vgg_epochs']} epochs, one"
        " per seed, shared by every variant of that seed."
    )
    if b["base_epochs"] > 3:
        add(
            "- History: until 2026-12-06 the curve started from a `resnet20` trained 3 epochs"
            " (96.73 ± 0.76 % test), weaker than its own 2x-pruned students after their 2"
            " epochs, so the curve measured continued training and recovery distillation pulled"
            " the students toward a weaker teacher. That run failed rule 2 at 2x by 0.17 pt"
            " (sd 0.49) and passed it at 4x, 8x and 16x (the previous version of this section"
            " is in git). The starting point now gets the KD teacher's 10 epochs; the variants,"
            " their settings and the rules are unchanged."
        )
    add(
        f"- Curve budget: {T} training epochs after the starting point for every variant"
        f" (lr {LR}). EdgeSlim runs `channel_pruning` with `target_mac_reduction` and"
        " `round_to: 1` (resnet20's 16-channel layers cannot reach 16x in multiples of 8); the"
        " variants and their settings are listed with the curve. The plain Torch-Pruning script"
        " (in the benchmark): `tp.pruner.MetaPruner` with"
        " `tp.importance.MagnitudeImportance(p=2)`, `global_pruning=True`, the classifier"
        " ignored, stepped 1 % of channels at a time until the same MAC target is reached (the"
        " one counter), then fine-tuned with the `finetune` method for the same epochs, lr and"
        " batch size."
    )
    add(
        f"- Headline: `channel_pruning` defaults (`bn_scale`, `round_to: 8`, `max_layer_ratio:"
        f" 0.9`) with {b['headline_sparsity_epochs']} sparsity + {b['headline_finetune_epochs']}"
        f" fine-tuning epochs, lr {LR}. KD: teacher `{KD_TEACHER_ARCH}` trained"
        f" {b['kd_teacher_epochs']} epochs per seed; student {b['kd_epochs']} epochs alone or"
        f" with `distillation` ({KD_CONFIG or 'its defaults'})."
    )
    add(
        f"- Latency: {b['latency_rounds']} interleaved rounds of {b['latency_runs']} timed runs"
        " per model after 10 warm-up runs."
    )
    for name in SECTIONS:
        if name in S:
            env = S[name]["env"]
            add(
                f"- Section `{name}`: {env['cpu']} ({env['machine']}), {env['cores']} cores"
                f" ({env.get('usable_cores')} usable), torch {env['torch']} with"
                f" {env['torch_threads']} threads, ONNX Runtime {env['onnxruntime']},"
                f" Torch-Pruning {env['torch_pruning']}, Python {env['python']}; wall time"
                f" {S[name]['duration_s'] / 60:.1f} min; 1-min load average"
                f" {env['load_avg_start']:.1f} at the start and"
                f" {env.get('load_avg_end', math.nan):.1f} at the end (above 2 means other work"
                " shared the two cores)."
            )
    add("")

    add(f"### 1. Channel pruning headline (`mnist`, `{VGG_ARCH}`)")
    add("")
    if "headline" not in S:
        add(_not_measured("headline"))
    else:
        seeds = S["headline"]["seeds"]
        add(
            "| seed | fp32 test | pruned test | drop | MACs | MAC reduction | fp32 p50 (IQR) |"
            " pruned p50 (IQR) | speedup | speedup / MAC reduction |"
        )
        add("|---|---|---|---|---|---|---|---|---|---|")
        for s in seeds:
            sl = s["slim"]
            add(
                f"| {s['seed']} | {s['fp32_test']:.2f}% | {sl['test']:.2f}% |"
                f" {s['fp32_test'] - sl['test']:+.2f} pt | {sl['base_macs'] / 1e6:.1f}M →"
                f" {sl['macs'] / 1e6:.1f}M | {sl['mac_ratio']:.2f}x | {lat(s, 'fp32')} |"
                f" {lat(s, 'slim')} | {s['slim_speedup']:.2f}x |"
                f" {s['slim_speedup'] / sl['mac_ratio']:.2f} |"
            )
        add(
            f"| mean ± sd | {pm([s['fp32_test'] for s in seeds])}% |"
            f" {pm([s['slim']['test'] for s in seeds])}% |"
            f" {pm([s['fp32_test'] - s['slim']['test'] for s in seeds])} pt | |"
            f" {pm([s['slim']['mac_ratio'] for s in seeds])}x | | |"
            f" {pm([s['slim_speedup'] for s in seeds])}x | |"
        )
    add("")

    add(f"### 2. Accuracy vs MACs (`mnist`, `{PRUNE_ARCH}`)")
    add("")
    if cv is None:
        add(_not_measured("curve"))
    else:
        add(curve_table(S["curve"]["points"], S["curve"]["base_test"]))
        add("")
        add(variants_list(S["curve"]))
        add("")
        add(
            f"Best variant by validation accuracy: `{S['curve']['best']}`. Rule 2 per point"
            " (test accuracy):"
        )
        add("")
        add("| MAC target | best variant | plain TP | difference | one sd | ≥ TP | > 1 sd |")
        add("|---|---|---|---|---|---|---|")
        for x in cv["points"]:
            spread = "—" if math.isnan(x["sd"]) else f"{x['sd']:.2f}"
            add(
                f"| {x['target']}x | {x['best']:.2f}% | {x['tp']:.2f}% | {x['diff']:+.2f} pt |"
                f" {spread} pt | {'yes' if x['at_least'] else 'no'} |"
                f" {'yes' if x['by_sd'] else 'no'} |"
            )
    add("")
    digits_base = S.get("digits", {}).get("base_epochs", b["base_epochs"])
    add(
        "`digits` (smaller table, no rule: a 3-4 layer net saturates it), same procedure"
        + (
            f", but from the earlier run's `{PRUNE_ARCH}` starting point trained"
            f" {digits_base} epochs (not re-measured with the curve above):"
            if digits_base != S.get("curve", {}).get("base_epochs", b["base_epochs"])
            else ":"
        )
    )
    add("")
    if "digits" in S:
        add(curve_table(S["digits"]["points"], S["digits"]["base_test"]))
    else:
        add(_not_measured("digits"))
    add("")

    add(f"### 3. int8 post-training quantization (`mnist`, `{VGG_ARCH}`)")
    add("")
    if "headline" not in S:
        add(_not_measured("headline"))
    else:
        seeds = S["headline"]["seeds"]
        add("| seed | fp32 | int8 | size ratio | fp32 test | int8 test | drop | fp32 p50 (IQR) |"
            " int8 p50 (IQR) | speedup |")  # fmt: skip
        add("|---|---|---|---|---|---|---|---|---|---|")
        for s in seeds:
            add(
                f"| {s['seed']} | {s['fp32_bytes'] / 1e6:.2f} MB |"
                f" {s['int8_bytes'] / 1e6:.2f} MB | {s['fp32_bytes'] / s['int8_bytes']:.2f}x |"
                f" {s['int8_fp32_test']:.2f}% | {s['int8_test']:.2f}% |"
                f" {s['int8_fp32_test'] - s['int8_test']:+.2f} pt |"
                f" {lat(s, 'fp32')} | {lat(s, 'int8')} | {s['int8_speedup']:.2f}x |"
            )
        add(
            f"| mean ± sd | | | {pm([s['fp32_bytes'] / s['int8_bytes'] for s in seeds])}x |"
            f" {pm([s['int8_fp32_test'] for s in seeds])}% |"
            f" {pm([s['int8_test'] for s in seeds])}% |"
            f" {pm([s['int8_fp32_test'] - s['int8_test'] for s in seeds])} pt | | |"
            f" {pm([s['int8_speedup'] for s in seeds])}x |"
        )
    add("")

    add(f"### 4. Knowledge distillation (`mnist`, `{STUDENT_ARCH}` student)")
    add("")
    rows = S["kd"]["rows"] if "kd" in S else distillation_rows()
    if not rows:
        add(_not_measured("kd"))
    else:
        if "kd" not in S:
            add(
                "From `benchmarks/distillation_bench.py` (its section below: a `lenet5` teacher"
                " trained 30 epochs per seed, the student 5 epochs alone or with Hinton KD,"
                " T 4, alpha 0.9; raw numbers in `benchmarks/results/distillation.json`)."
            )
            add("")
        add("| seed | teacher | student alone | distilled | difference |")
        add("|---|---|---|---|---|")
        for x in rows:
            add(
                f"| {x['seed']} | {x['teacher']:.2f}% | {x['alone']:.2f}% | {x['kd']:.2f}% |"
                f" {x['kd'] - x['alone']:+.2f} pt |"
            )
        add(
            f"| mean ± sd | {pm([x['teacher'] for x in rows])}% |"
            f" {pm([x['alone'] for x in rows])}% | {pm([x['kd'] for x in rows])}% |"
            f" {pm([x['kd'] - x['alone'] for x in rows])} pt |"
        )
    add("")

    add("### Warm-to-warm job overhead")
    add("")
    if "overhead" not in S:
        add(_not_measured("overhead"))
    else:
        o = S["overhead"]
        add(
            "A tiny recipe (`lenet5` on `digits`, `finetune` for 2 epochs, default eval settings:"
            f" {o['eval']['rounds']} latency rounds of {o['eval']['latency_runs']} runs) through"
            " `run_recipe` in a process that has already run it once, against the same stage's"
            " compute alone (`get_method('finetune').run`, what the pipeline calls), alternating,"
            f" {len(o['run_recipe_s'])} repeat(s), medians:"
            f" `run_recipe` {o['run_recipe_median_s']:.2f} s, compute"
            f" {o['direct_median_s']:.2f} s, **overhead {o['overhead_s']:.2f} s (ratio"
            f" {o['ratio']:.2f}x)**. The overhead is the pipeline's own work: baseline and result"
            " measured on test and val, ONNX export and parity, checkpoints, the latency"
            " children, `report.json`. The server path (API → Celery worker → websocket) is"
            " measured by `benchmarks/jobs_bench.py` (the jobs section above): its warm worker"
            " adds the queue and database on top of this."
        )
    add("")
    add(
        "Re-run: `.venv/bin/python benchmarks/compression_bench.py` (every section, writes this"
        " section of the doc); `--sections curve,kd` re-measures only those (the others keep"
        " their numbers from `benchmarks/results/compression.json`); `--quick` for a smoke run;"
        " `--render-only` re-renders from the results file."
    )
    return "\n".join(lines)


def lat(s: dict[str, Any], key: str) -> str:
    iqr = s.get(f"{key}_iqr_ms")
    spread = "—" if iqr is None else f"{iqr:.3f}"
    return f"{s[f'{key}_p50_ms']:.3f} ms ({spread})"


def variants_list(curve: dict[str, Any]) -> str:
    """The settings of each EdgeSlim variant on the curve."""
    items = [
        f"`{name}`: " + ", ".join(f"`{k}: {v}`" for k, v in settings.items())
        for name, settings in curve.get("variants", {}).items()
    ]
    return "EdgeSlim variants: " + "; ".join(items) + "." if items else ""


def curve_table(points: dict[str, dict[str, list[dict[str, Any]]]], base: list[float]) -> str:
    """Test accuracy (mean ± sd) and reached MAC reduction per method and target."""
    targets = list(points[TP_NAME])
    head = "| method | " + " | ".join(f"{t}x fewer MACs" for t in targets) + " |"
    rows = [head, "|---|" + "---|" * len(targets)]
    rows.append(f"| unpruned ({pm(base)}%) | " + " | ".join("" for _ in targets) + " |")
    for m in (*(x for x in points if x != TP_NAME), TP_NAME):
        name = "plain Torch-Pruning" if m == TP_NAME else f"EdgeSlim `{m}`"
        cells = []
        for t in targets:
            xs = points[m][t]
            cells.append(
                f"{pm([x['test'] for x in xs])}% (at {mean([x['mac_ratio'] for x in xs]):.2f}x)"
            )
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
