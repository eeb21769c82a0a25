"""The import-linter contracts catch a cycle hidden in a function-level import, the way the
old ``webapp.jobs.services`` -> ``workers.jobs_tasks`` -> ``workers.runner`` ->
``webapp.jobs.services`` cycle hid. Each case copies the packages, adds one import, and runs
``lint-imports`` on the copy; the untouched copy passes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("compression", "workers", "webapp", "device_registry")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.slow


def _copy(tmp_path: Path) -> Path:
    for name in PACKAGES:
        shutil.copytree(
            ROOT / name,
            tmp_path / name,
            ignore=shutil.ignore_patterns("__pycache__", "static", "templates", "*.onnx"),
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _add_function_import(path: Path, statement: str) -> None:
    with path.open("a") as fh:
        fh.write(f"\n\ndef _reintroduced() -> None:\n    {statement}  # noqa\n")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _copy(tmp_path_factory.mktemp("tree"))


def test_the_untouched_tree_keeps_every_contract(tree):
    result = _lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "statement", "broken"),
    [
        # The old cycle's first edge: a service importing its task module to enqueue.
        (
            "webapp/jobs/services.py",
            "from webapp.jobs.tasks import job_run",
            "services send tasks by name",
        ),
        # A worker-layer module reaching up into a web app (the old runner's place).
        (
            "workers/celery.py",
            "from webapp.jobs import services",
            "web apps above workers above compression",
        ),
        # One app's services importing another's task module that imports them back.
        (
            "webapp/catalog/services/common.py",
            "from webapp.catalog import tasks",
            "no cycles between the apps, nor between the modules of one app",
        ),
    ],
)
def test_a_reintroduced_cycle_fails_lint_imports(tmp_path, module, statement, broken):
    tree = _copy(tmp_path)
    _add_function_import(tree / module, statement)
    result = _lint(tree)
    assert result.returncode != 0, result.stdout
    assert f"{broken}" in result.stdout
    assert "BROKEN" in result.stdout
