"""The inspector child process: load an untrusted model or dataset, describe it, and write JSON.

Run as ``python -m webapp.catalog.inspect_child REQUEST.json RESULT.json`` by
:mod:`webapp.catalog.sandbox`, under an address-space cap and a timeout, so a hostile file can at
worst kill this process. It imports ``compression/`` only (no Django), and it never unpickles:
model files go through :func:`compression.model_io.load_model_file`.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any

THUMBS_PER_CLASS = 4
THUMB_SIDE = 64
# Detection images are checked at most this large (longer side): every image is decoded, but a
# set of photos held at full size would not fit the child's memory cap.
DETECTION_MAX_SIDE = 640


def inspect_model(req: dict[str, Any]) -> dict[str, Any]:
    from compression import inspection, model_io

    path = Path(req["path"])
    size = req.get("input_size")
    channels = req.get("in_channels")
    shape = (int(channels), int(size), int(size)) if channels and size else None
    if req["format"] == "onnx":
        # A decoded container's weights.bin, named by the caller; uploads allow none.
        allowed = frozenset(str(n) for n in req.get("external_data") or ())
        state = model_io.load_model_file(
            path, num_classes=req.get("num_classes"), allowed_external=allowed
        )
        info = inspection.inspect_onnx(path, allowed_external=allowed)
    else:
        if shape is None and size:
            # channels unknown yet: let model_io read them from the first convolution
            state = model_io.load_model_file(
                path, arch=req["arch"], num_classes=req.get("num_classes")
            )
            shape = (state.input_shape[0], int(size), int(size))
            if shape != state.input_shape:
                state = model_io.load_model_file(
                    path, arch=req["arch"], num_classes=state.num_classes, input_shape=shape
                )
        else:
            state = model_io.load_model_file(
                path, arch=req["arch"], num_classes=req.get("num_classes"), input_shape=shape
            )
        assert state.module is not None
        info = inspection.inspect_module(
            state.module,
            state.input_shape,
            num_classes=state.num_classes,
            arch=req["arch"],
            path=path,
        )
    data = info.to_dict()
    return {
        "info": data,
        "num_classes": state.num_classes,
        "in_channels": state.input_shape[0],
        "input_size": state.input_shape[1],
        "task": state.task,  # "detection" for an ONNX carrying EdgeSlim's detection metadata
    }


def check_onnx(req: dict[str, Any]) -> dict[str, Any]:
    """Any ONNX model, not only an image classifier (a device artifact): external data, the
    ONNX checker and one ONNX Runtime run on zeros (the memory-capped probe), then the layer
    table; ``external_data`` names the only external files allowed beside it."""
    from compression import inspection, model_io

    path = Path(req["path"])
    allowed = frozenset(str(n) for n in req.get("external_data") or ())
    probe = model_io.probe_onnx(path, allowed_external=allowed)
    info = inspection.inspect_onnx(path, allowed_external=allowed)
    return {"info": info.to_dict(), "inputs": probe["inputs"], "outputs": probe["outputs"]}


def build_builtin(req: dict[str, Any]) -> dict[str, Any]:
    """Make a built-in sample's weights: a zoo model trained on the built-in MNIST at the
    model's input size, scored on its test split, with the preprocessing record it was trained
    with (``train_epochs`` 0 leaves it untrained)."""
    import torch

    from compression import model_io, zoo

    torch.manual_seed(0)
    module = zoo.create_model(
        req["arch"], num_classes=int(req["num_classes"]), in_channels=int(req["in_channels"])
    )
    out_extra: dict[str, Any] = {"history": []}
    epochs = int(req.get("train_epochs") or 0)
    if epochs > 0:
        out_extra = _train_on_builtin(
            module,
            dataset=str(req.get("train_dataset") or "mnist"),
            epochs=epochs,
            size=int(req["input_size"]),
            max_batches=int(req.get("max_batches") or 0) or None,
            optimizer=str(req.get("train_optimizer") or "adam"),
            lr=float(req.get("train_lr") or 0.003),
        )
    out = Path(req["out_path"])
    model_io.save_model_safetensors(module, out)
    return {"path": str(out), **out_extra}


def _train_on_builtin(
    module: Any,
    *,
    dataset: str,
    epochs: int,
    size: int,
    max_batches: int | None,
    optimizer: str = "adam",
    lr: float = 0.003,
) -> dict[str, Any]:
    import torch

    from compression.datasets import load_builtin
    from compression.evaluation import accuracy_torch
    from compression.stage import ModelState, StageContext
    from compression.training import train

    data = load_builtin(dataset, size=size)
    ctx = StageContext(
        model=ModelState(input_shape=data.input_shape, num_classes=10, module=module),
        data=data,
        device=torch.device("cpu"),
        work_dir=Path("."),
        seed=0,
        report=lambda *_: None,
        check_cancel=lambda: None,
    )
    # AdamW by default: SGD at lr 0.05 left the BatchNorm-free LeNet-5 at 30% after an epoch;
    # a BatchNorm VGG trains better with SGD (each built-in's spec says which).
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"unknown optimizer {optimizer!r}")
    history = train(
        module,
        data,
        ctx,
        epochs=epochs,
        lr=lr,
        batch_size=64,
        optimizer="sgd" if optimizer == "sgd" else "adam",
        max_batches_per_epoch=max_batches,
    )
    return {
        "history": history,
        "dataset": dataset,
        "test_accuracy": round(accuracy_torch(module, data.test_loader()), 2),
        "preprocessing": data.preprocessing.to_dict(),
    }


def validate_dataset(req: dict[str, Any]) -> dict[str, Any]:
    """Load the dataset with its stored split seed, report the three splits, write thumbnails."""
    work = Path(req["work_dir"])
    split_seed = int(req.get("split_seed") or 0)
    detection = _validate_detection(req, work, split_seed)
    if detection is not None:
        return detection
    # only now: a detection set is read without torch, a classification set into torch tensors
    from compression.datasets import (
        BUILTIN_DATASETS,
        dataset_report,
        load_builtin,
        load_image_folder_zip,
    )

    if req["kind"] in BUILTIN_DATASETS:
        bundle = load_builtin(req["kind"], split_seed=split_seed)
    else:
        bundle = load_image_folder_zip(
            req["path"], work / "data", size=32, channels=3, split_seed=split_seed
        )
    report = dataset_report(bundle).to_dict()
    report["name"] = req.get("name") or report["name"]
    thumbs = _write_thumbnails(bundle, work / "thumbs")
    return {"report": report, "thumbnails": thumbs}


def _validate_detection(req: dict[str, Any], work: Path, split_seed: int) -> dict[str, Any] | None:
    """A detection data set's report and box-drawn samples, or None for a classification set.

    ``mnist_scenes`` is generated from the split seed; a ``detection_zip`` is read as YOLO, VOC
    or COCO; an ``image_zip`` whose entry names look like one of those is tried as detection
    first (a COCO guess that holds no COCO JSON falls back to the image-folder reading)."""
    import shutil
    import zipfile

    from compression import detection_data as dd

    kind = req["kind"]
    if kind == "mnist_scenes":
        bundle = dd.load_builtin_detection("mnist_scenes", seed=split_seed)
    elif kind in ("detection_zip", "image_zip"):
        if kind == "image_zip":
            try:
                with zipfile.ZipFile(req["path"]) as zf:
                    guess = dd.format_from_names(zf.namelist())
            except (zipfile.BadZipFile, OSError):
                return None  # the image-folder reading refuses it with its own message
            if guess is None:
                return None
        try:
            bundle = dd.load_detection_zip(
                req["path"], work / "det", split_seed=split_seed, max_side=DETECTION_MAX_SIDE
            )
        except dd.NotDetectionError:
            if kind == "detection_zip":
                raise
            shutil.rmtree(work / "det", ignore_errors=True)
            return None
    else:
        return None
    report = bundle.report.to_dict()
    report["name"] = req.get("name") or report["name"]
    thumbs: dict[str, list[str]] = {}
    folder = work / "thumbs"
    folder.mkdir(parents=True, exist_ok=True)
    for index, (name, samples) in enumerate(dd.samples_per_class(bundle).items()):
        thumbs[name] = []
        for n, sample in enumerate(samples):
            path = folder / f"{index}_{n}.png"
            dd.draw_boxes(sample, bundle.classes).save(path, format="PNG")
            thumbs[name].append(str(path))
    return {"report": report, "thumbnails": thumbs}


def _write_thumbnails(bundle: Any, folder: Path) -> dict[str, list[str]]:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[str]] = {name: [] for name in bundle.classes}
    images, labels = bundle.train.images, bundle.train.labels.tolist()
    for index, label in enumerate(labels):
        name = bundle.classes[int(label)]
        if len(out[name]) >= THUMBS_PER_CLASS:
            continue
        x = images[index]
        arr = x.numpy()
        if arr.dtype != np.uint8:  # digits are floats in [0, 1]
            arr = (np.clip(arr, 0.0, 1.0) * 255).astype(np.uint8)
        arr = arr.transpose(1, 2, 0)
        if arr.shape[2] == 1:
            arr = arr[:, :, 0]
        image = Image.fromarray(arr).resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.NEAREST)
        path = folder / f"{int(label)}_{len(out[name])}.png"
        image.save(path, format="PNG")
        out[name].append(str(path))
        if all(len(v) >= THUMBS_PER_CLASS for v in out.values()):
            break
    return out


ACTIONS = {
    "model": inspect_model,
    "onnx": check_onnx,
    "builtin": build_builtin,
    "dataset": validate_dataset,
}
UNEXPECTED = {
    "model": "the file could not be inspected: reading it failed in a way EdgeSlim does not "
    "recognise. Check that it is a model file EdgeSlim accepts (safetensors or a weights-only "
    ".pt state dict for a zoo architecture, or a single-file ONNX) and that it is complete",
    "dataset": "the archive could not be read as a dataset: reading it failed in a way "
    "EdgeSlim does not recognise. Check that it is a complete zip of train/<class>/<image> "
    "folders, or of a detection set (YOLO, Pascal VOC or COCO, see docs/detection.md)",
    "onnx": "the file could not be inspected: reading it failed in a way EdgeSlim does not "
    "recognise. Check that it is a complete, single-file ONNX model",
    "builtin": "the built-in sample could not be built; see the worker's log",
}


def main(argv: list[str]) -> int:
    request_path, result_path = Path(argv[1]), Path(argv[2])
    req = json.loads(request_path.read_text())
    try:
        result: dict[str, Any] = {"ok": True, **ACTIONS[req["action"]](req)}
    except MemoryError:
        result = {"ok": False, "kind": "memory", "error": "ran out of memory (the memory cap)"}
    except Exception as exc:
        from compression.errors import CompressionError

        if isinstance(exc, CompressionError):
            result = {"ok": False, "kind": type(exc).__name__, "error": str(exc)}
        else:
            # A bug or a case the loaders do not name: the worker's log gets the traceback, the
            # user a sentence (never "KeyError: 'data_offsets'").
            traceback.print_exc()
            result = {"ok": False, "kind": "unexpected", "error": UNEXPECTED[req["action"]]}
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(result_path)
    return 0 if result["ok"] else 3


if __name__ == "__main__":
    sys.exit(main(sys.argv))
