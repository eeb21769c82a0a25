"""``edgeslim compress``: run a recipe on a model and a data set from the command line.

Example::

    edgeslim compress --model vgg11_bn --dataset digits --recipe recipes/vgg_slim_int8.yaml --out runs/vgg

A zoo detector runs on a detection data set (the built-in ``mnist_scenes`` or a YOLO, Pascal
VOC or COCO zip), and the results are mAP@0.5 instead of top-1::

    edgeslim compress --model yolov3_tiny --width 0.25 --input-size 64 --dataset mnist_scenes \
        --recipe recipes/yolov3_tiny_prune_int8.yaml --out runs/yolo

The run writes checkpoints, ``final.onnx`` and ``report.json`` under ``--out``. Running the same
command again resumes after the last completed stage. No Django is imported here.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from compression.datasets import DatasetBundle
    from compression.detection_data import DetectionBundle
    from compression.pipeline import RunReport
    from compression.recipe import Recipe
    from compression.stage import ModelState

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "compress",
        help="run a compression recipe on a model and a data set",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        required=True,
        help="a zoo architecture (e.g. lenet5) or a model file (.safetensors, .pt state dict, .onnx)",
    )
    p.add_argument("--arch", help="the zoo architecture of a state-dict file")
    p.add_argument("--num-classes", type=int, help="classes of the model (default: the data set's)")
    p.add_argument(
        "--in-channels", type=int, help="input channels of the model (default: the data set's)"
    )
    p.add_argument(
        "--dataset",
        required=True,
        help="'mnist' or 'digits' (built in) or an image-folder .zip (train/ with optional "
        "val/ and test/, or flat class folders); for a detector 'mnist_scenes' (built in) or a "
        "YOLO, Pascal VOC or COCO .zip",
    )
    p.add_argument(
        "--width", type=float, help="a zoo detector's width multiplier (default: the zoo's)"
    )
    p.add_argument(
        "--input-size",
        type=int,
        help="a zoo detector's square input side, a multiple of 32 (default: the zoo's)",
    )
    p.add_argument(
        "--split-seed",
        type=int,
        default=0,
        help="seed of the data set's fixed train/val/test split (never the recipe's seed)",
    )
    p.add_argument(
        "--normalization",
        choices=("dataset", "imagenet", "unit"),
        default="dataset",
        help="the model's declared input statistics: the training split's own (dataset), "
        "ImageNet's, or plain 0-1 scaling (unit)",
    )
    p.add_argument("--recipe", required=True, type=Path, help="recipe file (YAML or JSON)")
    p.add_argument("--out", required=True, type=Path, help="output folder (reuse it to resume)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default auto)")
    p.add_argument("--seed", type=int, help="override the recipe's seed")
    p.add_argument(
        "--threads", type=int, help="torch CPU threads for training (default: torch's choice)"
    )
    p.add_argument(
        "--restart", action="store_true", help="discard a previous run of another recipe in --out"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from compression.errors import Cancelled, CompressionError

    err = Console(stderr=True)
    try:
        report = _run(args, err)
    except Cancelled:
        err.print("[yellow]cancelled[/]; run the same command again to resume")
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        err.print(
            "[yellow]interrupted[/]; run the same command again to resume after the last completed stage"
        )
        return EXIT_INTERRUPTED
    except CompressionError as exc:
        err.print(f"[red]error:[/] {_one_line(str(exc))}", highlight=False, soft_wrap=True)
        return EXIT_ERROR
    # A pipe or a log file gets a table wide enough not to wrap every cell.
    _print_summary(Console(width=None if sys.stdout.isatty() else 120), report, args.out)
    return 0


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _run(args: argparse.Namespace, err: Console) -> RunReport:
    import torch

    from compression.pipeline import run_recipe
    from compression.recipe import load_recipe_file

    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = load_recipe_file(args.recipe)
    if args.seed is not None:
        recipe = dataclasses.replace(recipe, seed=args.seed)
    _check_recipe_for_model(args, recipe)  # before anything is loaded or written
    out: Path = args.out
    torch.manual_seed(recipe.seed)  # a zoo model's initial weights depend on it
    model, data = _load_model_and_data(args, out)
    err.print(
        f"model [bold]{args.model}[/] ({model.format}, {model.task}, input "
        f"{tuple(model.input_shape)}, {model.num_classes} classes); data [bold]{data.name}[/] "
        f"({len(data.train)} train / {len(data.val)} val / {len(data.test)} test; reports use "
        f"test{', mAP@0.5' if model.task == 'detection' else ''}); recipe [bold]{recipe.name}[/] "
        f"({len(recipe.stages)} stages)",
        highlight=False,
    )
    with _Bars(err, enabled=not args.quiet, n_stages=len(recipe.stages)) as bars:
        return run_recipe(
            recipe,
            model,
            data,
            out,
            progress=bars.update,
            device=args.device,
            load_model=_reference_loader(args),
            restart=args.restart,
        )


def _check_recipe_for_model(args: argparse.Namespace, recipe: Recipe) -> None:
    """Refuse a recipe its model cannot run (each method's ``check_model`` hook) up front.

    A zoo architecture is checked from the architecture itself; a file is loaded (safely, as
    the run will) for its layer table. ``run_recipe`` checks again with the final model.
    """
    from compression.model_facts import ModelFacts
    from compression.model_io import load_model_file
    from compression.recipe import check_recipe_for_model

    model_path = Path(args.model)
    if model_path.is_file():
        state = load_model_file(
            model_path, arch=args.arch, num_classes=args.num_classes, in_channels=args.in_channels
        )
        facts = ModelFacts.from_state(state)
    else:
        task = _check_task_matches_dataset(args.model, getattr(args, "dataset", ""))
        facts = ModelFacts.from_info(
            None,
            format="torch",
            task="detection" if task == "detection" else "classification",
            arch=args.model,
            num_classes=args.num_classes,
        )
    check_recipe_for_model(recipe, facts)


def _is_detection_dataset(dataset: str, task: str) -> bool:
    """A built-in detection set by name, or a zip given with a detector (read as YOLO, VOC or
    COCO)."""
    from compression.detection_data import BUILTIN_DETECTION_DATASETS

    return dataset in BUILTIN_DETECTION_DATASETS or (
        task == "detection" and dataset not in _builtin_classification()
    )


def _builtin_classification() -> tuple[str, ...]:
    from compression.datasets import BUILTIN_DATASETS

    return tuple(BUILTIN_DATASETS)


def _check_task_matches_dataset(arch: str, dataset: str) -> str:
    """The zoo architecture's task; a detector with a classification data set, or a classifier
    with a detection one, is refused naming both."""
    from compression.detection_data import BUILTIN_DETECTION_DATASETS
    from compression.errors import ConfigError
    from compression.zoo import has_model, model_task

    if not has_model(arch):
        return "classification"
    task = model_task(arch)
    if task == "detection" and dataset in _builtin_classification():
        raise ConfigError(
            "--dataset",
            f"{arch!r} is a detection architecture but {dataset!r} is a classification data "
            f"set; use {', '.join(BUILTIN_DETECTION_DATASETS)} or a YOLO, VOC or COCO zip",
        )
    if task == "classification" and dataset in BUILTIN_DETECTION_DATASETS:
        raise ConfigError(
            "--dataset",
            f"{arch!r} is a classification architecture but {dataset!r} is a detection data "
            "set; use a detector (e.g. yolov3_tiny) or a classification data set",
        )
    if task not in ("classification", "detection"):
        raise ConfigError("--model", f"{arch!r} is a {task} architecture, which is not supported")
    return task


def _detector_options(args: argparse.Namespace, arch: str) -> dict[str, Any]:
    """``--width`` and ``--input-size`` for a zoo detector; refused for an architecture that
    does not take them."""
    from compression.errors import ConfigError
    from compression.zoo import default_input_size, model_options

    options: dict[str, Any] = {}
    accepted = model_options(arch)
    for flag, name, value in (
        ("--width", "width", args.width),
        ("--input-size", "input_size", args.input_size),
    ):
        if value is None:
            continue
        if name not in accepted:
            raise ConfigError(flag, f"{arch!r} has no {name} option")
        options[name] = value
    if "input_size" in accepted:
        options.setdefault("input_size", default_input_size(arch))
    return options


def _load_detection(args: argparse.Namespace, out: Path) -> tuple[ModelState, DetectionBundle]:
    """A zoo detector (``--width``, ``--input-size``) and its detection data set."""
    from compression.detection_data import (
        BUILTIN_DETECTION_DATASETS,
        load_builtin_detection,
        load_detection_zip,
    )
    from compression.detection_metrics import input_size_of
    from compression.errors import DatasetError
    from compression.stage import ArchSpec, ModelState
    from compression.zoo import create_model

    arch = args.model
    options = _detector_options(args, arch)
    if args.dataset in BUILTIN_DETECTION_DATASETS:
        # generated from the split seed at the model's input size, as the jobs runner does
        data = load_builtin_detection(
            args.dataset, seed=args.split_seed, size=options.get("input_size")
        )
    else:
        zip_path = Path(args.dataset)
        if not zip_path.is_file():
            raise DatasetError(
                f"--dataset: {args.dataset!r} is neither "
                f"{', '.join(BUILTIN_DETECTION_DATASETS)} nor a .zip file"
            )
        work = out / "dataset"
        shutil.rmtree(work, ignore_errors=True)  # re-extract on a resumed run
        data = load_detection_zip(zip_path, work, split_seed=args.split_seed)
    num_classes = args.num_classes or data.num_classes
    module = create_model(arch, num_classes=num_classes, in_channels=3, **options)
    size = input_size_of(module)
    model = ModelState(
        input_shape=(3, size, size),
        num_classes=num_classes,
        task="detection",
        module=module,
        arch=ArchSpec(arch, num_classes, 3, tuple(sorted(options.items()))),
    )
    return model, data


def _load_model_and_data(
    args: argparse.Namespace, out: Path
) -> tuple[ModelState, DatasetBundle | DetectionBundle]:
    from compression.datasets import BUILTIN_DATASETS, load_builtin, load_image_folder_zip
    from compression.errors import ConfigError, DatasetError
    from compression.model_io import load_model_file
    from compression.stage import ArchSpec, ModelState
    from compression.zoo import create_model, default_input_size, has_model

    model_path = Path(args.model)
    is_file = model_path.is_file()
    if not is_file and not has_model(args.model):
        raise ConfigError("--model", f"{args.model!r} is neither a file nor a zoo architecture")
    if not is_file and _check_task_matches_dataset(args.model, args.dataset) == "detection":
        return _load_detection(args, out)
    if args.width is not None or args.input_size is not None:
        raise ConfigError(
            "--width" if args.width is not None else "--input-size",
            "is an option of zoo detectors only",
        )

    def load_data(channels: int, size: int) -> DatasetBundle:
        from compression.preprocessing import PreprocessingError

        if args.dataset in BUILTIN_DATASETS:
            if channels != 1:
                raise DatasetError(
                    f"--dataset {args.dataset}: 1-channel images, but the model expects "
                    f"{channels} channels"
                )
            data = load_builtin(args.dataset, size=size, split_seed=args.split_seed)
        else:
            zip_path = Path(args.dataset)
            if not zip_path.is_file():
                raise DatasetError(
                    f"--dataset: {args.dataset!r} is neither 'mnist', 'digits' nor a .zip file"
                )
            work = out / "dataset"
            shutil.rmtree(work, ignore_errors=True)  # re-extract on a resumed run
            data = load_image_folder_zip(
                zip_path, work, size=size, channels=channels, split_seed=args.split_seed
            )
        try:
            declared = data.preprocessing.with_normalization(args.normalization)
        except PreprocessingError as exc:
            raise ConfigError("--normalization", str(exc)) from None
        return data.with_preprocessing(declared)

    if is_file:
        model = load_model_file(
            model_path, arch=args.arch, num_classes=args.num_classes, in_channels=args.in_channels
        )
        return model, load_data(model.input_shape[0], model.input_shape[1])
    arch = args.model
    size = default_input_size(arch)
    channels = args.in_channels or (1 if args.dataset in BUILTIN_DATASETS else 3)
    data = load_data(channels, size)
    num_classes = args.num_classes or data.num_classes
    module = create_model(arch, num_classes=num_classes, in_channels=channels)
    model = ModelState(
        input_shape=(channels, size, size),
        num_classes=num_classes,
        module=module,
        arch=ArchSpec(arch, num_classes, channels),
    )
    return model, data


def _reference_loader(args: argparse.Namespace) -> Any:
    """Resolve a model reference in a recipe (a distillation teacher).

    Accepted: a checkpoint's ``.json``/``.safetensors`` from an earlier run, ``ARCH:PATH`` for a
    state-dict file, or a plain path (ONNX, or a state dict of ``--arch``).
    """
    from compression.checkpoint import load_checkpoint
    from compression.model_io import load_model_file
    from compression.zoo import has_model

    def load(ref: str) -> ModelState:
        arch, _, rest = ref.partition(":")
        if rest and has_model(arch):
            return load_model_file(Path(rest), arch=arch)
        path = Path(ref)
        if path.suffix == ".json" or path.with_suffix(".json").is_file():
            return load_checkpoint(path)
        return load_model_file(path, arch=args.arch)

    return load


class _Bars:
    """Two rich progress bars: the whole run and the current stage."""

    def __init__(self, console: Console, *, enabled: bool, n_stages: int) -> None:
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.enabled = enabled
        self.progress = Progress(
            TextColumn("{task.description}", style="bold"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[note]}", style="dim"),
            console=console,
            transient=False,
            disable=not enabled,
        )
        self.overall = self.progress.add_task("overall", total=1.0, note="")
        self.stage = self.progress.add_task("baseline", total=1.0, note="")
        self.n_stages = n_stages

    def __enter__(self) -> _Bars:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def update(self, fraction: float, message: str, metrics: dict[str, Any]) -> None:
        self.progress.update(self.overall, completed=fraction, note=_one_line(message)[:80])
        event = metrics.get("event")
        if "stage" in metrics:
            name = f"stage {int(metrics['stage']) + 1}/{self.n_stages} {metrics.get('method', '')}"
            self.progress.update(
                self.stage, description=name, completed=float(metrics.get("stage_fraction", 0.0))
            )
        elif event in ("baseline_start", "baseline"):
            self.progress.update(self.stage, completed=1.0 if event == "baseline" else 0.0)
        if event == "stage_end" and self.enabled:
            what = "mAP@0.5" if metrics.get("metric") == "mAP@0.5" else "accuracy"
            self.progress.console.print(
                f"  {metrics.get('method')}: {what} {metrics.get('accuracy', 0):.2f}%, "
                f"{_fmt_int(metrics.get('params'))} params, {_fmt_int(metrics.get('macs'))} MACs, "
                f"{metrics.get('duration_s', 0):.1f}s",
                highlight=False,
            )


def _fmt_int(v: Any) -> str:
    if v is None:
        return "—"
    v = float(v)
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= div:
            return f"{v / div:.2f}{unit}"
    return f"{v:.0f}"


def _fmt_bytes(v: Any) -> str:
    if v is None:
        return "—"
    v = float(v)
    for unit, div in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if v >= div:
            return f"{v / div:.1f} {unit}"
    return f"{v:.0f} B"


def _print_summary(console: Console, report: RunReport, out: Path) -> None:
    from rich.table import Table

    detection = report.task == "detection"
    table = Table(title=f"{report.recipe['name']}: results", title_justify="left")
    # A detector's table has three more figures (mAP@0.5:0.95, end-to-end p50) and leaves out
    # the zipped size (the verdict line gives its ratio) so it fits 120 columns.
    cols: tuple[str, ...] = (
        ("state", "mAP50 %", "mAP50-95 %", "val mAP50", "params", "non-zero", "MACs", "ONNX",
         "p50 ms", "e2e ms")
        if detection
        else ("state", "test acc. %", "val acc. %", "params", "non-zero", "MACs", "ONNX",
              "zipped", "p50 ms (IQR)")
    )  # fmt: skip
    for col in cols:
        table.add_column(col, justify="left" if col == "state" else "right", no_wrap=True)

    def row(label: str, m: Any, style: str | None = None) -> None:
        lat = "—"
        if m.latency:
            iqr = m.latency.iqr_ms
            lat = f"{m.latency.p50_ms:.3f}" + (
                f" ({iqr:.3f})" if iqr is not None and not detection else ""
            )
        if detection:
            det = m.detection or {}
            cells = [
                label,
                f"{m.accuracy:.2f}",
                _pct(det.get("map50_95")),
                "—" if m.val_accuracy is None else f"{m.val_accuracy:.2f}",
                _fmt_int(m.params),
                _fmt_int(m.nonzero_params),
                _fmt_int(m.macs),
                _fmt_bytes(m.onnx_bytes),
                lat,
                f"{m.latency_e2e.p50_ms:.3f}" if m.latency_e2e else "—",
            ]
        else:
            cells = [
                label,
                f"{m.accuracy:.2f}",
                "—" if m.val_accuracy is None else f"{m.val_accuracy:.2f}",
                _fmt_int(m.params),
                _fmt_int(m.nonzero_params),
                _fmt_int(m.macs),
                _fmt_bytes(m.onnx_bytes),
                _fmt_bytes(m.onnx_zip_bytes),
                lat,
            ]
        table.add_row(*cells, style=style)

    row("baseline", report.baseline)
    for s in report.stages:
        row(f"{s.index + 1}. {s.name}" + (" (resumed)" if s.resumed else ""), s.metrics)
    row(f"final ({report.final_format})", report.final, style="bold")
    console.print(table)
    t = report.targets
    what = "mAP@0.5" if detection else "accuracy"
    parts = [f"vs {t['reference']}: test {what} drop {t['accuracy_drop']:+.2f} pt"]
    if t.get("size_ratio"):
        parts.append(f"{t['size_ratio']:.2f}x smaller ONNX")
    if t.get("zip_size_ratio"):
        parts.append(f"{t['zip_size_ratio']:.2f}x smaller zipped")
    if t.get("mac_ratio"):
        parts.append(f"{t['mac_ratio']:.2f}x fewer MACs")
    if t.get("latency_speedup"):
        parts.append(f"{t['latency_speedup']:.2f}x p50 speed-up")
    verdict = ""
    if t.get("met") is True:
        verdict = f" — [green]target met[/] (max drop {t['max_accuracy_drop']:g} pt)"
    elif t.get("met") is False:
        verdict = f" — [red]target missed[/] (max drop {t['max_accuracy_drop']:g} pt)"
    console.print(", ".join(parts) + verdict, highlight=False)
    if report.deep_compression:
        _print_deep_compression(console, report.deep_compression)
    console.print("~ marks latencies whose run-to-run variation is above 5%", style="dim")
    console.print(
        f"report: {out / 'report.json'}  artifacts: "
        + ", ".join(a["path"] for a in report.artifacts if a["kind"] != "checkpoint"),
        highlight=False,
    )


def _pct(fraction: Any) -> str:
    return "—" if fraction is None else f"{100.0 * float(fraction):.2f}"


def _kib(v: Any) -> str:
    return "—" if v is None else f"{float(v) / 1024:,.1f}"


def _print_deep_compression(console: Console, dc: dict[str, Any]) -> None:
    """The weight-coding stage's table, laid out like Han et al.'s (P pruning, Q sharing, H
    Huffman), then the whole model's size after each step."""
    from rich.table import Table

    table = Table(title="Deep Compression: the container, layer by layer", title_justify="left")
    table.caption = (
        "bits Q: codebook bits per non-zero weight; +H: its Huffman-coded stream per weight; "
        "idx: relative-index bits, before and after Huffman; sizes after pruning (P), "
        "weight sharing (Q) and Huffman coding (H), in KiB"
    )
    cols = ("layer", "weights", "kept", "bits Q", "+H", "idx", "+H ", "fp32", "P", "P+Q",
            "P+Q+H", "ratio")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="left" if col == "layer" else "right", no_wrap=True)

    def bits(row: dict[str, Any], key: str) -> str:
        v = row.get(key)
        return (
            "—"
            if v is None or row.get("stored_as") != "shared"
            else f"{v:.2f}".rstrip("0").rstrip(".")
        )

    for row in dc.get("layers", []):
        dense, coded = row.get("bytes_dense_fp32"), row.get("bytes_huffman")
        table.add_row(
            row["name"]
            + ("" if row.get("stored_as") == "shared" else f" ({row.get('stored_as')})"),
            _fmt_int(row.get("weights")),
            f"{100 * row['kept']:.1f}%" if row.get("kept") is not None else "—",
            bits(row, "weight_bits"),
            bits(row, "weight_bits_huffman"),
            bits(row, "index_bits"),
            bits(row, "index_bits_huffman"),
            _kib(dense),
            _kib(row.get("bytes_pruned")),
            _kib(row.get("bytes_shared")),
            _kib(coded),
            f"{dense / coded:.1f}x" if dense and coded else "—",
        )
    console.print(table)
    totals = dc.get("totals", {})
    whole = totals.get("whole_model_bytes", {})
    dense = whole.get("dense_fp32")
    steps = [("dense fp32", dense), ("pruned", whole.get("pruned")),
             ("+ shared", whole.get("shared")), ("+ Huffman (container)", whole.get("container"))]  # fmt: skip
    console.print(
        "whole model: "
        + " -> ".join(
            f"{label} {_fmt_bytes(b)}"
            + (f" ({dense / b:.1f}x)" if dense and b and b != dense else "")
            for label, b in steps
            if b
        ),
        highlight=False,
    )
    ver = dc.get("verification", {})
    if ver.get("predictions_equal"):
        console.print(
            f"container verified: decoded in {1000 * ver.get('decode_seconds', 0):.1f} ms, "
            f"identical predictions on all {ver.get('samples')} test images",
            highlight=False,
        )


if __name__ == "__main__":  # pragma: no cover
    from webapp.cli import main

    sys.exit(main(["compress", *sys.argv[1:]]))
