"""Recipe tuning for the Deep Compression benchmark, on the validation split only.

Each trial runs a shipped LeNet recipe (``recipes/deep_compression_*.yaml``) with per-stage
config overrides through ``run_recipe``, as the benchmark does, on seeds the benchmark does not
use (3, 4, 5 by default), and records the **validation** accuracy after every stage and the
container's size. The test split is never read by this script: the weight_coding stage does run
its own check on the test split (decoded predictions equal to the model's), but no test figure
is stored or printed here.

    .venv/bin/python benchmarks/deep_compression_tune.py --arch lenet5 --tag base --seeds 3,4,5
    .venv/bin/python benchmarks/deep_compression_tune.py --arch lenet5 --tag s955 \
        --override '{"1": {"sparsity": 0.955}}'
    .venv/bin/python benchmarks/deep_compression_tune.py --sizes   # re-encode every trial

Trials are appended to ``benchmarks/results/deep_compression_tuning.json`` (``runs``); a trial's
run folder stays under ``benchmarks/out/dc_tune/`` so ``--sizes`` can re-encode its
``precoding.onnx`` with the current encoder (container sizes do not depend on any split).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compression.datasets import load_mnist  # noqa: E402
from compression.pipeline import run_recipe, seed_everything  # noqa: E402
from compression.recipe import parse_recipe  # noqa: E402
from compression.stage import ArchSpec, ModelState  # noqa: E402
from compression.zoo import create_model, default_input_size  # noqa: E402

RECORD = ROOT / "benchmarks" / "results" / "deep_compression_tuning.json"
OUT = ROOT / "benchmarks" / "out" / "dc_tune"
RECIPES = {
    "lenet300_100": ROOT / "recipes" / "deep_compression_lenet300.yaml",
    "lenet5": ROOT / "recipes" / "deep_compression_lenet5.yaml",
}
BENCHMARK_SEEDS = {0, 1, 2}


def apply_overrides(recipe: dict[str, Any], overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out = copy.deepcopy(recipe)
    for index, cfg in overrides.items():
        out["stages"][int(index)].setdefault("config", {}).update(cfg)
    return out


def trial(arch: str, tag: str, overrides: dict[str, dict[str, Any]], seed: int) -> dict[str, Any]:
    recipe = apply_overrides(yaml.safe_load(RECIPES[arch].read_text()), overrides)
    recipe["seed"] = seed
    recipe["eval"] = {"latency_runs": 0}
    data = load_mnist(size=default_input_size(arch))
    seed_everything(seed)
    module = create_model(arch, num_classes=data.num_classes, in_channels=data.input_shape[0])
    model = ModelState(
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        module=module,
        arch=ArchSpec(arch, num_classes=data.num_classes, in_channels=data.input_shape[0]),
    )
    out = OUT / f"{arch}_{tag}_seed{seed}"
    t0 = time.monotonic()
    report = run_recipe(parse_recipe(recipe), model, data, out, device="cpu", restart=True)
    val = [float(s.metrics.val_accuracy or 0.0) for s in report.stages]
    dc = report.deep_compression or {}
    totals = dc.get("totals", {})
    return {
        "arch": arch,
        "tag": tag,
        "overrides": overrides,
        "seed": seed,
        "val_acc_after_each_stage": val,
        "val_drop_pt": round(val[0] - val[-1], 2),
        "container_bytes": totals.get("container_bytes"),
        "container_ratio": round(dc["ratios"]["whole_model"]["container"], 2) if dc else None,
        "kept": round(totals.get("kept", 0.0), 4),
        "container_format": dc.get("container", {}).get("version"),
        "run_dir": str(out.relative_to(ROOT)),
        "wall_s": round(time.monotonic() - t0),
        "finished_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def _append(row: dict[str, Any]) -> None:
    record = json.loads(RECORD.read_text())
    record.setdefault("runs", []).append(row)
    RECORD.write_text(json.dumps(record, indent=1) + "\n")


def resize_all() -> None:
    """Re-encode every trial's precoding.onnx with the current encoder and recipe index bits."""
    import tempfile

    from compression.container import FORMAT_VERSION
    from compression.weight_coding import encode_onnx

    record = json.loads(RECORD.read_text())
    for row in record["runs"]:
        src = ROOT / str(row.get("run_dir", "")) / "stages"
        found = sorted(src.glob("*/precoding.onnx")) if row.get("run_dir") else []
        if not found:
            continue
        code_cfg = apply_overrides(
            yaml.safe_load(RECIPES[row["arch"]].read_text()), row["overrides"]
        )
        cfg = code_cfg["stages"][-1].get("config", {})
        with tempfile.TemporaryDirectory() as tmp:
            st = encode_onnx(
                found[-1],
                Path(tmp) / "m.esdc",
                conv_index_bits=cfg.get("conv_index_bits", 8),
                fc_index_bits=cfg.get("fc_index_bits", 5),
            )
        row[f"container_bytes_v{FORMAT_VERSION}"] = st.total_bytes
        row[f"container_ratio_v{FORMAT_VERSION}"] = round(st.ratio, 2)
        print(
            f"{row['arch']} {row['tag']} seed {row['seed']}: {st.total_bytes} bytes, {st.ratio:.2f}x"
        )
    RECORD.write_text(json.dumps(record, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(RECIPES))
    parser.add_argument("--tag", help="a short name for the trial's settings")
    parser.add_argument("--override", default="{}", help="stage index -> config, as JSON")
    parser.add_argument("--seeds", default="3,4,5", help="not 0, 1, 2: the benchmark's")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--sizes", action="store_true", help="re-encode every recorded trial")
    args = parser.parse_args()
    if args.sizes:
        resize_all()
        return
    if not args.arch or not args.tag:
        parser.error("--arch and --tag are required for a trial")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if BENCHMARK_SEEDS & set(seeds):
        parser.error(f"seeds {sorted(BENCHMARK_SEEDS)} are the benchmark's; tune on others")
    torch.set_num_threads(args.threads)
    overrides = json.loads(args.override)
    for seed in seeds:
        row = trial(args.arch, args.tag, overrides, seed)
        _append(row)
        print(
            f"{args.arch} {args.tag} seed {seed}: val {row['val_acc_after_each_stage']} "
            f"drop {row['val_drop_pt']} pt, {row['container_bytes']} bytes "
            f"({row['container_ratio']}x), {row['wall_s']} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
