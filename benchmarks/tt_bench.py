"""Adaptive Tensor-Train on MobileNetV2's 1x1 convs (seed 001), with decision rules.

Per seed: MobileNetV2 (zoo ``mobilenet_v2``, one input channel) is trained from scratch with a
``finetune`` stage until its val accuracy stops rising (the recipe was chosen on val with
``--probe-base``); then each fine-tuning candidate (:data:`FULL`'s ``candidates``) runs on that
dense start: ``ft20`` is ``tt_decomposition`` on the 1x1 convs with 20 fine-tuning epochs,
``kd20`` is ``tt_decomposition`` without fine-tuning followed by a ``distillation`` stage (Hinton
KD from the dense start) for 20 epochs. The control, one per seed and shared by the candidates,
is the dense start fine-tuned for the same epochs at the same lr. Everything goes through
``parse_recipe`` + ``run_recipe`` exactly as a user's job does. The candidate with the best mean
**val** accuracy is chosen; only its test accuracy is read (the pipeline's figure on the data
set's fixed **test** split). The per-layer FLOPs of the greedy order, the DP order and the dense
layer come from the TT stage's ``extras.tensor_train`` table in report.json. Latency of the
dense and the TT model comes from one interleaved call of
:func:`compression.latency.measure_latency_isolated` (ORT on the CPU, batch 1, 2 threads,
torch-free children, median and IQR across rounds). The rules are written in the doc before the
numbers and evaluated on the measured means, so each can come out FAIL.

The per-seed processes run with one torch thread and one BLAS/OpenMP thread: TT-SVD is numpy
SVDs, which ``torch.set_num_threads`` does not limit, so without the variables below each
process starts one OpenBLAS thread per core and parallel seeds oversubscribe the CPU (the script
sets them itself for ``--seed`` when they are unset; the usage lines say so explicitly).

    T="OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1"
    env $T nice -n 10 .venv/bin/python benchmarks/tt_bench.py --quick   # smoke run, doc untouched
    env $T nice -n 10 .venv/bin/python benchmarks/tt_bench.py           # full run, writes the doc
    # or the seeds as separate processes (one thread each; at most as many as free cores),
    # then the latency timing and the doc once every training is done:
    env $T nice -n 10 .venv/bin/python benchmarks/tt_bench.py --seed 0 &   # ... --seed 1, 2
    nice -n 10 .venv/bin/python benchmarks/tt_bench.py --finish
    # a dense-start recipe's val curve (test not read), OPTIMIZER:LR:EPOCHS:
    env $T .venv/bin/python benchmarks/tt_bench.py --seed 2 --probe-base adam:0.002:40
    .venv/bin/python benchmarks/tt_bench.py --write-rules   # the section's rules, before a run
    .venv/bin/python benchmarks/tt_bench.py --render-only benchmarks/results/tt.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import resource
import shutil
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

BLAS_THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
if "--seed" in sys.argv:  # before numpy is imported: OpenBLAS reads these once, at load
    for _var in BLAS_THREADS:
        os.environ.setdefault(_var, "1")

import opt_einsum as oe  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._docs import replace_section  # noqa: E402
from compression.checkpoint import load_checkpoint  # noqa: E402
from compression.datasets import DatasetBundle, load_digits, load_mnist  # noqa: E402
from compression.latency import measure_latency_isolated  # noqa: E402
from compression.pipeline import RunReport, run_recipe  # noqa: E402
from compression.recipe import parse_recipe  # noqa: E402
from compression.stage import ArchSpec, ModelState  # noqa: E402
from compression.tensor_train import (  # noqa: E402
    chain_spec,
    left_to_right_path,
    max_ranks,
    mode_pairs,
    plan_order,
    tt_params,
)
from compression.zoo import create_model  # noqa: E402

SECTION = "tt"
HEADING = "## Adaptive Tensor-Train on MobileNetV2's 1x1 convs (CPU, decision rules)"
ARCH = "mobilenet_v2"
THREADS = 2

# The rules, fixed before any number is seen; render() states them before the tables.
MAX_PARAM_SHARE = 0.30  # whole-model parameters after TT / before (the thesis: 20-30 %)
MAX_DROP = 1.0  # test accuracy points, reference = the dense model trained for the same epochs
# The history run's mean dense control on test (3 extra epochs at lr 0.01; see HISTORY): a
# control far below it means this run's reference is undertrained, which the doc then says.
EARLIER_DENSE_CONTROL = 94.99
MAX_DP_GREEDY = 0.6  # sum of DP FLOPs / sum of greedy FLOPs over layers where the orders differ
# The method's settings, fixed before the numbers as well: every 1x1 conv (the classifier stays
# dense), reconstruction budget 0.8 (at 30 % of the parameters there is little room: 0.8 keeps
# about 24 % of the 1x1 weights, which is what the 30 % share allows), storage first:
# dense_fallback off, so a layer whose best order is slower than the dense conv stays a TT layer
# (the table says which ones).
TT_CONFIG: dict[str, Any] = {
    "rank_criterion": "error",
    "max_error": 0.8,
    "dense_fallback": False,
    "balance_cores": True,
    "batch_size": 32,
}
# Hinton KD from the dense model the recipe started from ("input": the pipeline resolves it to
# the run's input model, i.e. the seed's trained dense start, not the TT model).
KD_CONFIG: dict[str, Any] = {
    "teacher": "input",
    "temperature": 4.0,
    "alpha": 0.9,
    "batch_size": 32,
}
# One weight decay for every fine-tuning here (the TT stage's default), so the candidates and
# the dense control differ only in the model and the loss.
WEIGHT_DECAY = 1e-4
# RULE (choice of the fine-tuning recipe), fixed before any number: every candidate of the
# budget runs on every seed from the same dense start; the one with the best mean **val**
# accuracy after its fine-tuning is reported, and only its test accuracy is read (rule 1 is
# judged on it, rules 2 and 3 on its layers and models). Test accuracy plays no part in the
# choice. The control of rule 1 is one dense run per seed, shared by the candidates: the dense
# start fine-tuned (plain cross-entropy) for the candidates' epochs at their lr and batch.
CHOICE_RULE = (
    "Every candidate ran on every seed from the same dense start, and the one with the best "
    "mean **val** accuracy after its fine-tuning is the one reported below; test accuracy was "
    "read only for the chosen candidate (rules 1-3 are judged on it). The control of rule 1 is "
    "one dense run per seed shared by the candidates: the dense start fine-tuned with plain "
    "cross-entropy for the candidates' epochs at their lr, batch size and weight decay."
)


def epochs_text(n: int) -> str:
    return f"{n} epoch{'' if n == 1 else 's'}"


@dataclass(frozen=True)
class Candidate:
    """One way to recover accuracy after TT-SVD, run on every seed's dense start.

    ``finetune``: ``tt_decomposition`` fine-tunes the TT model itself for ``epochs`` epochs
    (cross-entropy). ``distill``: ``tt_decomposition`` with ``finetune_epochs`` 0, then a
    ``distillation`` stage (:data:`KD_CONFIG`) for ``epochs`` epochs.
    """

    name: str
    kind: Literal["finetune", "distill"]
    epochs: int
    lr: float = 0.01

    def stages(self) -> list[dict[str, Any]]:
        tt_epochs = self.epochs if self.kind == "finetune" else 0
        tt = {
            "method": "tt_decomposition",
            "config": {
                **TT_CONFIG,
                "lr": self.lr,
                "weight_decay": WEIGHT_DECAY,
                "finetune_epochs": tt_epochs,
            },
        }
        if self.kind == "finetune":
            return [tt]
        kd = {
            "method": "distillation",
            "config": {
                **KD_CONFIG,
                "epochs": self.epochs,
                "lr": self.lr,
                "weight_decay": WEIGHT_DECAY,
            },
        }
        return [tt, kd]

    def describe(self) -> str:
        if self.kind == "finetune":
            return f"TT-SVD, then {epochs_text(self.epochs)} of cross-entropy fine-tuning, lr {self.lr}"
        return (
            f"TT-SVD without fine-tuning, then {epochs_text(self.epochs)} of Hinton KD from the dense "
            f"start (T {KD_CONFIG['temperature']:g}, alpha {KD_CONFIG['alpha']}), lr {self.lr}"
        )


@dataclass(frozen=True)
class Budget:
    name: str
    dataset: str
    size: int
    seeds: tuple[int, ...]
    base_epochs: int
    base_lr: float
    candidates: tuple[Candidate, ...]
    latency_runs: int
    latency_rounds: int
    subset: tuple[int, int, int] | None = None
    base_optimizer: str = "sgd"

    def candidate(self, name: str) -> Candidate:
        return next(c for c in self.candidates if c.name == name)

    def control(self) -> tuple[int, float]:
        """(epochs, lr) of the one dense control per seed; the candidates must agree on both,
        or one shared control would not be a fair reference for each of them."""
        settings = {(c.epochs, c.lr) for c in self.candidates}
        if len(settings) != 1:
            raise ValueError(f"candidates differ in epochs or lr: {sorted(settings)}")
        return settings.pop()


FULL = Budget(
    "full",
    dataset="digits",
    size=16,
    seeds=(0, 1, 2),
    # The dense starts' recipe was chosen on val by --probe-base (see DENSE_STARTS).
    base_epochs=40,
    base_lr=0.002,
    base_optimizer="adam",
    # 20 epochs: the run before (same starts, 10 epochs) ended with kd10's val still rising
    # (seed 2: 94.4 -> 95.5 % over its last two epochs) and rule 1 at a 1.86 pt drop.
    candidates=(Candidate("ft20", "finetune", 20), Candidate("kd20", "distill", 20)),
    latency_runs=50,
    latency_rounds=5,
)
QUICK = Budget(
    "quick",
    dataset="digits",
    size=16,
    seeds=(0,),
    base_epochs=1,
    base_lr=0.05,
    candidates=(Candidate("ft1", "finetune", 1), Candidate("kd1", "distill", 1)),
    latency_runs=10,
    latency_rounds=2,
    subset=(256, 64, 128),
)


def load_data(budget: Budget) -> DatasetBundle:
    loader = load_digits if budget.dataset == "digits" else load_mnist
    data = loader(size=budget.size)
    if budget.subset:
        tr, va, te = budget.subset
        data = data.subset(train=tr, val=va, test=te, seed=0)
    return data


def fresh(data: DatasetBundle, seed: int) -> ModelState:
    torch.manual_seed(seed)
    c = data.input_shape[0]
    module = create_model(ARCH, num_classes=data.num_classes, in_channels=c)
    return ModelState(
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        module=module,
        arch=ArchSpec(ARCH, data.num_classes, c),
    )


def run(
    recipe: dict[str, Any],
    model: ModelState,
    data: DatasetBundle,
    out: Path,
    *,
    restart: bool = True,
) -> RunReport:
    full = {"eval": {"latency_runs": 0, "threads": THREADS}, **recipe}
    return run_recipe(parse_recipe(full), model, data, out, device="cpu", restart=restart)


def train_base(budget: Budget, data: DatasetBundle, seed: int, out: Path) -> RunReport:
    """The dense starting model of one seed; rerun into the same folder, it resumes (a finished
    run is read back, not retrained), so ``--base-only`` can train it ahead of the TT stage."""
    return run(
        {
            "name": "mobilenet_v2 from scratch",
            "seed": seed,
            "stages": [
                {
                    "method": "finetune",
                    "config": {
                        "epochs": budget.base_epochs,
                        "lr": budget.base_lr,
                        "optimizer": budget.base_optimizer,
                        "batch_size": 32,
                    },
                }
            ],
        },
        fresh(data, seed),
        data,
        out / f"base_s{seed}",
        restart=False,
    )


def probe_base(budget: Budget, data: DatasetBundle, seed: int, spec: str, out: Path) -> None:
    """Train one dense start with ``spec`` = ``OPTIMIZER:LR:EPOCHS`` and print its **val**
    accuracy after every epoch (test is not read): how the dense starts' recipe is chosen."""
    opt, lr, epochs = spec.split(":")
    probe = dataclasses.replace(
        budget, base_optimizer=opt, base_lr=float(lr), base_epochs=int(epochs)
    )
    name = f"probe_{opt}_{lr}_{epochs}"
    report = train_base(probe, data, seed, out / name)
    val = [round(h["val_acc"], 2) for h in report.stages[-1].history if "val_acc" in h]
    row = {"seed": seed, "spec": spec, "val": val, "last5_mean": statistics.fmean(val[-5:])}
    (out / f"{name}_s{seed}.json").write_text(json.dumps(row))
    print(json.dumps(row))


