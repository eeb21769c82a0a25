"""YOLOv3 (Darknet-53) on ``mnist_scenes``: channel pruning to 3x fewer MACs, then int8 PTQ.

Issue 15's two compression targets, on this CPU, test split of the built-in set:

* channel pruning of YOLOv3 at a reduced width: **>= 3x fewer MACs at <= 1 pt mAP@0.5 loss**,
  with the measured ONNX Runtime speedup **>= 0.75x the MAC reduction** (SlimYOLOv3's -90.8 %
  FLOPs at comparable mAP is the anchor);
* int8 PTQ of the pruned YOLOv3: **<= 1 pt mAP@0.5 loss, >= 1.5x faster at batch 1**.

Per seed (data: ``mnist_scenes`` generated from seed 0 for every seed; the seed changes the
initial weights, batch order and augmentations): the zoo's ``yolov3`` at the budget's width and
input size, with k-means anchors of the train boxes (:func:`fit_yolo_anchors`), is trained from
scratch with :func:`train_detector` (the baseline). Two recipes then run from that trained
baseline through :func:`compression.pipeline.run_recipe` (what ``edgeslim compress`` runs):

* **control**: ``finetune`` for the budget's fine-tune epochs, unpruned;
* **pruned**: ``channel_pruning`` (``bn_scale``, ``target_mac_reduction`` 3, the detection heads
  protected on their inputs and outputs) -> the same ``finetune`` -> ``ptq_int8`` (static,
  calibrated on train images of the data set).

Every state's test mAP@0.5 is the pipeline's own (``evaluate_detector``: torchmetrics' mAP with
the ``faster_coco_eval`` backend; the int8 ONNX model through ONNX Runtime). Latency is measured
after all training: every seed's control fp32, pruned fp32 and pruned int8 ONNX in one
interleaved :func:`measure_latency_isolated` call (network alone, batch 1, 1 thread, p50 = median
of the per-round medians) and one :func:`measure_detection_latency_isolated` call (end to end with
the numpy decode + NMS), with per-op-type times from a profiling session.

    # one process per seed (2 cores: two at a time), training only; then merge, time, write:
    nice -n 10 .venv/bin/python benchmarks/detection_compress_bench.py --seeds 0 --results /tmp/s0.json
    .venv/bin/python benchmarks/detection_compress_bench.py --merge /tmp/s0.json /tmp/s1.json ...
    nice -n 10 .venv/bin/python benchmarks/detection_compress_bench.py --quick   # smoke, ~1 min
    .venv/bin/python benchmarks/detection_compress_bench.py --render-only        # doc from JSON
    .venv/bin/python benchmarks/detection_compress_bench.py --rules-only         # rules, no numbers
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._docs import replace_section  # noqa: E402
from benchmarks._stats import mean, verdict  # noqa: E402
from benchmarks.compression_bench import environment, pm  # noqa: E402

SECTION = "detection_compress"
HEADING = "## Detection compression: YOLOv3 channel pruning and int8 PTQ (mnist_scenes, CPU)"
RESULTS = ROOT / "benchmarks" / "results" / "detection_compress.json"
OUT = ROOT / "benchmarks" / "out" / "detection_compress"
DOC = ROOT / "docs" / "benchmarks.md"
ARCH = "yolov3"
THREADS = 1  # torch threads in training, ORT threads in the timing

# The rules, fixed before any number is seen (render() states them before the tables).
PRUNE_MIN_MAC_REDUCTION = 3.0  # every seed
PRUNE_MAX_DROP = 1.0  # mAP@0.5 points, mean over seeds, control - pruned
PRUNE_SPEEDUP_SHARE = 0.75  # mean speedup >= this x mean MAC reduction
INT8_MAX_DROP = 1.0  # mAP@0.5 points, mean over seeds, pruned fp32 - int8
INT8_MIN_SPEEDUP = 1.5  # mean speedup, pruned fp32 p50 / int8 p50, batch 1


@dataclass(frozen=True)
class Budget:
    name: str
    seeds: tuple[int, ...]
    width: float
    input_size: int
    base_epochs: int
    base_lr: float
    ft_epochs: int
    ft_lr: float
    batch_size: int
    val_every: int
    calibration_samples: int
    latency_rounds: int
    latency_runs: int
    train_images: int | None = None  # a prefix of the train split (all when None)
    val_images: int | None = None
    test_images: int | None = None
    target_mac_reduction: float = PRUNE_MIN_MAC_REDUCTION
    # The fine-tunes' horizontal flips: off, as in the base training, because a mirrored digit
    # never occurs in mnist_scenes (run 1, before finetune had a ``flip`` option, flipped).
    ft_flip: bool = False
    # Run 3: SlimYOLOv3's sparsity training inside channel_pruning (the YOLO loss plus an L1
    # push on every BN scale, at ft_lr) before the cut, one pruned arm per lambda; the lambda is
    # chosen on val (see choose_lambda). The control fine-tunes sparsity_epochs + ft_epochs.
    sparsity_epochs: int = 0
    sparsity_lambdas: tuple[float, ...] = (0.0,)
    # Run 4: the pruned channel counts in steps of 16, ONNX Runtime's NCHWc block on AVX-512 (a
    # multiple of AVX2's 8). Run 3 pruned in channel_pruning's default steps of 8; on an AVX-512
    # CPU ORT then runs every conv whose input channels are >= 16 and not a multiple of 16 on
    # its plain kernels instead of the blocked ones (NchwcTransformer).
    round_to: int = 8


# Sized from a measurement (yolov3 width 0.25, 96 px, 1 thread, batch 16: 0.40 s CPU per
# step, 66 steps = ~27 s per epoch): base training ~16 epochs = ~7.5 CPU min (<= ~8 per seed),
# each fine-tune 6 epochs = ~3 CPU min for the unpruned control (less for the pruned model).
FULL = Budget(
    name="full",
    seeds=(0, 1, 2),
    width=0.25,
    input_size=96,
    base_epochs=16,
    base_lr=2e-3,
    ft_epochs=6,
    ft_lr=1e-3,
    batch_size=16,
    val_every=8,
    calibration_samples=64,
    latency_rounds=5,
    latency_runs=30,
    sparsity_epochs=4,
    sparsity_lambdas=(0.01, 0.05),
    round_to=16,
)
QUICK = Budget(
    name="quick",
    seeds=(0,),
    width=0.25,
    input_size=64,
    base_epochs=2,
    base_lr=2e-3,
    ft_epochs=1,
    ft_lr=1e-3,
    batch_size=16,
    val_every=2,
    calibration_samples=16,
    latency_rounds=2,
    latency_runs=5,
    train_images=48,
    val_images=16,
    test_images=24,
    sparsity_epochs=1,
    sparsity_lambdas=(0.01, 0.05),
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def finetune_stage(budget: Budget, epochs: int) -> dict[str, Any]:
    return {
        "method": "finetune",
        "name": "finetune",
        "config": {
            "epochs": epochs,
            "lr": budget.ft_lr,
            "optimizer": "adam",
            "batch_size": budget.batch_size,
            "weight_decay": 5e-4,
            "flip": budget.ft_flip,
        },
    }


def pruned_arms(budget: Budget | dict[str, Any]) -> list[str]:
    """The pruned recipes' names: ``pruned`` alone, or ``pruned_l<lambda>`` per candidate."""
    b = asdict(budget) if isinstance(budget, Budget) else budget
    lambdas = b.get("sparsity_lambdas") or [0.0]
    if not b.get("sparsity_epochs") or len(lambdas) == 1:
        return ["pruned"]
    return [f"pruned_l{lam:g}" for lam in lambdas]


