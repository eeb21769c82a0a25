"""The wizard, launch from a file, the live page and duplicate, through Django's test client."""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from factories import client_for
from jobs_factories import make_digits, make_model_version

from webapp.jobs.forms import StageConfigForm
from webapp.jobs.models import Job

pytestmark = pytest.mark.django_db


def test_stage_forms_are_generated_from_the_registry_with_help_bounds_and_choices():
    form = StageConfigForm(method="channel_pruning", initial_config={"ratio": 0.3})
    ratio = form.fields["ratio"]
    assert ratio.initial == 0.3
    assert "fraction of channels to remove" in ratio.help_text
    assert [c for c, _ in form.fields["importance"].choices] == ["bn_scale", "l1", "l2", "dynamic"]
    bad = StageConfigForm(
        {
            "ratio": "1.5",
            "importance": "l1",
            "max_layer_ratio": "0.9",
            "round_to": "8",
            "sparsity_lambda": "0",
            "sparsity_epochs": "1",
            "finetune_epochs": "1",
            "lr": "0",
            "batch_size": "64",
            "optimizer": "sgd",
            "weight_decay": "0",
        },
        method="channel_pruning",
    )
    assert not bad.is_valid()
    assert "ratio" in bad.errors and "lr" in bad.errors


def test_the_wizard_walks_to_a_queued_job(org_a, django_capture_on_commit_callbacks):
    org, user = org_a
    mv, ds = make_model_version(org), make_digits(org)
    c = client_for(user)
    assert c.get(reverse("jobs:new")).status_code == 302
    r = c.post(reverse("jobs:wizard", args=["pick"]), {"model_version": mv.pk, "dataset": ds.pk})
    assert r.url == reverse("jobs:wizard", args=["goal"])
    r = c.post(
        reverse("jobs:wizard", args=["goal"]),
        {"goal": "custom", "stage_0": "finetune", "stage_1": "ptq_int8"},
    )
    assert r.url == reverse("jobs:wizard", args=["params"])
    page = c.get(reverse("jobs:wizard", args=["params"])).content.decode()
    assert "passes over the training set" in page  # help text from the registry
    params = {
        "s0-epochs": "1",
        "s0-lr": "0.05",
        "s0-batch_size": "64",
        "s0-optimizer": "sgd",
        "s0-weight_decay": "0.0005",
        "s1-mode": "static",
        "s1-per_channel": "on",
        "s1-calibrate_method": "minmax",
        "s1-calibration_samples": "16",
        "s1-quant_format": "qdq",
        "s1-activation_type": "uint8",
        "s1-preprocess": "on",
        "s1-opset": "17",
    }
    r = c.post(reverse("jobs:wizard", args=["params"]), params)
    assert r.status_code == 302, r.content.decode()[:2000]
    r = c.post(
        reverse("jobs:wizard", args=["targets"]), {"name": "wizard job", "max_accuracy_drop": "2"}
    )
    review = c.get(reverse("jobs:wizard", args=["review"]))
    text = review.context["form"].initial["recipe_yaml"]
    assert "lr: 0.05" in text and "max_accuracy_drop: 2.0" in text
    with django_capture_on_commit_callbacks(execute=False):
        r = c.post(reverse("jobs:wizard", args=["review"]), {"recipe_yaml": text})
    job = Job.objects.get()
    assert r.url == reverse("jobs:detail", args=[job.pk])
    assert (job.name, job.recipe["stages"][0]["config"]["lr"]) == ("wizard job", 0.05)


def test_an_edited_invalid_recipe_is_refused_on_review_naming_the_field(org_a):
    org, user = org_a
    mv, ds = make_model_version(org), make_digits(org)
    c = client_for(user)
    c.post(reverse("jobs:wizard", args=["pick"]), {"model_version": mv.pk, "dataset": ds.pk})
    c.post(reverse("jobs:wizard", args=["goal"]), {"goal": "balanced"})
    bad = "stages:\n  - method: channel_pruning\n    config: {ratio: 7}\n"
    r = c.post(reverse("jobs:wizard", args=["review"]), {"recipe_yaml": bad})
    assert r.status_code == 400
    assert "recipe.stages[0].config.ratio" in r.content.decode()
    assert not Job.objects.exists()


def test_a_recipe_file_launches_a_job_or_says_what_is_wrong(
    org_a, django_capture_on_commit_callbacks
):
    org, user = org_a
    mv, ds = make_model_version(org), make_digits(org)
    c = client_for(user)
    bad = SimpleUploadedFile("r.yaml", b"stages:\n  - method: finetune\n    config: {epochs: -3}\n")
    r = c.post(
        reverse("jobs:from_file"), {"model_version": mv.pk, "dataset": ds.pk, "recipe_file": bad}
    )
    assert r.status_code == 400 and "recipe.stages[0].config.epochs" in r.content.decode()
    good = SimpleUploadedFile("r.yaml", b"stages:\n  - method: ptq_int8\n")
    with django_capture_on_commit_callbacks(execute=False):
        r = c.post(
            reverse("jobs:from_file"),
            {"model_version": mv.pk, "dataset": ds.pk, "recipe_file": good},
        )
    assert r.status_code == 302
    assert Job.objects.count() == 1


def test_the_live_page_renders_history_and_the_last_seq(org_a, django_capture_on_commit_callbacks):
    from webapp.jobs import services

    org, user = org_a
    with django_capture_on_commit_callbacks(execute=False):
        job = services.job_create(
            organization=org,
            user=user,
            model_version=make_model_version(org),
            dataset=make_digits(org),
            recipe={"stages": ["finetune", "ptq_int8"]},
        )
    services.job_event_record(
        job=job, kind="stage_started", payload={"stage": 0, "method": "finetune"}
    )
    services.job_event_record(
        job=job, kind="epoch", payload={"stage": 0, "epoch": 1, "loss": 0.5, "val_acc": 90}
    )
    services.job_event_record(
        job=job, kind="stage_finished", payload={"stage": 0, "metrics": {"accuracy": 91.0}}
    )
    page = client_for(user).get(reverse("jobs:detail", args=[job.pk]))
    history = page.context["history"]
    assert history["last_seq"] == 4
    assert [s["status"] for s in history["stages"]] == ["done", "pending"]
    assert history["epochs"][0]["loss"] == 0.5
    assert 'id="job-history"' in page.content.decode()
    assert json.loads(page.context["history"] and json.dumps(history))["last_seq"] == 4


def test_a_manager_can_read_but_not_launch(org_a):
    from factories import make_member

    org, _ = org_a
    manager = make_member(org, role="manager")
    c = client_for(manager)
    assert c.get(reverse("jobs:list")).status_code == 200
    assert c.get(reverse("reports:index")).status_code == 200
    assert c.get(reverse("jobs:new")).status_code == 403