def cpu_s() -> float:
    """CPU seconds (user + system) of this process and its waited-for children so far."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        total += ru.ru_utime + ru.ru_stime
    return total


class LoadSampler:
    """The 1-minute load average, sampled every ``every`` seconds on a daemon thread while the
    ``with`` block runs (the doc states what the machine was doing next to the times)."""

    def __init__(self, every: float = 30.0) -> None:
        self.every = every
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(self.every):
                return

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict[str, float]:
        xs = self.samples or [os.getloadavg()[0]]
        return {"min": min(xs), "mean": statistics.fmean(xs), "max": max(xs), "n": len(xs)}


class Clock:
    """Wall and CPU seconds of one part of the work."""

    def __enter__(self) -> Clock:
        self.wall0, self.cpu0 = time.perf_counter(), cpu_s()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = cpu_s() - self.cpu0

    def times(self) -> dict[str, float]:
        return {"wall_s": self.wall, "cpu_s": self.cpu}


def control(
    budget: Budget, data: DatasetBundle, seed: int, out: Path, base_state: ModelState
) -> RunReport:
    """The dense start fine-tuned for the candidates' epochs at their lr, batch and weight decay
    (plain cross-entropy), so a TT model that merely got more training does not look better than
    it is. One per seed: the second candidate of a process reads the finished run back."""
    epochs, lr = budget.control()
    return run(
        {
            "name": "dense, same extra epochs",
            "seed": seed,
            "stages": [
                {
                    "method": "finetune",
                    "config": {
                        "epochs": epochs,
                        "lr": lr,
                        "batch_size": TT_CONFIG["batch_size"],
                        "weight_decay": WEIGHT_DECAY,
                    },
                }
            ],
        },
        base_state,
        data,
        out / f"dense_ctrl_s{seed}",
        restart=False,
    )


def one_seed(
    budget: Budget, data: DatasetBundle, seed: int, out: Path, candidate: Candidate
) -> dict[str, Any]:
    with Clock() as base_clock:
        base = train_base(budget, data, seed, out)
    base_state = load_checkpoint(out / f"base_s{seed}" / base.stages[-1].checkpoint)
    with Clock() as ctrl_clock:
        ctrl = control(budget, data, seed, out, base_state)
    with Clock() as tt_clock:
        tt = run(
            {
                "name": f"tt on 1x1 convs, {candidate.name}",
                "seed": seed,
                "stages": candidate.stages(),
            },
            base_state,
            data,
            out / f"tt_{candidate.name}_s{seed}",
        )
    tt_stage, last = tt.stages[0], tt.stages[-1]
    return {
        "seed": seed,
        "candidate": candidate.name,
        "recipe": candidate.stages(),
        "config": tt_stage.config,
        # val accuracy after the candidate's last training stage: what it is chosen on
        "tt_val": last.method_metrics["val_acc"],
        "tt_val_history": [h.get("val_acc") for h in last.history],
        "ctrl_val": ctrl.stages[-1].method_metrics["val_acc"],
        "trained_acc": base.final.accuracy,
        "base_acc": ctrl.final.accuracy,
        "tt_acc": tt.final.accuracy,
        "base_params": base.final.params,
        "tt_params": tt.final.params,
        "base_macs": base.final.macs,
        "tt_macs": tt.final.macs,
        "base_onnx": str(out / f"dense_ctrl_s{seed}" / "final.onnx"),
        "tt_onnx": str(out / f"tt_{candidate.name}_s{seed}" / "final.onnx"),
        "layers": tt_stage.extras["tensor_train"]["layers"],
        "method_metrics": tt_stage.method_metrics,
        # base and control: their cost where this call computed them, ~0 where read back
        "times": {
            "base": base_clock.times(),
            "control": ctrl_clock.times(),
            "tt": tt_clock.times(),
            "stages_s": [st.duration_s for st in tt.stages],
        },
    }


def conv1x1_params(rows: list[dict[str, Any]]) -> tuple[int, int]:
    before = sum(r["params_before"] for r in rows)
    after = sum(r["params_after"] or r["params_before"] for r in rows)
    return before, after


def orders_differ(row: dict[str, Any]) -> bool:
    """Whether the DP and the greedy *paths* differ on this TT layer.

    The report keeps FLOPs, not paths, so both orders are planned again from the row's modes,
    ranks and measured H x W (batch 1, as in the stage); the FLOPs must come out as reported,
    which checks that the comparison is made on the shapes the stage used.
    """
    plan = plan_order(
        row["kind"], row["out_modes"], row["in_modes"], row["ranks"], spatial=row["input_hw"]
    )
    if (plan.dp_flops, plan.greedy_flops) != (row["flops_dp"], row["flops_greedy"]):
        raise ValueError(f"{row['name']}: re-planned FLOPs differ from the report's")
    return plan.dp_path != plan.greedy_path


def dp_vs_greedy(rows: list[dict[str, Any]]) -> tuple[int, int, int, int]:
    """(layers where the orders differ, TT layers, sum DP FLOPs there, sum greedy FLOPs there)."""
    tt = [r for r in rows if r["action"] == "tt"]
    diff = [r for r in tt if orders_differ(r)]
    return (
        len(diff),
        len(tt),
        sum(r["flops_dp"] for r in diff),
        sum(r["flops_greedy"] for r in diff),
    )


# Rule 2's sweep: the same layers planned again with other core counts and input sizes.
SWEEP_CORES = (2, 3, 4)
SWEEP_PIXEL_SCALES = (1, 4, 16)  # H x W times these: the 16 px input, 32 px and 64 px


def _ranks_within(out_modes: Any, in_modes: Any, params: int) -> list[int] | None:
    """The largest uniform rank cap whose cores hold at most ``params`` weights."""
    limits = max_ranks(out_modes, in_modes)
    best = None
    for r in range(1, max(limits) + 1):
        ranks = [min(r, lim) for lim in limits]
        if tt_params(out_modes, in_modes, ranks) > params:
            break
        best = ranks
    return best


def dp_vs_left_to_right(rows: list[dict[str, Any]]) -> tuple[int, int, float | None]:
    """(layers where DP beats the naive order, TT layers, DP / naive FLOPs summed over those).

    The naive order is the one a TT layer runs without any search: the input through core 1,
    the result through core 2, and so on (``left_to_right_path``), costed by opt_einsum at the
    row's shapes like the other two.
    """
    tt = [r for r in rows if r["action"] == "tt"]
    differ = dp = naive = 0
    for row in tt:
        spec = chain_spec(
            row["kind"], row["out_modes"], row["in_modes"], row["ranks"], spatial=row["input_hw"]
        )
        path = left_to_right_path(len(row["out_modes"]))
        _, info = oe.contract_path(spec.equation, *spec.shapes(), shapes=True, optimize=path)
        cost = int(info.opt_cost)
        if cost != row["flops_dp"]:
            differ += 1
            dp += row["flops_dp"]
            naive += cost
    return differ, len(tt), (dp / naive if naive else None)


def order_sweep(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """DP against greedy on the same layers at the same parameter count, other shapes.

    For every TT layer of a run, each core count of ``SWEEP_CORES`` gets the largest uniform
    ranks whose cores hold no more weights than the stage's chosen cores, and is planned at the
    layer's measured H x W times each of ``SWEEP_PIXEL_SCALES``. Pure arithmetic (opt_einsum's
    FLOPs for batch 1), no weights: it asks whether rule 2's outcome is a property of the shapes
    this run chose or of the greedy optimiser on MobileNetV2's 1x1 convs.
    """
    out = []
    tt = [r for r in rows if r["action"] == "tt"]
    for d in SWEEP_CORES:
        for scale in SWEEP_PIXEL_SCALES:
            n = diff = dp = greedy = 0
            for row in tt:
                pairs = mode_pairs(math.prod(row["out_modes"]), math.prod(row["in_modes"]), d)
                if pairs is None:
                    continue
                out_modes, in_modes = pairs
                ranks = _ranks_within(out_modes, in_modes, row["params_after"])
                if ranks is None:
                    continue
                plan = plan_order(
                    row["kind"], out_modes, in_modes, ranks, spatial=row["input_hw"] * scale
                )
                n += 1
                if plan.dp_path != plan.greedy_path:
                    diff += 1
                    dp += plan.dp_flops
                    greedy += plan.greedy_flops
            out.append(
                {
                    "cores": d,
                    "pixel_scale": scale,
                    "layers": n,
                    "differ": diff,
                    "dp_greedy": dp / greedy if greedy else None,
                }
            )
    return out


def measure(results: list[dict[str, Any]], budget: Budget, data: DatasetBundle) -> list[float]:
    """Time every seed's dense and TT model in one interleaved call; returns the load average
    (1, 5, 15 min) before and after, which the doc states next to the latencies."""
    load = list(os.getloadavg())
    paths = [p for r in results for p in (r["base_onnx"], r["tt_onnx"])]
    lats = measure_latency_isolated(
        paths,
        input_shapes=(1, *data.input_shape),
        threads=THREADS,
        warmup=10,
        runs=budget.latency_runs,
        rounds=budget.latency_rounds,
    )
    it = iter(lats)
    for r in results:
        r["base_latency"] = asdict(next(it))
        r["tt_latency"] = asdict(next(it))
        r["base_nodes"], r["tt_nodes"] = onnx_nodes(r["base_onnx"]), onnx_nodes(r["tt_onnx"])
    return load + list(os.getloadavg())


def onnx_nodes(path: str) -> int:
    import onnx

    return len(onnx.load(path).graph.node)


def mean_sd(values: list[float]) -> tuple[float, float]:
    m = statistics.fmean(values)
    return m, (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: list[float], digits: int = 2, suffix: str = "") -> str:
    m, s = mean_sd(values)
    return f"{m:.{digits}f}{suffix} ± {s:.{digits}f}{suffix}"


def verdicts(results: list[dict[str, Any]]) -> dict[str, Any]:
    share = [r["tt_params"] / r["base_params"] for r in results]
    drop = [r["base_acc"] - r["tt_acc"] for r in results]
    ratios = []
    for r in results:
        _, _, dp, greedy = dp_vs_greedy(r["layers"])
        if greedy:
            ratios.append(dp / greedy)
    speed = [
        r["base_latency"]["p50_ms"] / r["tt_latency"]["p50_ms"]
        for r in results
        if "tt_latency" in r
    ]
    return {
        "param_share": statistics.fmean(share),
        "drop": statistics.fmean(drop),
        "params_pass": statistics.fmean(share) <= MAX_PARAM_SHARE
        and statistics.fmean(drop) <= MAX_DROP,
        "dp_greedy": statistics.fmean(ratios) if ratios else None,
        "dp_pass": bool(ratios) and statistics.fmean(ratios) <= MAX_DP_GREEDY,
        "speedup": statistics.fmean(speed) if speed else None,
    }


HISTORY = (
    "History (earlier runs of this section, same dense starts' recipe, `max_error` 0.8, "
    "`balance_cores`): with **3** fine-tuning epochs after TT-SVD the TT model kept 27.8 % of "
    "the parameters but lost **10.31 ± 2.48 pt** of test accuracy against its dense control "
    "(TT 84.68 ± 1.28 % vs dense 94.99 ± 1.21 %, seeds 0-2) → rule 1 FAIL; rule 2 DP/greedy "
    "0.786 → FAIL; the TT model ran at 0.45x the dense model's speed. That run chose the lr "
    "on val between 0.01 (TT val 81.66 %, dense control 91.95 %) and 0.05 (TT val 54.77 %, "
    "control 90.71 %); the run before it, identical but for unbalanced cores, had 80.92 % mean "
    "val and 82.54 % mean test. Why it dropped so far: the 30 % share forces the budget (the "
    "1x1 convs hold 95 % of the weights; at `max_error` 0.8 they keep 24 % of them and every "
    "layer loses about 64 % of its weight energy), so the TT model is in effect retrained from "
    "a poor start, and 3 epochs were too few for that. Its TT stage took 1900 s wall, most "
    "likely numpy/OpenBLAS thread oversubscription (3 processes, BLAS not limited by "
    "`torch.set_num_threads`, load ~7); profiled alone at 1 thread, TT-SVD is about 40 s and one "
    "fine-tuning epoch over the 1169 train images about 15 s of CPU, so this run fine-tunes "
    "longer, with every BLAS pool at one thread. The run after it (10 fine-tuning epochs, "
    "candidates `ft10` and `kd10`, `ft10` chosen on val 84.01 % against 72.49 %) retrained the "
    "dense starts with the same recipe (15 epochs SGD lr 0.05 from scratch), and they came out "
    "undertrained (test 88.30 / 88.58 / 52.65 %; seed 2's val swung between 57 and 81 % in "
    "epochs 5-9): its rule 1 read PASS (share 0.275, drop -5.94 ± 7.44 pt against controls of "
    "91.36 / 91.09 / 63.51 %), which is not evidence against a converged MobileNetV2, and was "
    "not counted; rule 2 0.791 FAIL; TT 0.17x the dense speed at load ~8. The next run "
    "(results commit 9f005d5) kept those candidates and trained the dense starts until val "
    "stopped rising (the recipe below; test 97.77 / 96.66 / 98.05 %): `kd10` was chosen on val "
    "(94.05 % against `ft10`'s 91.70 %, kd10's val still rising in its last epochs: 92.9 → "
    "92.9, 93.3 → 93.7, 94.4 → 95.5 %), and rule 1 **FAILED**: share 0.279, drop 1.86 ± 1.13 pt "
    "(TT 96.29 ± 1.16 % against controls of 98.14 ± 0.16 %); rule 2 0.786 FAIL; TT 0.38x the "
    "dense speed at load 1.6. This run doubles the fine-tuning to 20 epochs for both "
    "candidates and the control, decided after that verdict was known: it is a re-run after a "
    "FAIL, with the same starts, rules and choice rule."
)


# The probe that chose the dense starts' recipe (seed 2, the seed whose 15-epoch SGD start failed
# in the run before; val only; rule written before either probe ran).
DENSE_STARTS = (
    "Dense starts: trained until their val accuracy stops rising, with a recipe chosen on val "
    "before any TT number of this run. The rule, fixed before the probes ran: two 40-epoch "
    "recipes from scratch on seed 2 (whose 15-epoch SGD start reached only 52.65 % test in the "
    "run before), SGD lr 0.05 and AdamW lr 0.002 (batch 32, cosine); the higher mean val "
    "accuracy over the last 5 epochs wins, and a lead under 1 pt goes to SGD (the recipe "
    "already used). `python benchmarks/tt_bench.py --seed 2 --probe-base adam:0.002:40` prints "
    "the curve. Measured: AdamW 94.50 % (best 95.17 % at epoch 31; the last 10 epochs within "
    "94.05-95.17 %), SGD 89.74 % (best 90.71 % at epoch 35, still swinging by 3 pt). So the "
    "dense starts are AdamW lr 0.002 for 40 epochs; seed 2's start is the probe's run, read "
    "back (same recipe, same seed). The candidates and the control then fine-tune with SGD "
    "lr 0.01 as before."
)


OPTIMIZERS = {"sgd": "SGD", "adam": "AdamW"}


def intro_and_rules(b: dict[str, Any], payload: dict[str, Any] | None) -> list[str]:
    """The section's first part: setup, rules, choice rule, candidates and history; the same
    text before the run (``--write-rules``) and after it."""
    cands = [Candidate(**c) for c in b["candidates"]]
    images = (
        f" ({payload['images']['train']} train / {payload['images']['val']} val / "
        f"{payload['images']['test']} test images)"
        if payload
        else ""
    )
    ctrl_epochs, ctrl_lr = Budget(**{**b, "candidates": tuple(cands)}).control()
    lines = [
        "Written by `benchmarks/tt_bench.py`. MobileNetV2 (zoo `mobilenet_v2`, 1 input channel) "
        f"on `{b['dataset']}` at {b['size']}x{b['size']} pixels{images}, trained from scratch "
        f"for {epochs_text(b['base_epochs'])} ({OPTIMIZERS[b.get('base_optimizer', 'sgd')]}, lr "
        f"{b['base_lr']}, batch 32, cosine); then "
        f"`tt_decomposition` on the 1x1 convs with `{json.dumps(TT_CONFIG)}`, followed by one "
        "of the fine-tuning candidates below, all through `run_recipe`; seeds "
        f"{list(b['seeds'])}; accuracy on the fixed test split. `{b['dataset']}` and "
        f"{b['size']}x{b['size']} instead of 32x32 `mnist`: on this machine's 2 shared cores "
        "one MobileNetV2 epoch over 640 MNIST images at 32x32 took 210 s when this benchmark "
        "was prepared, too slow for 3 seeds.",
        "",
        "Fine-tuning candidates (weight decay "
        f"{WEIGHT_DECAY:g}, batch {TT_CONFIG['batch_size']}, SGD with cosine decay in each):",
        "",
    ]
    for c in cands:
        lines.append(f"- `{c.name}`: {c.describe()}.")
    lines += [
        f"- dense control (one per seed, shared by the candidates): the dense start fine-tuned "
        f"for {epochs_text(ctrl_epochs)} at lr {ctrl_lr} with plain cross-entropy.",
        "",
        "**Rules (fixed before the run):**",
        "",
        f"1. Parameters: the TT model keeps at most {MAX_PARAM_SHARE:.0%} of the dense model's "
        f"parameters (whole model, mean over seeds) and loses at most {MAX_DROP} point of test "
        "accuracy (mean over seeds) against the dense control, the dense start trained for the "
        "same extra epochs at the same lr (so extra training is not counted as TT's).",
        f"2. Order: on the TT layers where the DP order and opt_einsum's greedy order differ, the "
        f"DP order's FLOPs (summed) are at most {MAX_DP_GREEDY}x the greedy order's (mean over "
        "seeds). FLOPs are opt_einsum's count for batch 1 at each layer's real H x W.",
        "3. Latency: dense and TT ONNX models timed side by side (no threshold; the table says "
        "whether TT is slower on this CPU).",
        "",
        f"Choice of the candidate: {CHOICE_RULE}",
        "",
        HISTORY,
    ]
    return lines


def render(payload: dict[str, Any]) -> str:
    b = payload["budget"]
    results = payload["results"]
    v = verdicts(results)
    lines: list[str] = intro_and_rules(b, payload)
    add = lines.append
    add("")
    selection = payload["selection"]
    add("Candidates on **val** (the choice; test is not shown for the ones not chosen):")
    add("")
    add("| candidate | TT val per seed | TT val (mean) | dense control val (mean) | chosen |")
    add("|---|---|---|---|---|")
    for name, sel in selection.items():
        per_seed = " / ".join(f"{x:.2f}" for x in sel["tt_val_seeds"])
        add(
            f"| `{name}` | {per_seed} | {sel['tt_val']:.2f} % | {sel['ctrl_val']:.2f} % | "
            f"{'**yes**' if name == payload['chosen'] else ''} |"
        )
    add("")
    hist = [r.get("tt_val_history") for r in results]
    if all(hist):
        add(
            f"Val accuracy of `{payload['chosen']}` after each epoch: "
            + "; ".join(
                f"seed {r['seed']}: " + ", ".join(f"{x:.1f}" for x in r["tt_val_history"])
                for r in results
            )
            + "."
        )
        add("")
    add(f"Reported below: `{payload['chosen']}`.")
    add("")
    add(DENSE_STARTS)
    add("")
    add(
        "| seed | trained dense | dense + same epochs | TT test acc | drop (pt) | params dense | params TT | share | "
        "1x1 params dense → TT | MACs dense → TT | TT layers |"
    )
    add("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        cb, ca = conv1x1_params(r["layers"])
        mm = r["method_metrics"]
        add(
            f"| {r['seed']} | {r['trained_acc']:.2f} | {r['base_acc']:.2f} | {r['tt_acc']:.2f} | "
            f"{r['base_acc'] - r['tt_acc']:.2f} | {r['base_params']:,} | {r['tt_params']:,} | "
            f"{r['tt_params'] / r['base_params']:.3f} | {cb:,} → {ca:,} | "
            f"{r['base_macs']:,} → {r['tt_macs']:,} | {int(mm.get('tt_layers', 0))} of "
            f"{len(r['layers'])} |"
        )
    add("")
    add(
        f"Rule 1: share {v['param_share']:.3f}, drop {v['drop']:.2f} pt → "
        f"**{'PASS' if v['params_pass'] else 'FAIL'}** "
        f"(drop {fmt([r['base_acc'] - r['tt_acc'] for r in results])} pt, dense "
        f"{fmt([r['base_acc'] for r in results])} %, TT {fmt([r['tt_acc'] for r in results])} %)."
    )
    add("")
    ctrl = [r["base_acc"] for r in results]
    if statistics.fmean(ctrl) < EARLIER_DENSE_CONTROL - MAX_DROP:
        worst = min(results, key=lambda r: r["trained_acc"])
        tt_text = " / ".join(f"{r['tt_acc']:.2f}" for r in results)
        extra = epochs_text(int(b["candidates"][0]["epochs"]))
        add(
            "**How to read rule 1 here** (written after the numbers were seen; it changes no "
            "verdict): the reference of every seed is its own dense control, and this run's "
            f"controls are undertrained: {' / '.join(f'{x:.2f}' for x in ctrl)} % test, against "
            f"{EARLIER_DENSE_CONTROL:.2f} % (mean) for the earlier run's controls (history "
            f"above); seed {worst['seed']}'s dense start reached only "
            f"{worst['trained_acc']:.2f} % after its {b['base_epochs']} epochs from scratch. The "
            f"TT models, fine-tuned for the same {extra}, reach {tt_text} % test, so the TT model at "
            f"{v['param_share']:.1%} of the parameters does as well as the same dense MobileNetV2 "
            "given the same total training; it is **not** evidence of at most 1 pt loss against "
            "a dense MobileNetV2 trained to convergence. A re-run that settles the target needs "
            "dense starts trained until their val accuracy stops rising (chosen on val, before "
            "any TT number)."
        )
        add("")
    add("Per-layer table of the first seed (`extras.tensor_train.layers` of its report.json):")
    add("")
    add(
        "| layer | modes out / in | ranks | rel. error | H·W | params dense → TT | FLOPs dense | "
        "greedy | DP | DP / greedy | DP beats dense |"
    )
    add("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in results[0]["layers"]:
        if row["action"] != "tt":
            add(f"| {row['name']} | {row['action']}: {row['reason']} | | | | | | | | | |")
            continue
        add(
            f"| {row['name']} | {'x'.join(map(str, row['out_modes']))} / "
            f"{'x'.join(map(str, row['in_modes']))} | {row['ranks']} | {row['rel_error']:.3f} | "
            f"{row['input_hw']} | {row['params_before']:,} → {row['params_after']:,} | "
            f"{row['flops_dense']:,} | {row['flops_greedy']:,} | {row['flops_dp']:,} | "
            f"{row['flops_dp'] / row['flops_greedy']:.2f} | "
            f"{'yes' if row['flops_dp'] < row['flops_dense'] else 'no'} |"
        )
    add("")
    parts = []
    for r in results:
        n, total, dp, greedy = dp_vs_greedy(r["layers"])
        beats = sum(
            1 for x in r["layers"] if x["action"] == "tt" and x["flops_dp"] < x["flops_dense"]
        )
        ratio = f"{dp / greedy:.3f}" if greedy else "n/a"
        parts.append(
            f"seed {r['seed']}: orders differ on {n} of {total} TT layers, DP/greedy {ratio}; "
            f"DP beats the dense layer on {beats} of {total}"
        )
    add("; ".join(parts) + ".")
    add("")
    add(
        "Which layers count: the DP and the greedy order are compared by their paths, both "
        "planned again from each layer's row (modes, ranks, batch 1 and the H x W the stage "
        "measured with a forward hook on this model's real input); the re-planned FLOPs must "
        "equal the report's, so the rule is judged on the shapes the stage used. The previous "
        "run's ratio (0.786, max_error 0.8) was checked the same way: the paths differ on exactly "
        "the layers where the FLOPs differ."
    )
    add("")
    add(
        "Why the orders rarely differ and never beat the dense layer here: the reconstruction "
        "budget picks 2 cores for almost every layer (the fewest parameters), and a 2-core chain "
        "has only three orders; at batch 1 and the few pixels MobileNetV2's later 1x1 convs see "
        "at this input size, each of them costs at least one pass of the input through a core "
        "whose rank is tens of channels wide, which is more than the dense matrix-vector "
        "product. Where the two orders differ (ratio below 1 in the table), greedy's first "
        "step contracts the input with the core that leaves the larger intermediate, and the "
        "second step then pays for it; the DP order starts from the other core."
    )
    add("")
    sweep = order_sweep(results[0]["layers"])
    add(
        "The same layers with other shapes (the first seed's TT layers; not a rule, added after "
        "rule 2 failed twice): each core count gets the largest uniform ranks whose cores hold "
        "no more weights than the stage's chosen cores, planned at each layer's H x W as "
        "measured (16 px input) and at 4x and 16x the pixels (what 32 and 64 px inputs give). "
        "It asks whether a ratio of 0.6 is in reach with other choices than this run's."
    )
    add("")
    scales = SWEEP_PIXEL_SCALES
    add(
        "| cores | "
        + " | ".join(f"{16 * int(k**0.5)} px: DP / greedy (differ)" for k in scales)
        + " |"
    )
    add("|---" * (len(scales) + 1) + "|")
    for d in SWEEP_CORES:
        cells = []
        for k in scales:
            c = next(x for x in sweep if x["cores"] == d and x["pixel_scale"] == k)
            ratio = f"{c['dp_greedy']:.3f}" if c["dp_greedy"] is not None else "—"
            cells.append(f"{ratio} ({c['differ']} of {c['layers']})")
        add(f"| {d} | " + " | ".join(cells) + " |")
    add("")
    best = min((x["dp_greedy"] for x in sweep if x["dp_greedy"] is not None), default=None)
    differ, n_tt, naive_ratio = dp_vs_left_to_right(results[0]["layers"])
    add(
        "Against the order a TT layer runs without any search (the input through core 1, then "
        "core 2, and so on), the first seed's DP order costs "
        + (f"{naive_ratio:.3f}x its FLOPs" if naive_ratio is not None else "the same FLOPs")
        + f" on the {differ} of {n_tt} layers where the two differ"
        + (
            ": within 0.6 against that baseline"
            if naive_ratio is not None and naive_ratio <= 0.6
            else ": rule 2's 0.6 is not met against that baseline either"
        )
        + " (not a rule; rule 2 is judged against greedy)."
    )
    add("")
    if best is None:
        add("No shape in the sweep gives two different orders.")
    elif best > 0.6:
        add(
            f"Lowest DP / greedy in the sweep: {best:.3f}. opt_einsum's greedy order (it "
            "contracts first the pair whose result is smallest against its two inputs) stays "
            "within this factor of the optimum on every shape tried, so on MobileNetV2's 1x1 "
            "convs the DP search saves FLOPs on some layers, but no change of core count or "
            "input size alone brings it to 0.6x of greedy."
        )
    else:
        add(
            f"Lowest DP / greedy in the sweep: {best:.3f}, within the rule's 0.6 on a shape "
            "this run did not use (see the table)."
        )
    add("")
    dp_text = f"{v['dp_greedy']:.3f}" if v["dp_greedy"] is not None else "n/a"
    add(f"Rule 2: DP / greedy {dp_text} → **{'PASS' if v['dp_pass'] else 'FAIL'}**.")
    add("")
    if v["speedup"] is not None:
        add("| seed | dense p50 ms (IQR) | TT p50 ms (IQR) | dense / TT | ONNX nodes dense → TT |")
        add("|---|---|---|---|---|")
        for r in results:
            bl, tl = r["base_latency"], r["tt_latency"]
            add(
                f"| {r['seed']} | {bl['p50_ms']:.3f} ({bl['iqr_ms'] or 0:.3f}) | "
                f"{tl['p50_ms']:.3f} ({tl['iqr_ms'] or 0:.3f}) | "
                f"{bl['p50_ms'] / tl['p50_ms']:.2f}x | "
                f"{r.get('base_nodes', '?')} → {r.get('tt_nodes', '?')} |"
            )
        add("")
        slower = v["speedup"] < 1.0
        add(
            f"Rule 3: mean dense/TT latency ratio {v['speedup']:.2f}x: the TT model is "
            f"**{'slower' if slower else 'faster'}** than the dense one on this CPU "
            f"({payload['env']['cpu']}, {THREADS} threads, ORT {payload['env']['ort']}, "
            f"{b['latency_rounds']} interleaved rounds of {b['latency_runs']} runs)."
        )
        load = payload.get("load_avg")
        if load:
            busy = max(load[0], load[3]) > payload["env"].get("cores", 2)
            add("")
            add(
                f"Load average (1 min) {load[0]:.1f} before and {load[3]:.1f} after the timing "
                f"on {payload['env'].get('cores', 2)} cores"
                + (
                    ": the machine was oversubscribed by other work, so the absolute "
                    "milliseconds are inflated; the dense and TT models were timed in "
                    "alternating rounds of the same call, so read their ratio, which also shifts "
                    "with the load."
                    if busy
                    else "."
                )
            )
    add("")
    costs = payload.get("costs")
    if costs:
        names = list(payload["selection"])
        add(
            "Cost per seed (each seed one process, 1 torch thread, BLAS pools "
            f"{json.dumps(payload.get('blas_threads'))}, `nice`; CPU = user + system "
            "seconds of the process):"
        )
        add("")
        add(
            "| seed | wall min | CPU min | base CPU s | control CPU s | "
            + " | ".join(f"`{n}` CPU s" for n in names)
            + " | load 1 min (mean / max) |"
        )
        add("|---|---|---|---|---|" + "---|" * len(names) + "---|")
        for c in costs:
            add(
                f"| {c['seed']} | {c['wall_s'] / 60:.1f} | {c['cpu_s'] / 60:.1f} | "
                f"{c['base_cpu_s']:.0f} | {c['control_cpu_s']:.0f} | "
                + " | ".join(f"{c['tt_cpu_s'].get(n, 0):.0f}" for n in names)
                + f" | {c['load_mean']:.1f} / {c['load_max']:.1f} |"
            )
        add("")
    add(
        f"Wall time: {payload['wall_s'] / 60:.0f} min from the first seed's start to the last "
        f"seed's end, {payload.get('cpu_s', 0) / 60:.0f} CPU min in all, on a shared 2-core "
        f"machine (python {payload['env']['python']}, torch {payload['env']['torch']})."
    )
    return "\n".join(lines)


def choose(runs: dict[str, list[dict[str, Any]]]) -> tuple[str, dict[str, Any]]:
    """The candidate with the best mean **val** accuracy after fine-tuning (test is not read)."""
    selection = {
        name: {
            "tt_val": statistics.fmean(r["tt_val"] for r in rs),
            "tt_val_seeds": [r["tt_val"] for r in rs],
            "ctrl_val": statistics.fmean(r["ctrl_val"] for r in rs),
            "recipe": rs[0]["recipe"],
        }
        for name, rs in runs.items()
    }
    chosen = max(selection, key=lambda n: selection[n]["tt_val"])
    return chosen, selection


def seed_costs(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per seed: wall span and CPU of its process(es), base/control/candidate CPU, load."""
    seeds = sorted({r["seed"] for rs in runs.values() for r in rs})
    out = []
    for s in seeds:
        rs = [r for x in runs.values() for r in x if r["seed"] == s]
        out.append(
            {
                "seed": s,
                "wall_s": max(r["ended"] for r in rs) - min(r["started"] for r in rs),
                "cpu_s": sum(r["cpu_s"] for r in rs),
                "base_cpu_s": max(r["times"]["base"]["cpu_s"] for r in rs),
                "control_cpu_s": max(r["times"]["control"]["cpu_s"] for r in rs),
                "tt_cpu_s": {r["candidate"]: r["times"]["tt"]["cpu_s"] for r in rs},
                "load_mean": max(rs, key=lambda r: r["ended"])["load"]["mean"],
                "load_max": max(r["load"]["max"] for r in rs),
            }
        )
    return out