def recipes(budget: Budget, seed: int) -> dict[str, dict[str, Any]]:
    """The recipes run from the trained baseline (latency is timed afterwards, all seeds'
    models in one call, so the pipeline times nothing)."""
    evals = {"latency_runs": 0, "threads": THREADS}
    out: dict[str, dict[str, Any]] = {
        "control": {
            "name": "yolov3-control",
            "seed": seed,
            "eval": evals,
            "stages": [finetune_stage(budget, budget.sparsity_epochs + budget.ft_epochs)],
        },
    }
    for arm, lam in zip(pruned_arms(budget), budget.sparsity_lambdas, strict=False):
        out[arm] = {
            "name": "yolov3-prune-int8",
            "seed": seed,
            "eval": evals,
            "stages": [
                {
                    "method": "channel_pruning",
                    "config": {
                        "importance": "bn_scale",
                        "target_mac_reduction": budget.target_mac_reduction,
                        "sparsity_epochs": budget.sparsity_epochs,
                        "sparsity_lambda": lam,
                        "lr": budget.ft_lr,
                        "optimizer": "adam",
                        "batch_size": budget.batch_size,
                        "flip": budget.ft_flip,
                        "finetune_epochs": 0,
                        "round_to": budget.round_to,
                    },
                },
                finetune_stage(budget, budget.ft_epochs),
                {
                    "method": "ptq_int8",
                    "config": {
                        "mode": "static",
                        "calibration_samples": budget.calibration_samples,
                        "reduce_range": True,
                    },
                },
            ],
        }
    return out


