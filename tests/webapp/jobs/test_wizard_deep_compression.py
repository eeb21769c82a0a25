"""Issue 12's "the same recipe runs as a job from the wizard": each shipped Deep Compression
recipe is entered stage by stage in the wizard's custom path (forms generated from the
registry), and the job it queues carries the recipe's four stages with the recipe's settings.
That such a job runs and writes a container that decodes is tests/webapp/jobs/
test_job_container.py's; this checks the wizard can express the recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from django.urls import reverse
from factories import client_for
from jobs_factories import make_digits, make_model_version

from webapp.jobs.forms import StageConfigForm
from webapp.jobs.models import Job

pytestmark = pytest.mark.django_db

RECIPES = Path(__file__).resolve().parents[3] / "recipes"


def _posted(prefix: str, form: StageConfigForm) -> dict[str, str]:
    """What a browser submits for ``form`` left at its initial values (the recipe's)."""
    data: dict[str, str] = {}
    for name, field in form.fields.items():
        value: Any = field.initial
        if isinstance(value, bool):
            if value:
                data[f"{prefix}-{name}"] = "on"
        elif value is None:
            data[f"{prefix}-{name}"] = ""
        else:
            data[f"{prefix}-{name}"] = str(value)
    return data


@pytest.mark.parametrize("name", ["deep_compression_lenet300", "deep_compression_lenet5"])
def test_the_wizard_queues_the_shipped_deep_compression_recipe(
    name: str, org_a: Any, django_capture_on_commit_callbacks: Any
) -> None:
    shipped = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
    methods = [s["method"] for s in shipped["stages"]]
    assert methods == ["finetune", "magnitude_pruning", "weight_sharing", "weight_coding"]
    org, user = org_a
    mv, ds = make_model_version(org), make_digits(org)
    c = client_for(user)
    c.post(reverse("jobs:wizard", args=["pick"]), {"model_version": mv.pk, "dataset": ds.pk})
    r = c.post(
        reverse("jobs:wizard", args=["goal"]),
        {"goal": "custom", **{f"stage_{i}": m for i, m in enumerate(methods)}},
    )
    assert r.url == reverse("jobs:wizard", args=["params"])
    page = c.get(reverse("jobs:wizard", args=["params"]))
    offered = [f.method for f in page.context["stage_forms"]]
    assert offered == methods
    params: dict[str, str] = {}
    for i, stage in enumerate(shipped["stages"]):
        form = StageConfigForm(method=stage["method"], initial_config=stage.get("config"))
        params.update(_posted(f"s{i}", form))
    r = c.post(reverse("jobs:wizard", args=["params"]), params)
    assert r.status_code == 302, r.content.decode()[:2000]
    c.post(
        reverse("jobs:wizard", args=["targets"]),
        {"name": shipped["name"], "max_accuracy_drop": "0.5"},
    )
    text = c.get(reverse("jobs:wizard", args=["review"])).context["form"].initial["recipe_yaml"]
    with django_capture_on_commit_callbacks(execute=False):
        r = c.post(reverse("jobs:wizard", args=["review"]), {"recipe_yaml": text})
    job = Job.objects.get()
    assert r.url == reverse("jobs:detail", args=[job.pk])
    assert [s["method"] for s in job.recipe["stages"]] == methods
    for queued, stage in zip(job.recipe["stages"], shipped["stages"], strict=True):
        for key, value in (stage.get("config") or {}).items():
            assert queued["config"][key] == value, (stage["method"], key)
