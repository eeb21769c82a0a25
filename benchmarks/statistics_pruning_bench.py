"""Statistics pruning (seed 002) next to L1 filter-norm pruning at the same MACs, with a rule.

For each model (``lenet5`` and ``vgg11_bn`` on the built-in ``mnist``) and seed, one starting
model is trained from scratch; then ``statistics_pruning`` and ``channel_pruning`` with
``importance: l1`` prune it to the same ``target_mac_reduction`` with the same loop
(``iterative_steps``, fine-tuning epochs, lr, ``round_to``), so only the ranking differs. Every
job runs through ``parse_recipe`` + ``run_recipe``; accuracy is the pipeline's figure on the fixed
**test** split, MACs are :func:`compression.macs.count_macs`.

    nice -n 10 .venv/bin/python benchmarks/statistics_pruning_bench.py          # writes the doc
    nice -n 10 .venv/bin/python benchmarks/statistics_pruning_bench.py --quick  # smoke, doc untouched
    .venv/bin/python benchmarks/statistics_pruning_bench.py --render-only       # doc from the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._docs import replace_section  # noqa: E402
from benchmarks._stats import mean, sd, verdict  # noqa: E402
from benchmarks.compression_bench import environment, fresh, outcome, pm, run  # noqa: E402
from compression.datasets import DatasetBundle, load_mnist  # noqa: E402
from compression.methods.channel_pruning import MAC_TOLERANCE  # noqa: E402

SECTION = "statistics_pruning"
HEADING = "## Statistics pruning against L1 at the same MACs (mnist, CPU, decision rule)"
RESULTS = ROOT / "benchmarks" / "results" / "statistics_pruning.json"
LR = 0.02
BASE_LR = 0.05
BATCH = 64
THREADS = 1  # one thread: on the shared 2-core machine two OpenMP threads spin-wait on each other
VARIANTS = ("statistics", "l1")


@dataclass(frozen=True)
class ModelPlan:
    arch: str
    base_epochs: int  # from scratch, lr BASE_LR
    target: float  # target_mac_reduction
    round_to: int
    finetune_epochs: int  # in all, split across the steps


@dataclass(frozen=True)
class Budget:
    name: str
    seeds: tuple[int, ...]
    steps: int  # iterative_steps, both variants
    models: tuple[ModelPlan, ...]
    subset: tuple[int, int, int] | None = None  # train / val / test images


FULL = Budget(
    name="full",
    seeds=(0, 1, 2),
    steps=3,
    models=(
        ModelPlan("lenet5", base_epochs=5, target=2.0, round_to=1, finetune_epochs=3),
        ModelPlan("vgg11_bn", base_epochs=2, target=4.0, round_to=8, finetune_epochs=2),
    ),
)
QUICK = Budget(
    name="quick",
    seeds=(0,),
    steps=2,
    models=(
        ModelPlan("lenet5", base_epochs=1, target=2.0, round_to=1, finetune_epochs=1),
        ModelPlan("vgg11_bn", base_epochs=1, target=2.0, round_to=8, finetune_epochs=1),
    ),
    subset=(512, 256, 256),
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def prune_config(variant: str, plan: ModelPlan, steps: int) -> tuple[str, dict[str, Any]]:
    common = {
        "target_mac_reduction": plan.target,
        "iterative_steps": steps,
        "round_to": plan.round_to,
        "finetune_epochs": plan.finetune_epochs,
        "lr": LR,
        "batch_size": BATCH,
    }
    if variant == "statistics":
        return "statistics_pruning", common
    return "channel_pruning", {**common, "importance": "l1", "sparsity_epochs": 0}


def measure(data: DatasetBundle, plan: ModelPlan, budget: Budget, out: Path) -> dict[str, Any]:
    """One model: per seed the starting model, then both variants; rows per variant."""
    rows: dict[str, list[dict[str, Any]]] = {v: [] for v in (*VARIANTS, "base")}
    for seed in budget.seeds:
        log(f"{plan.arch}: from scratch, seed {seed}")
        recipe = {
            "name": f"{plan.arch} from scratch",
            "seed": seed,
            "stages": [
                {
                    "method": "finetune",
                    "config": {"epochs": plan.base_epochs, "lr": BASE_LR, "batch_size": BATCH},
                }
            ],
        }
        report, trained = run(
            recipe, fresh(plan.arch, data, seed), data, out / f"{plan.arch}_s{seed}"
        )
        assert trained is not None
        rows["base"].append({"test": report.final.accuracy})
        for variant in VARIANTS:
            method, config = prune_config(variant, plan, budget.steps)
            job = {
                "name": f"{plan.arch} {variant}",
                "seed": seed,
                "stages": [{"method": method, "config": config}],
            }
            rep, _ = run(job, trained, data, out / f"{plan.arch}_{variant}_s{seed}")
            row = outcome(rep)
            rows[variant].append(row)
            log(
                f"  {variant:>10}: {row['mac_ratio']:.2f}x MACs, test {row['test']:.2f}% "
                f"(val {row['val']:.2f}%, unpruned {row['base_test']:.2f}%)"
            )
    return rows


def landed(mac_ratio: float, target: float) -> bool:
    """Whether a job ended in ``[target, target * (1 + MAC_TOLERANCE)]`` (rounding slack 1e-9)."""
    return target - 1e-9 <= mac_ratio <= target * (1.0 + MAC_TOLERANCE) + 1e-9


def evaluate_rule(rows: dict[str, Any], targets: dict[str, float]) -> dict[str, Any]:
    """The rule, per model and overall (see :func:`render` for its wording)."""
    per: dict[str, Any] = {}
    for arch, r in rows.items():
        s = [x["test"] for x in r["statistics"]]
        l1 = [x["test"] for x in r["l1"]]
        diff = mean(s) - mean(l1)
        one_sd = max(sd(s), sd(l1))
        on_target = all(landed(x["mac_ratio"], targets[arch]) for v in VARIANTS for x in r[v])
        per[arch] = {
            "diff": diff,
            "one_sd": one_sd,
            "on_target": on_target,
            "pass": on_target and diff >= -one_sd,
            "better": on_target and diff > one_sd,
        }
    complete = set(rows) == {p.arch for p in FULL.models}
    return {
        "per_model": per,
        "pass": complete and all(p["pass"] for p in per.values()),
        "complete": complete,
    }


def _cell(xs: list[dict[str, Any]]) -> str:
    acc = pm([x["test"] for x in xs], unit="%")
    return f"{acc} (at {mean([x['mac_ratio'] for x in xs]):.2f}x)"


def render(raw: dict[str, Any]) -> str:
    b, models = raw["budget"], raw["models"]
    rows = {arch: m["rows"] for arch, m in models.items()}
    targets = {p["arch"]: float(p["target"]) for p in b["models"]}
    v = evaluate_rule(rows, targets)
    lines = [
        "Written by `benchmarks/statistics_pruning_bench.py`. Every job runs through"
        " `parse_recipe` + `run_recipe`; accuracy is the pipeline's figure on `mnist`'s fixed"
        " **test** split (1000 images, one image = 0.10 pt), MACs are `compression.macs."
        f"count_macs`. Mean ± sd (sample) over {len(b['seeds'])} seeds"
        f" ({', '.join(str(s) for s in b['seeds'])}); a seed changes the starting model's"
        " initialisation and data order and every job's seed.",
        "",
        "### Decision rule (fixed before the run)",
        "",
        "Per model, `statistics_pruning` and `channel_pruning` with `importance: l1` prune the"
        " same trained model to the same `target_mac_reduction` with the same loop"
        f" (`iterative_steps: {b['steps']}`, the same fine-tuning epochs, lr {LR}, batch {BATCH},"
        " `round_to`, `max_layer_ratio` 0.9, best epoch on `val`), so only the ranking differs."
        " **PASS** if, on every model, statistics pruning's mean test accuracy is no more than"
        " one standard deviation (the larger of the two variants' sds) below L1's. It is"
        " reported as **better** where it is more than one sd above. Both variants must also"
        " land at the target: every job's MAC reduction within"
        f" [T, {1 + MAC_TOLERANCE:g} T] for the target T (`MAC_TOLERANCE` of"
        " `compression/methods/channel_pruning.py`); a model where any job does not is **FAIL**"
        " whatever the accuracies, because the comparison is not at equal MACs.",
        "",
        "This landing condition was added on 2026-12-07, before the run below: the first run"
        " had ended `lenet5` at unequal MACs (statistics 2.87x, up to 4.03x on one seed, against"
        " L1 2.27x for a 2x target), because the MAC search removed whatever channel ranked"
        " weakest even when one filter of LeNet-5's first conv was a quarter to a half of the"
        " MACs left; the search now undoes such a move and lands within the tolerance"
        " (`docs/methods.md`,"
        " *Reaching a MAC target*). The accuracy part of the rule is unchanged.",
        "",
        "### Setup",
        "",
    ]
    for p in b["models"]:
        lines.append(
            f"- `{p['arch']}`: {p['base_epochs']} epoch(s) from scratch (`finetune`, lr {BASE_LR}),"
            f" then pruned to {p['target']:g}x fewer MACs, `round_to: {p['round_to']}`,"
            f" {p['finetune_epochs']} fine-tuning epoch(s) in all."
        )
    for arch, m in models.items():
        env = m["env"]
        lines.append(
            f"- `{arch}` measured {m['date']} on {env['cpu']}, {env['usable_cores']} usable cores,"
            f" torch {env['torch']} with {THREADS} threads, Torch-Pruning {env['torch_pruning']};"
            f" budget `{b['name']}`; wall time {m['wall_s'] / 60:.1f} min; 1-min load average"
            f" {env['load_avg_start']:.1f} at the start and {m['load_avg_end']:.1f} at the end"
            " (above 2: the two cores were shared with other work)."
        )
    lines += [
        "",
        "| model | unpruned test | statistics pruning | L1 importance | difference | one sd |"
        " every job within the tolerance | rule |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arch, r in rows.items():
        p = v["per_model"][arch]
        s, l1 = r["statistics"], r["l1"]
        word = "better" if p["better"] else ("PASS" if p["pass"] else "FAIL")
        lines.append(
            f"| `{arch}` | {pm([x['test'] for x in r['base']], unit='%')} | {_cell(s)} | {_cell(l1)}"
            f" | {p['diff']:+.2f} pt | {p['one_sd']:.2f} pt"
            f" | {'yes' if p['on_target'] else 'no'} | {word} |"
        )
    lines += ["", "MAC reduction per seed (statistics / L1):", ""]
    for arch, r in rows.items():
        lines.append(
            f"- `{arch}` (target {targets[arch]:g}x): "
            + ", ".join(
                f"seed {seed}: {a['mac_ratio']:.3f}x / {c['mac_ratio']:.3f}x"
                for seed, a, c in zip(b["seeds"], r["statistics"], r["l1"], strict=True)
            )
        )
    for arch, r in rows.items():
        ms, ml = (
            mean([x["mac_ratio"] for x in r["statistics"]]),
            mean([x["mac_ratio"] for x in r["l1"]]),
        )
        if abs(ms - ml) > 0.1 * min(ms, ml):
            lines += [
                "",
                f"Caveat for `{arch}`: the two did not end at the same MACs (statistics "
                f"{ms:.2f}x, L1 {ml:.2f}x mean; per seed "
                + ", ".join(
                    f"{a['mac_ratio']:.2f}x / {c['mac_ratio']:.2f}x"
                    for a, c in zip(r["statistics"], r["l1"], strict=True)
                )
                + "): the accuracy difference is not an equal-MACs comparison and the rule's "
                "premise does not hold for it.",
            ]
    lines += [
        "",
        (
            f"Overall: {verdict(v['pass'])}."
            if v["complete"]
            else "Overall: no verdict yet (not every model has been measured)."
        )
        + " Per seed (test %, statistics / L1):",
        "",
    ]
    for arch, r in rows.items():
        pairs = ", ".join(
            f"seed {seed}: {a['test']:.1f} / {c['test']:.1f}"
            for seed, a, c in zip(b["seeds"], r["statistics"], r["l1"], strict=True)
        )
        lines.append(f"- `{arch}`: {pairs}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run; doc untouched")
    parser.add_argument("--render-only", action="store_true", help="doc from the results file")
    parser.add_argument(
        "--models",
        default=",".join(p.arch for p in FULL.models),
        help="comma-separated models to (re-)measure; the others keep their rows in the results",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / SECTION)
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    if args.render_only:
        replace_section(args.doc, SECTION, HEADING, render(json.loads(RESULTS.read_text())))
        return
    budget = QUICK if args.quick else FULL
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    plans = [p for p in budget.models if p.arch in wanted]
    if len(plans) != len(wanted):
        parser.error(f"--models: choose from {', '.join(p.arch for p in budget.models)}")
    torch.set_num_threads(THREADS)
    data = load_mnist(size=32)
    if budget.subset:
        tr, va, te = budget.subset
        data = data.subset(train=tr, val=va, test=te, seed=0)
    results = RESULTS if not args.quick else args.out / "results.json"
    raw: dict[str, Any] = {"budget": asdict(budget), "models": {}}
    if results.exists() and not args.quick:
        raw = json.loads(results.read_text())
        raw["budget"] = asdict(budget)
    for plan in plans:
        out = args.out / plan.arch
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        env = environment()
        started = time.monotonic()
        rows = measure(data, plan, budget, out)
        raw["models"][plan.arch] = {
            "rows": rows,
            "env": env,
            "date": time.strftime("%Y-%m-%d", time.gmtime()),
            "wall_s": time.monotonic() - started,
            "load_avg_end": os.getloadavg()[0],
        }
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(raw, indent=1))
    if args.quick:
        print(render(raw))
        return
    replace_section(args.doc, SECTION, HEADING, render(raw))
    log(f"wrote {args.doc} and {results}")


if __name__ == "__main__":
    main()