def choose_lambda(raw: dict[str, Any]) -> None:
    """With several pruned arms: the one with the best mean **val** mAP@0.5 after its fine-tune
    (a lead under 0.5 pt goes to the smaller lambda) becomes every seed's ``pruned``; test is
    read only for it. Recorded in ``raw["selection"]``."""
    arms = pruned_arms(raw["budget"])
    if arms == ["pruned"]:
        return
    val = {a: [r[a][-2]["val_map50"] * 100 for r in raw["runs"]] for a in arms}
    best = arms[0]
    for a in arms[1:]:  # in increasing lambda
        if mean(val[a]) >= mean(val[best]) + 0.5:
            best = a
    raw["selection"] = {"val_map50": val, "chosen": best}
    for r in raw["runs"]:
        r["pruned"] = r[best]
        r["pruned_cpu_s"] = r[f"{best}_cpu_s"]
        r["pruned_wall_s"] = r[f"{best}_wall_s"]


def load_data(budget: Budget) -> Any:
    from compression.detection_data import load_builtin_detection

    bundle = load_builtin_detection("mnist_scenes", seed=0)
    return dataclasses.replace(
        bundle,
        train=bundle.train[: budget.train_images],
        val=bundle.val[: budget.val_images],
        test=bundle.test[: budget.test_images],
    )


def _state_row(run_dir: Path, m: dict[str, Any]) -> dict[str, Any]:
    onnx = (run_dir / m["onnx_path"]).resolve() if m.get("onnx_path") else None
    return {
        "format": m.get("format"),
        "map50": m["accuracy"] / 100.0,
        "val_map50": (m["val_accuracy"] / 100.0) if m.get("val_accuracy") is not None else None,
        "map50_95": (m.get("detection") or {}).get("map50_95"),
        "macs": m.get("macs"),
        "params": m.get("params"),
        "onnx_bytes": m.get("onnx_bytes"),
        "onnx": str(onnx.relative_to(ROOT)) if onnx else None,
    }


def run_seed(budget: Budget, seed: int) -> dict[str, Any]:
    """Train the baseline, run both recipes from it; no latency (see :func:`time_models`)."""
    import torch

    from compression.detection_train import DetectionTrainConfig, fit_yolo_anchors, train_detector
    from compression.pipeline import run_recipe
    from compression.recipe import parse_recipe
    from compression.stage import ArchSpec, ModelState
    from compression.zoo import create_model

    torch.set_num_threads(THREADS)
    out = OUT / budget.name / f"seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    bundle = load_data(budget)
    torch.manual_seed(seed)
    options = {"width": budget.width, "input_size": budget.input_size}
    module = create_model(ARCH, num_classes=bundle.num_classes, in_channels=3, **options)
    anchors = fit_yolo_anchors(module, bundle, seed=0)
    cfg = DetectionTrainConfig(
        epochs=budget.base_epochs,
        batch_size=budget.batch_size,
        lr=budget.base_lr,
        warmup_epochs=1.0,
        flip=False,
        scale_range=(0.75, 1.25),
        seed=seed,
        val_every=budget.val_every,
    )
    row: dict[str, Any] = {"seed": seed, "load_start": list(os.getloadavg())}
    wall0, cpu0 = time.monotonic(), time.process_time()
    history = train_detector(
        module, bundle, cfg, progress=lambda f, msg, r: log(f"seed {seed} base: {msg}")
    )
    row["base_train_cpu_s"] = time.process_time() - cpu0
    row["base_train_wall_s"] = time.monotonic() - wall0
    row["base_curve"] = [
        {k: r[k] for k in ("epoch", "loss", "val_map50") if k in r} for r in history.epochs
    ]
    row["anchors"] = [[list(a) for a in level] for level in anchors]
    state = ModelState(
        input_shape=(3, budget.input_size, budget.input_size),
        num_classes=bundle.num_classes,
        task="detection",
        module=module,
        arch=ArchSpec(ARCH, bundle.num_classes, 3, tuple(sorted(options.items()))),
    )
    for arm, recipe_dict in recipes(budget, seed).items():
        log(f"seed {seed}: recipe {arm} ...")
        wall0, cpu0 = time.monotonic(), time.process_time()
        run_dir = out / arm
        run_recipe(parse_recipe(recipe_dict), state, bundle, run_dir, device="cpu", restart=True)
        report = json.loads((run_dir / "report.json").read_text())
        row[f"{arm}_cpu_s"] = time.process_time() - cpu0
        row[f"{arm}_wall_s"] = time.monotonic() - wall0
        row["baseline"] = _state_row(run_dir, report["baseline"])
        stages = []
        for stage in report["stages"]:
            s = _state_row(run_dir, stage["metrics"])
            s["method"] = stage["method"]
            s["cpu_s"] = stage.get("duration_s")
            s["method_metrics"] = {
                k: v
                for k, v in (stage.get("method_metrics") or {}).items()
                if isinstance(v, int | float)
            }
            stages.append(s)
        row[arm] = stages
        log(
            f"seed {seed} {arm}: "
            + ", ".join(f"{s['method']} mAP@0.5 {s['map50']:.3f} MACs {s['macs']}" for s in stages)
        )
    row["load_end"] = list(os.getloadavg())
    return row


