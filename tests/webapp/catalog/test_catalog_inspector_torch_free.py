"""The upload inspector's ONNX and detection-zip paths never import torch.

Each upload is inspected in a fresh ``webapp.catalog.inspect_child`` process; importing torch
there costs about two seconds of CPU per upload (and per catalog test). An ONNX file is only
parsed, probed with ONNX Runtime and described from its graph, and a detection zip is read into
numpy samples, so a torch import creeping back into ``compression.model_io``,
``compression.inspection``, the detector-metadata reader, ``compression.detection_data`` or
``compression.dataset_files`` would slow those uploads down without failing anything else: this
test fails instead. (A classification zip is decoded into torch tensors: that path needs torch.)
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from catalog_files import lenet5_onnx
from PIL import Image

ROOT = Path(__file__).resolve().parents[3]

CHILD = """
import json, sys
from webapp.catalog import inspect_child
req = json.loads(sys.argv[1])
result = inspect_child.ACTIONS[req["action"]](req)
print(json.dumps({"result": result, "torch": sorted(
    m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))}))
"""


def _run_child(req: dict[str, object]) -> Any:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(req)],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out: Any = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


@pytest.mark.parametrize("action", ["model", "onnx"])
def test_the_inspectors_onnx_paths_do_not_import_torch(tmp_path, action):
    path = lenet5_onnx(tmp_path / "lenet5.onnx")
    out = _run_child({"action": action, "format": "onnx", "path": str(path)})
    # the inspection itself ran and described the file (not an early refusal)
    info = out["result"]["info"]
    assert info["format"] == "onnx"
    assert info["params"] == 61706  # LeNet-5 for 1x32x32 and 10 classes
    if action == "model":
        assert out["result"]["num_classes"] == 10
        assert out["result"]["input_size"] == 32
    assert out["torch"] == [], f"the {action} inspection imported {out['torch'][:5]}"


def _yolo_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("shapes/classes.txt", "square\nround\n")
        for i in range(12):
            buf = io.BytesIO()
            Image.new("RGB", (32, 32), (20 * i, 80, 160)).save(buf, format="PNG")
            zf.writestr(f"shapes/images/{i:02d}.png", buf.getvalue())
            lines = ["0 0.5 0.5 0.5 0.5"] + (["1 0.2 0.2 0.2 0.2"] if i % 2 else [])
            zf.writestr(f"shapes/labels/{i:02d}.txt", "\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("kind", ["detection_zip", "image_zip"])
def test_the_inspectors_detection_zip_path_does_not_import_torch(tmp_path, kind):
    path = _yolo_zip(tmp_path / "shapes.zip")
    work = tmp_path / "work"
    work.mkdir()
    req = {"action": "dataset", "kind": kind, "path": str(path), "work_dir": str(work)}
    out = _run_child(req)
    result = out["result"]
    report = result["report"]
    # read as a YOLO detection set (an image_zip whose names look like YOLO is tried so first)
    assert report["format"] == "yolo", report
    assert sorted(report["classes"]) == ["round", "square"]
    assert sum(len(v) for v in result["thumbnails"].values()) > 0
    assert out["torch"] == [], f"the {kind} validation imported {out['torch'][:5]}"
