"""The upload inspector's ONNX paths never import torch.

Each upload is inspected in a fresh ``webapp.catalog.inspect_child`` process; importing torch
there costs about two seconds of CPU per upload (and per catalog test). An ONNX file is only
parsed, probed with ONNX Runtime and described from its graph, so a torch import creeping back
into ``compression.model_io``, ``compression.inspection`` or the detector-metadata reader would
slow every ONNX upload down without failing anything else: this test fails instead.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from catalog_files import lenet5_onnx

ROOT = Path(__file__).resolve().parents[3]

CHILD = """
import json, sys
from webapp.catalog import inspect_child
req = json.loads(sys.argv[1])
result = inspect_child.ACTIONS[req["action"]](req)
print(json.dumps({"result": result, "torch": sorted(
    m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))}))
"""


@pytest.mark.parametrize("action", ["model", "onnx"])
def test_the_inspectors_onnx_paths_do_not_import_torch(tmp_path, action):
    path = lenet5_onnx(tmp_path / "lenet5.onnx")
    req = {"action": action, "format": "onnx", "path": str(path)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(req)],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # the inspection itself ran and described the file (not an early refusal)
    info = out["result"]["info"]
    assert info["format"] == "onnx"
    assert info["params"] == 61706  # LeNet-5 for 1x32x32 and 10 classes
    if action == "model":
        assert out["result"]["num_classes"] == 10
        assert out["result"]["input_size"] == 32
    assert out["torch"] == [], f"the {action} inspection imported {out['torch'][:5]}"