def finish(
    budget: Budget,
    data: DatasetBundle,
    runs: dict[str, list[dict[str, Any]]],
    out: Path,
    *,
    write_doc: bool,
) -> None:
    chosen, selection = choose(runs)
    results = runs[chosen]
    load = measure(results, budget, data)
    import onnxruntime as ort

    all_runs = [r for rs in runs.values() for r in rs]
    payload = {
        "budget": asdict(budget),
        "images": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        "results": results,
        "chosen": chosen,
        "selection": selection,
        "costs": seed_costs(runs),
        "wall_s": max(r["ended"] for r in all_runs) - min(r["started"] for r in all_runs),
        "cpu_s": sum(r["cpu_s"] for r in all_runs),
        "blas_threads": results[0].get("blas_threads"),
        "load_avg": load,
        "env": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "ort": ort.__version__,
            "cpu": results[0]["base_latency"]["hardware"]["cpu_model"],
            "cores": results[0]["base_latency"]["hardware"]["cores"],
        },
    }
    (out / "results.json").write_text(json.dumps(payload, indent=1, default=str))
    text = render(payload)
    print(text)
    if write_doc:
        # The raw numbers the section was rendered from, kept in git next to the doc.
        (ROOT / "benchmarks" / "results" / "tt.json").write_text(
            json.dumps(payload, indent=1, default=str)
        )
        replace_section(ROOT / "docs" / "benchmarks.md", SECTION, HEADING, text)