def models_of(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The three timed states of one seed: control fp32, pruned fp32 (after its fine-tune),
    pruned int8."""
    return {"control": run["control"][-1], "pruned": run["pruned"][-2], "int8": run["pruned"][-1]}


def time_models(raw: dict[str, Any]) -> None:
    """Every seed's three models in one interleaved call (network alone, with a per-op profile)
    and one end-to-end call; fills ``p50_ms``/``iqr_ms``/``e2e_*``/``ops_ms`` in place."""
    from compression.latency import measure_latency_isolated
    from compression.metrics import letterboxed_inputs, measure_detection_latency_isolated

    budget = raw["budget"]
    rows = [m for r in raw["runs"] for m in models_of(r).values()]
    paths = [str(ROOT / m["onnx"]) for m in rows]
    size = budget["input_size"]
    load_before = os.getloadavg()
    log(f"timing {len(paths)} models (network alone, interleaved) ...")
    net = measure_latency_isolated(
        paths,
        input_shapes=(1, 3, size, size),
        threads=THREADS,
        warmup=10,
        runs=budget["latency_runs"],
        rounds=budget["latency_rounds"],
        profile=True,
    )
    load_mid = os.getloadavg()
    log("timing end to end (network + numpy decode + NMS) ...")
    bundle = load_data(Budget(**{**budget, "seeds": tuple(budget["seeds"])}))
    e2e = measure_detection_latency_isolated(
        paths,
        letterboxed_inputs(bundle.test, size, 1),
        threads=THREADS,
        warmup=10,
        runs=budget["latency_runs"],
        rounds=budget["latency_rounds"],
    )
    for m, a, b in zip(rows, net, e2e, strict=True):
        m["p50_ms"], m["iqr_ms"] = a.p50_ms, a.iqr_ms
        m["e2e_p50_ms"], m["e2e_iqr_ms"] = b.p50_ms, b.iqr_ms
        m["ops_ms"] = dict(sorted(a.op_profile_ms.items(), key=lambda kv: -kv[1]))
    raw["timing"] = {
        "load_before": list(load_before),
        "load_mid": list(load_mid),
        "load_after": list(os.getloadavg()),
        "hardware": asdict(net[0].hardware),
        "ort": net[0].ort_version,
        "models": len(rows),
    }


def seed_summary(run: dict[str, Any]) -> dict[str, float]:
    m = models_of(run)
    c, p, q = m["control"], m["pruned"], m["int8"]
    out = {
        "base": run["baseline"]["map50"] * 100,
        "control": c["map50"] * 100,
        "pruned": p["map50"] * 100,
        "int8": q["map50"] * 100,
        "mac_reduction": c["macs"] / p["macs"],
        "prune_drop": (c["map50"] - p["map50"]) * 100,
        "int8_drop": (p["map50"] - q["map50"]) * 100,
    }
    if c.get("p50_ms") and p.get("p50_ms") and q.get("p50_ms"):
        out["prune_speedup"] = c["p50_ms"] / p["p50_ms"]
        out["int8_speedup"] = p["p50_ms"] / q["p50_ms"]
        out["prune_speedup_e2e"] = c["e2e_p50_ms"] / p["e2e_p50_ms"]
        out["int8_speedup_e2e"] = p["e2e_p50_ms"] / q["e2e_p50_ms"]
    return out


def intro_and_rules(b: dict[str, Any]) -> list[str]:
    sparsity, ft = b.get("sparsity_epochs", 0), b["ft_epochs"]
    lambdas = b.get("sparsity_lambdas") or [0.0]
    if sparsity:
        cut = (
            f"`bn_scale` after {sparsity} epochs of sparsity training inside the stage (the YOLO "
            f"loss plus `sparsity_lambda` x sign(gamma) on every BN scale, AdamW lr {b['ft_lr']:g}"
            f", as SlimYOLOv3), `target_mac_reduction` {b['target_mac_reduction']:g}, "
            f"`round_to` {b.get('round_to', 8)}"
        )
        choice = (
            f" One pruned recipe runs per `sparsity_lambda` in {list(lambdas)}; the one with the "
            "best mean **val** mAP@0.5 after its fine-tune is reported (a lead under 0.5 pt goes "
            "to the smaller lambda), and test is read only for it. The control fine-tunes "
            f"{sparsity + ft} epochs = the pruned arm's {sparsity} sparsity + {ft} fine-tuning "
            "epochs, so extra training is not counted as pruning's."
        )
    else:
        cut = (
            f"`bn_scale`, `target_mac_reduction` {b['target_mac_reduction']:g}, no sparsity "
            "training"
        )
        choice = ""
    return [
        "`benchmarks/detection_compress_bench.py`: issue 15's two compression targets on the zoo's "
        f"`{ARCH}` (Darknet-53, three levels) at width {b['width']:g}, input {b['input_size']} px, "
        "on the built-in `mnist_scenes` (generated from seed 0 for every seed; the seed changes "
        "the initial weights, batch order and augmentations). Per seed the baseline is trained "
        "from scratch with `train_detector` (k-means anchors of the train boxes, AdamW lr "
        f"{b['base_lr']:g}, {b['base_epochs']} epochs of batch {b['batch_size']}, 1 warm-up "
        "epoch then a cosine, scale jitter 0.75-1.25, no flip). From that trained baseline two "
        "recipes run through `run_recipe` (the pipeline `edgeslim compress` runs): **control** = "
        f"`finetune` {sparsity + ft} epochs (Adam lr {b['ft_lr']:g}, the pipeline's detection "
        f"fine-tune: warm-up, {'flips' if b.get('ft_flip', True) else 'no flip'}, scale "
        "jitter), unpruned; **pruned** = `channel_pruning` "
        f"({cut}, heads protected on inputs and outputs) -> `finetune` {ft} epochs -> "
        f"`ptq_int8` (static, QDQ, calibrated on {b['calibration_samples']} train images).{choice}"
        " Scores are the "
        "pipeline's test mAP@0.5 (`evaluate_detector`, torchmetrics with `faster_coco_eval`; the "
        "int8 model through ONNX Runtime). Latency is timed after all training: every seed's "
        "control fp32, pruned fp32 and pruned int8 ONNX side by side in one interleaved "
        f"`measure_latency_isolated` call (network alone, batch 1, {THREADS} ORT thread, "
        f"{b['latency_rounds']} rounds of {b['latency_runs']} runs, p50 = median of the round "
        "medians, IQR across rounds) and one `measure_detection_latency_isolated` call (end to "
        "end: network + numpy decode + NMS on test images). The settings are fixed in the script "
        "(nothing was chosen on test).",
        "",
        "**Rules (fixed before the numbers):**",
        "",
        f"1. **Pruning** PASS if every seed's MAC reduction (control MACs / pruned MACs) is >= "
        f"{PRUNE_MIN_MAC_REDUCTION:g}x, the mean drop (control - pruned fp32 test mAP@0.5) is <= "
        f"{PRUNE_MAX_DROP:g} pt, and the mean speedup (control p50 / pruned p50, network alone) is "
        f">= {PRUNE_SPEEDUP_SHARE:g} x the mean MAC reduction.",
        f"2. **int8** PASS if the mean drop (pruned fp32 - pruned int8 test mAP@0.5) is <= "
        f"{INT8_MAX_DROP:g} pt and the mean speedup (pruned fp32 p50 / int8 p50, network alone, "
        f"batch 1) is >= {INT8_MIN_SPEEDUP:g}x.",
        "3. Verdicts need >= 3 seeds; with fewer the section says so and gives none.",
        "",
    ]


def render_rules_only(reason: str) -> str:
    return "\n".join([*intro_and_rules(asdict(FULL)), f"**Not measured yet**: {reason}"])


def _f(x: float | None, fmt: str = ".2f") -> str:
    return "—" if x is None else format(x, fmt)


def selection_lines(raw: dict[str, Any]) -> list[str]:
    """The lambda choice on val (empty with one pruned arm)."""
    sel = raw.get("selection")
    if not sel:
        return []
    lines = [
        "### The sparsity lambda, chosen on val (test not read for the others)",
        "",
        "| pruned arm | val mAP@0.5 after its fine-tune, per seed (%) | mean | chosen |",
        "|---|---|---|---|",
    ]
    for arm, vals in sel["val_map50"].items():
        lines.append(
            f"| `{arm}` | {' / '.join(f'{x:.2f}' for x in vals)} | {mean(vals):.2f} | "
            f"{'**yes**' if arm == sel['chosen'] else ''} |"
        )
    return [*lines, ""]


def render(raw: dict[str, Any]) -> str:
    b, runs, env, timing = raw["budget"], raw["runs"], raw["env"], raw["timing"]
    sums = [seed_summary(r) for r in runs]

    def col(k: str) -> list[float]:
        return [s[k] for s in sums if k in s]

    macr, pdrop, psp = col("mac_reduction"), col("prune_drop"), col("prune_speedup")
    idrop, isp = col("int8_drop"), col("int8_speedup")
    enough = len(runs) >= 3
    prune_ok = (
        min(macr) >= PRUNE_MIN_MAC_REDUCTION
        and mean(pdrop) <= PRUNE_MAX_DROP
        and mean(psp) >= PRUNE_SPEEDUP_SHARE * mean(macr)
    )
    int8_ok = mean(idrop) <= INT8_MAX_DROP and mean(isp) >= INT8_MIN_SPEEDUP

    def v(ok: bool) -> str:
        return verdict(ok) if enough else f"no verdict ({len(runs)} seed(s) of the 3 required)"

    cpu = {
        k: [r[f"{k}_cpu_s"] / 60 for r in runs]
        for k in ("base_train", "control", "pruned")
        if all(f"{k}_cpu_s" in r for r in runs)
    }
    wall = [(r["base_train_wall_s"] + r["control_wall_s"] + r["pruned_wall_s"]) / 60 for r in runs]
    loads = [x for r in runs for x in (r["load_start"][0], r["load_end"][0])]
    lines = [
        *intro_and_rules(b),
        f"Measured {raw['date']} on {env['cpu']}, {env['usable_cores']} usable cores, torch "
        f"{env['torch']} ({THREADS} thread per process), ONNX Runtime {timing['ort']}; "
        f"{len(runs)} seed(s) ({', '.join(str(r['seed']) for r in runs)}), "
        f"{raw.get('parallel_note', 'one process per seed')}. {raw['train_images']} train, "
        f"{raw['val_images']} val, {raw['test_images']} test images. CPU time per seed: "
        + ", ".join(f"{k.replace('_', ' ')} {pm(v_, 1)} min" for k, v_ in cpu.items())
        + f"; wall {pm(wall, 1)} min per seed; 1-min load average during training "
        f"{min(loads):.1f} to {max(loads):.1f} on 2 shared cores; during the timing "
        f"{timing['load_before'][0]:.1f} / {timing['load_mid'][0]:.1f} / "
        f"{timing['load_after'][0]:.1f} (before / between the two calls / after).",
        "",
        *selection_lines(raw),
        "### Per seed (test mAP@0.5 in %, network-alone p50 in ms with IQR)",
        "",
        "| seed | baseline | control | pruned fp32 | int8 | MACs control -> pruned | "
        "MAC reduction | control p50 | pruned p50 | int8 p50 | prune speedup | int8 speedup |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r, s in zip(runs, sums, strict=True):
        m = models_of(r)
        c, p, q = m["control"], m["pruned"], m["int8"]
        lines.append(
            f"| {r['seed']} | {s['base']:.1f} | {s['control']:.1f} | {s['pruned']:.1f} | "
            f"{s['int8']:.1f} | {c['macs'] / 1e6:.1f}M -> {p['macs'] / 1e6:.1f}M | "
            f"{s['mac_reduction']:.2f}x | {_f(c.get('p50_ms'))} ({_f(c.get('iqr_ms'))}) | "
            f"{_f(p.get('p50_ms'))} ({_f(p.get('iqr_ms'))}) | "
            f"{_f(q.get('p50_ms'))} ({_f(q.get('iqr_ms'))}) | "
            f"{_f(s.get('prune_speedup'))}x | {_f(s.get('int8_speedup'))}x |"
        )
    lines += [
        f"| mean ± sd | {pm(col('base'), 1)} | {pm(col('control'), 1)} | "
        f"{pm(col('pruned'), 1)} | {pm(col('int8'), 1)} | | {pm(macr)}x | | | | "
        f"{pm(psp)}x | {pm(isp)}x |",
        "",
        "### Verdicts",
        "",
        "| target | measured (mean ± sd) | rule | verdict |",
        "|---|---|---|---|",
        f"| pruning: MAC reduction | {pm(macr)}x (min {min(macr):.2f}x) | every seed >= "
        f"{PRUNE_MIN_MAC_REDUCTION:g}x | |",
        f"| pruning: mAP@0.5 drop vs control | {pm(pdrop)} pt | mean <= {PRUNE_MAX_DROP:g} pt | |",
        f"| pruning: speedup | {pm(psp)}x (needs >= {PRUNE_SPEEDUP_SHARE * mean(macr):.2f}x) | "
        f"mean >= {PRUNE_SPEEDUP_SHARE:g} x MAC reduction | |",
        f"| **pruning (all three)** | | | {v(prune_ok)} |",
        f"| int8: mAP@0.5 drop vs pruned fp32 | {pm(idrop)} pt | mean <= {INT8_MAX_DROP:g} pt | |",
        f"| int8: speedup at batch 1 | {pm(isp)}x | mean >= {INT8_MIN_SPEEDUP:g}x | |",
        f"| **int8 (both)** | | | {v(int8_ok)} |",
        "",
        "Each part on its own: MAC reduction "
        + ("met" if min(macr) >= PRUNE_MIN_MAC_REDUCTION else "missed")
        + f", pruning drop {'met' if mean(pdrop) <= PRUNE_MAX_DROP else 'missed'}"
        + f" ({mean(pdrop) - PRUNE_MAX_DROP:+.2f} pt against the limit), pruning speedup "
        + ("met" if mean(psp) >= PRUNE_SPEEDUP_SHARE * mean(macr) else "missed")
        + f" ({mean(psp) / mean(macr):.2f} of the MAC reduction), int8 drop "
        + ("met" if mean(idrop) <= INT8_MAX_DROP else "missed")
        + f" ({mean(idrop) - INT8_MAX_DROP:+.2f} pt against the limit), int8 speedup "
        + ("met" if mean(isp) >= INT8_MIN_SPEEDUP else "missed")
        + f" ({mean(isp):.2f}x of {INT8_MIN_SPEEDUP:g}x).",
        "",
        "Where the pruned model's mAP comes from: right after `channel_pruning` ("
        + (
            f"after {b['sparsity_epochs']} sparsity epochs"
            if b.get("sparsity_epochs")
            else "no sparsity training"
        )
        + ", before its fine-tune) the test mAP@0.5 is "
        f"{pm([r['pruned'][0]['map50'] * 100 for r in runs])} %; the fine-tune brings it to "
        f"{pm(col('pruned'), 1)} %, {mean(col('pruned')) - mean(col('base')):+.2f} pt against the "
        "trained baseline before any fine-tune, while the same fine-tune moves the unpruned "
        f"control {mean(col('control')) - mean(col('base')):+.2f} pt.",
        "",
        "End to end (network + numpy decode + NMS, batch 1, same interleaving): control "
        f"{pm([models_of(r)['control']['e2e_p50_ms'] for r in runs])} ms, pruned fp32 "
        f"{pm([models_of(r)['pruned']['e2e_p50_ms'] for r in runs])} ms, int8 "
        f"{pm([models_of(r)['int8']['e2e_p50_ms'] for r in runs])} ms; speedups "
        f"{pm(col('prune_speedup_e2e'))}x (pruning) and {pm(col('int8_speedup_e2e'))}x (int8).",
        "",
    ]
    r0 = runs[0]
    m0 = models_of(r0)
    lines += [
        f"Where the time goes (seed {r0['seed']}, ms per inference by ONNX op type, from ORT's "
        "profiler in a separate session of 10 runs; its per-node overhead inflates the sums, so "
        "compare the ops within a row, not the sums with the p50s):",
        "",
        "| model | " + " | ".join(["op 1", "op 2", "op 3", "op 4", "op 5"]) + " | sum |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("control", "pruned", "int8"):
        ops = m0[name].get("ops_ms") or {}
        top = list(ops.items())[:5]
        cells = [f"{k} {val:.2f}" for k, val in top] + [""] * (5 - len(top))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {sum(ops.values()):.2f} |")
    mm = r0["pruned"][0].get("method_metrics", {})
    lines += [
        "",
        "Per seed, sizes: "
        + "; ".join(
            f"seed {r['seed']}: params {models_of(r)['control']['params']:,} -> "
            f"{models_of(r)['pruned']['params']:,}, ONNX "
            f"{models_of(r)['control']['onnx_bytes'] / 1e6:.2f} -> "
            f"{models_of(r)['pruned']['onnx_bytes'] / 1e6:.2f} -> "
            f"{models_of(r)['int8']['onnx_bytes'] / 1e6:.2f} MB"
            for r in runs
        )
        + ". Channel pruning's own figures (seed "
        f"{r0['seed']}): " + ", ".join(f"{k} {val:.3g}" for k, val in mm.items()) + ".",
        "",
        "Baseline training curve (mean over seeds, val mAP@0.5 where measured): "
        + ", ".join(
            f"epoch {int(runs[0]['base_curve'][i]['epoch'])}: loss "
            f"{mean([r['base_curve'][i]['loss'] for r in runs]):.2f}"
            + (
                f", val {mean([r['base_curve'][i]['val_map50'] for r in runs]):.3f}"
                if "val_map50" in runs[0]["base_curve"][i]
                else ""
            )
            for i in range(len(runs[0]["base_curve"]))
            if "val_map50" in runs[0]["base_curve"][i] or i == 0
        )
        + ". Val mAP@0.5 of the fine-tuned states (mean): control "
        f"{mean([models_of(r)['control']['val_map50'] for r in runs]):.3f}, pruned "
        f"{mean([models_of(r)['pruned']['val_map50'] for r in runs]):.3f}, int8 "
        f"{mean([models_of(r)['int8']['val_map50'] or 0 for r in runs]):.3f}.",
    ]
    if raw.get("note"):
        lines += ["", raw["note"]]
    lines += [
        "",
        "Re-run: one `--seeds N --results FILE` process per seed (two at a time on 2 cores), then "
        "`--merge FILE ...` times every model in one call and writes this section; `--quick` is a "
        "smoke run (doc untouched); `--render-only` re-renders from "
        "`benchmarks/results/detection_compress.json`.",
    ]
    return "\n".join(lines) + "\n"


def base_raw(budget: Budget) -> dict[str, Any]:
    bundle = load_data(budget)
    return {
        "budget": asdict(budget),
        "env": environment(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "train_images": len(bundle.train),
        "val_images": len(bundle.val),
        "test_images": len(bundle.test),
        "runs": [],
    }


def merge(files: list[Path]) -> dict[str, Any]:
    parts = [json.loads(f.read_text()) for f in files]
    budgets = {json.dumps({k: v for k, v in p["budget"].items() if k != "seeds"}) for p in parts}
    if len(budgets) != 1:
        raise SystemExit("the files were measured with different budgets; not merged")
    raw = dict(parts[0])
    raw["runs"] = sorted((r for p in parts for r in p["runs"]), key=lambda r: r["seed"])
    raw["budget"] = {**parts[0]["budget"], "seeds": [r["seed"] for r in raw["runs"]]}
    return raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (~1 min); doc untouched")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2)")
    parser.add_argument(
        "--results", type=Path, default=None, help="train only; write the seeds' runs here"
    )
    parser.add_argument("--merge", nargs="+", type=Path, help="runs' files -> time, results, doc")
    parser.add_argument(
        "--note", default=None, help="with --merge or --render-only: a paragraph for the section"
    )
    parser.add_argument("--parallel-note", default=None, help="with --merge: how seeds were run")
    parser.add_argument("--render-only", action="store_true", help="doc from the results file")
    parser.add_argument("--rules-only", metavar="REASON", help="the rules and why no numbers")
    parser.add_argument("--doc", type=Path, default=DOC)
    args = parser.parse_args()
    if args.rules_only:
        replace_section(args.doc, SECTION, HEADING, render_rules_only(args.rules_only))
        return
    if args.render_only:
        raw = json.loads(RESULTS.read_text())
        if args.note is not None:  # replaces the section's note ("" removes it)
            raw["note"] = args.note
            RESULTS.write_text(json.dumps(raw, indent=1))
        replace_section(args.doc, SECTION, HEADING, render(raw))
        log(f"wrote {args.doc}")
        return
    if args.merge:
        raw = merge(args.merge)
        choose_lambda(raw)
        if args.note:
            raw["note"] = args.note
        if args.parallel_note:
            raw["parallel_note"] = args.parallel_note
        time_models(raw)
        RESULTS.write_text(json.dumps(raw, indent=1))
        body = render(raw)
        print(body)
        replace_section(args.doc, SECTION, HEADING, body)
        log(f"wrote {args.doc} and {RESULTS}")
        return
    budget = QUICK if args.quick else FULL
    if args.seeds:
        budget = dataclasses.replace(budget, seeds=tuple(int(s) for s in args.seeds.split(",")))
    raw = base_raw(budget)
    results = args.results or (OUT / f"{budget.name}.json")
    results.parent.mkdir(parents=True, exist_ok=True)
    for seed in budget.seeds:
        raw["runs"].append(run_seed(budget, seed))
        results.write_text(json.dumps(raw, indent=1))
    if args.results is not None:
        log(f"trained; merge {results} with the other seeds' files (--merge) to time and write")
        return
    choose_lambda(raw)
    time_models(raw)
    results.write_text(json.dumps(raw, indent=1))
    body = render(raw)
    print(body)
    if not args.quick:
        RESULTS.write_text(json.dumps(raw, indent=1))
        replace_section(args.doc, SECTION, HEADING, body)
        log(f"wrote {args.doc} and {RESULTS}")


if __name__ == "__main__":
    main()