def run_seed(
    budget: Budget,
    data: DatasetBundle,
    seed: int,
    out: Path,
    candidates: list[Candidate],
    load: LoadSampler,
) -> list[dict[str, Any]]:
    """Every candidate on one seed, each written to ``out/seed_N_NAME.json`` as it finishes."""
    results = []
    for cand in candidates:
        started = time.time()
        with Clock() as clock:
            result = one_seed(budget, data, seed, out, cand)
        result.update(
            wall_s=clock.wall,
            cpu_s=clock.cpu,
            started=started,
            ended=time.time(),
            load=load.summary(),
            blas_threads={v: os.environ.get(v) for v in BLAS_THREADS},
        )
        (out / f"seed_{seed}_{cand.name}.json").write_text(json.dumps(result, default=str))
        results.append(result)
    return results


def write_rules(budget: Budget) -> None:
    """The section with its rules and history only, before any number of the run exists."""
    text = "\n".join(
        [
            *intro_and_rules(asdict(budget), None),
            "",
            "*The run with these rules is in progress; its numbers replace this line.*",
        ]
    )
    replace_section(ROOT / "docs" / "benchmarks.md", SECTION, HEADING, text)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--render-only", type=Path)
    ap.add_argument(
        "--write-rules", action="store_true", help="write the section's rules and history only"
    )
    ap.add_argument(
        "--seed",
        type=int,
        help="run one seed into out/seed_N_NAME.json (seeds may run in parallel)",
    )
    names = sorted({c.name for b in (FULL, QUICK) for c in b.candidates})
    ap.add_argument("--candidate", choices=names, help="with --seed: run only this candidate")
    ap.add_argument(
        "--base-only", action="store_true", help="with --seed: only train the dense start"
    )
    ap.add_argument(
        "--probe-base",
        metavar="OPT:LR:EPOCHS",
        help="with --seed: train a dense start with this recipe and print its val curve only",
    )
    ap.add_argument(
        "--finish", action="store_true", help="time and render the seed_N_NAME.json files of a run"
    )
    args = ap.parse_args()
    if args.render_only:
        payload = json.loads(args.render_only.read_text())
        replace_section(ROOT / "docs" / "benchmarks.md", SECTION, HEADING, render(payload))
        return
    budget = QUICK if args.quick else FULL
    if args.write_rules:
        write_rules(budget)
        return
    torch.set_num_threads(1 if args.seed is not None else THREADS)
    out = ROOT / "benchmarks" / "out" / ("tt_quick" if args.quick else "tt")
    data = load_data(budget)
    if args.seed is not None and args.probe_base:
        out.mkdir(parents=True, exist_ok=True)
        probe_base(budget, data, args.seed, args.probe_base, out)
        return
    if args.seed is not None and args.base_only:
        out.mkdir(parents=True, exist_ok=True)
        train_base(budget, data, args.seed, out)
        return
    cands = [budget.candidate(args.candidate)] if args.candidate else list(budget.candidates)
    if args.seed is not None:
        out.mkdir(parents=True, exist_ok=True)
        with LoadSampler() as load:
            run_seed(budget, data, args.seed, out, cands, load)
        return
    if args.finish:
        runs = {
            c.name: [
                json.loads((out / f"seed_{s}_{c.name}.json").read_text()) for s in budget.seeds
            ]
            for c in budget.candidates
        }
        finish(budget, data, runs, out, write_doc=not args.quick)
        return
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with LoadSampler() as load:
        per_seed = [
            run_seed(budget, data, seed, out, list(budget.candidates), load)
            for seed in budget.seeds
        ]
    runs = {
        c.name: [next(r for r in rs if r["candidate"] == c.name) for rs in per_seed]
        for c in budget.candidates
    }
    finish(budget, data, runs, out, write_doc=not args.quick)


if __name__ == "__main__":
    main()
