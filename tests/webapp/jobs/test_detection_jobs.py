"""Detection jobs on the web side: the wizard offers only the methods whose scope includes the
model's task (and format), an untrained zoo detector gets a training stage first, a detector
with a classification data set (or the reverse) is refused before queueing by the API and the
``edgeslim jobs`` CLI naming both tasks, and a detection job runs through the real runner on a
tiny YOLOv3-tiny, logging its images and boxes, with mAP@0.5 on the job page."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from django.test import Client
from django.urls import reverse
from factories import client_for
from jobs_factories import make_digits, make_model_version
from PIL import Image

from webapp.catalog import services as catalog_services
from webapp.catalog.models import Dataset, DatasetKind, DatasetTask, ItemStatus, ModelVersion
from webapp.cli import main
from webapp.jobs.forms import GoalForm
from webapp.jobs.models import Job
from webapp.jobs.presets import model_profile_for_version, presets_for_model
from webapp.jobs.recipes import recipe_check

CLASSIFICATION_ONLY = {"tucker_decomposition", "qat_int8", "weight_sharing", "backbone_swap"}


def tiny_detector(org, *, dataset: Dataset | None = None, classes: int = 2) -> ModelVersion:  # type: ignore[no-untyped-def]
    return catalog_services.zoo_model_create(
        organization=org, user=None, arch="yolov3_tiny", dataset=dataset,
        num_classes=None if dataset else classes, options={"width": 0.25, "input_size": 64},
    )  # fmt: skip


def scenes_row(org) -> Dataset:  # type: ignore[no-untyped-def]
    return Dataset.objects.create(
        organization=org, name="scenes", kind=DatasetKind.MNIST_SCENES,
        task=DatasetTask.DETECTION, num_classes=10, status=ItemStatus.READY,
        report={"task": "detection", "classes": list("0123456789")},
    )  # fmt: skip


def _stage_choices(form: GoalForm) -> set[str]:
    return {value for value, _ in form.fields["stage_0"].choices if value}  # type: ignore[attr-defined]


def test_custom_stages_offer_only_the_methods_of_the_models_task_and_format():
    detection = _stage_choices(GoalForm(task="detection", fmt="torch"))
    classification = _stage_choices(GoalForm(task="classification", fmt="torch"))
    onnx_detector = _stage_choices(GoalForm(task="detection", fmt="onnx"))
    assert {"channel_pruning", "magnitude_pruning", "ptq_int8"} <= detection
    assert not detection & CLASSIFICATION_ONLY
    assert classification >= CLASSIFICATION_ONLY and detection < classification
    assert "ptq_int8" in onnx_detector and not onnx_detector & {"channel_pruning", "finetune"}


@pytest.mark.django_db
def test_the_wizard_offers_a_detector_its_methods_and_trains_an_untrained_one_first(org_a):
    org, user = org_a
    scenes = scenes_row(org)
    detector = tiny_detector(org, dataset=scenes)
    c = client_for(user)
    pick = c.get(reverse("jobs:wizard", args=["pick"])).content.decode()
    assert "yolov3_tiny (untrained) v1 · torch · detection · new from the zoo, untrained" in pick
    r = c.post(
        reverse("jobs:wizard", args=["pick"]),
        {"model_version": detector.pk, "dataset": scenes.pk},
    )
    assert r.status_code == 302, r.content.decode()[-1500:]
    page = c.get(reverse("jobs:wizard", args=["goal"])).content.decode()
    assert "<span data-model-task>detection</span>" in page and "untrained weights" in page
    options = page.split('name="stage_0"', 1)[1].split("</select>", 1)[0]
    assert 'value="channel_pruning"' in options and 'value="ptq_int8"' in options
    assert 'value="tucker_decomposition"' not in options and 'value="qat_int8"' not in options
    # The presets train the untrained detector first and compare with the trained model; every
    # stage of every offered preset passes the recipe check (needs finetune on detectors).
    offered = [p for p in presets_for_model(model_profile_for_version(detector)) if p.stages]
    assert {p.key for p in offered} >= {"smallest", "balanced"}
    for built in offered:
        assert built.methods[0] == "finetune" and built.reference == "stage:0"
        assert built.stages[0]["config"]["batch_size"] == 16
        recipe = {"stages": built.stages, "targets": {"reference": built.reference}}
        recipe_check(recipe, model_version=detector, dataset=scenes)


@pytest.mark.django_db(transaction=True)
def test_the_api_and_the_cli_refuse_a_task_mismatch_naming_both(
    live_server, org_a, token_for, capsys, tmp_path
):
    org, user = org_a
    detector, digits = tiny_detector(org, classes=10), make_digits(org)
    classifier, scenes = make_model_version(org), scenes_row(org)
    headers = token_for(user)
    recipe = {"stages": [{"method": "ptq_int8", "config": {"calibration_samples": 8}}]}

    def post(mv: ModelVersion, ds: Dataset, body: dict = recipe):  # type: ignore[no-untyped-def,type-arg]
        return Client().post(
            reverse("api:jobs-list"),
            data=json.dumps({"model_version": mv.pk, "dataset": ds.pk, "recipe": body}),
            content_type="application/json",
            **headers,
        )

    r = post(detector, digits)
    assert r.status_code == 400 and r.json()["field"] == "dataset", r.content
    assert "the model is a detection model but" in r.json()["detail"]
    assert "is a classification data set" in r.json()["detail"]
    r = post(classifier, scenes)
    assert r.status_code == 400
    assert "classification model but 'scenes' is a detection data set" in r.json()["detail"]
    # a classification-only method asked for a detector names the method and the task
    tucker = {"stages": [{"method": "tucker_decomposition", "config": {}}]}
    r = post(detector, scenes_row(org), tucker)
    assert r.status_code == 400 and "tucker_decomposition" in r.json()["detail"]
    assert "detection" in r.json()["detail"]

    token = headers["HTTP_AUTHORIZATION"].split()[1]
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(recipe))
    flags = ["--server", live_server.url, "--token", token, "--no-wait", "--quiet"]
    code = main(["jobs", "submit", str(path), "--model", str(detector.pk),
                 "--dataset", str(digits.pk), *flags])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "detection model" in err and "classification data set" in err
    assert "field: dataset" in err
    assert not Job.objects.exists()

    # --zoo makes an untrained detector sized for the data set, then queues the job on it
    zoo = ["--zoo", "yolov3_tiny", "--dataset", str(scenes.pk)]
    code = main(["jobs", "submit", str(path), *zoo, "--zoo-option", "depth=3", *flags])
    assert code == 2 and "'depth' is not an option of 'yolov3_tiny'" in capsys.readouterr().err
    code = main(["jobs", "submit", str(path), *zoo, "--zoo-option", "width", *flags])
    assert code == 2 and "NAME=VALUE" in capsys.readouterr().err
    code = main(["jobs", "submit", str(path), *zoo, "--zoo-option", "width=0.25",
                 "--zoo-option", "input_size=64", *flags])  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    job = Job.objects.get(pk=int(out.out.strip()))
    assert job.model_version.arch == "yolov3_tiny" and job.model_version.input_size == 64
    assert job.model_version.num_classes == 10 and job.dataset == scenes


# --- a detection job through the runner ------------------------------------------------------


def shapes_yolo_zip(path: Path, *, images: int = 16, side: int = 64) -> Path:
    """Bright squares and dark discs on noise, one or two an image, with their YOLO labels."""
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("shapes/classes.txt", "square\ndisc\n")
        for i in range(images):
            pixels = rng.integers(60, 140, (side, side, 3), dtype=np.uint8)
            lines = []
            for k in range(1 + i % 2):
                s = int(rng.integers(14, 24))
                x, y = int(rng.integers(0, side - s)), int(rng.integers(0, side - s))
                cls = (i + k) % 2
                if cls == 0:
                    pixels[y : y + s, x : x + s] = 240
                else:
                    yy, xx = np.mgrid[:s, :s]
                    disc = (yy - s / 2) ** 2 + (xx - s / 2) ** 2 <= (s / 2) ** 2
                    pixels[y : y + s, x : x + s][disc] = 10
                cx, cy = (x + s / 2) / side, (y + s / 2) / side
                lines.append(f"{cls} {cx:.4f} {cy:.4f} {s / side:.4f} {s / side:.4f}")
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="PNG")
            zf.writestr(f"shapes/images/{i:02d}.png", buf.getvalue())
            zf.writestr(f"shapes/labels/{i:02d}.txt", "\n".join(lines) + "\n")
    return path


@pytest.mark.django_db
def test_a_sweep_on_a_detection_data_set_is_refused_before_anything_is_saved(org_a):
    from webapp.jobs import sweep_services
    from webapp.jobs.errors import JobInputError
    from webapp.jobs.models import Sweep

    org, user = org_a
    scenes = scenes_row(org)
    recipe = {"stages": [{"method": "channel_pruning", "config": {"importance": "l2"}}]}
    with pytest.raises(JobInputError, match="sweeps run on classification data sets only"):
        sweep_services.sweep_create(
            organization=org, user=user, model_version=tiny_detector(org, dataset=scenes),
            dataset=scenes, recipe=recipe, grid={"ratio": [0.2, 0.4]},
        )  # fmt: skip
    assert not Sweep.objects.exists() and not Job.objects.exists()


def _stage_form_data(stage_forms) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """What a browser posts for the parameter forms as rendered (their initial values)."""
    from django import forms as dj_forms

    data: dict[str, str] = {}
    for form in stage_forms:
        for name, field in form.fields.items():
            value = form[name].value()
            key = form.add_prefix(name)
            if isinstance(field, dj_forms.BooleanField):
                if value:
                    data[key] = "on"
            else:  # value() is already prepared (a JSON field's is its JSON text)
                data[key] = "" if value is None else str(value)
    return data


@pytest.mark.django_db
def test_the_wizard_walks_an_untrained_zoo_detector_to_a_queued_job(
    org_a, django_capture_on_commit_callbacks
):
    org, user = org_a
    scenes = scenes_row(org)
    detector = tiny_detector(org, dataset=scenes)
    c = client_for(user)
    c.post(
        reverse("jobs:wizard", args=["pick"]), {"model_version": detector.pk, "dataset": scenes.pk}
    )
    r = c.post(reverse("jobs:wizard", args=["goal"]), {"goal": "smallest"})
    assert r.status_code == 302, r.content.decode()[-2000:]
    page = c.get(reverse("jobs:wizard", args=["params"]))
    r = c.post(
        reverse("jobs:wizard", args=["params"]), _stage_form_data(page.context["stage_forms"])
    )
    assert r.status_code == 302, [f.errors for f in r.context["stage_forms"]]
    page = c.get(reverse("jobs:wizard", args=["targets"])).content.decode()
    assert "Max mAP@0.5 drop" in page
    c.post(
        reverse("jobs:wizard", args=["targets"]), {"name": "tiny yolo", "max_accuracy_drop": "1"}
    )
    review = c.get(reverse("jobs:wizard", args=["review"]))
    text = review.context["form"].initial["recipe_yaml"]
    with django_capture_on_commit_callbacks(execute=False):
        r = c.post(reverse("jobs:wizard", args=["review"]), {"recipe_yaml": text})
    job = Job.objects.get()
    assert r.url == reverse("jobs:detail", args=[job.pk])
    methods = [s["method"] for s in job.recipe["stages"]]
    assert methods == ["finetune", "channel_pruning", "finetune", "ptq_int8"]
    assert job.recipe["stages"][0]["config"]["epochs"] == 10
    prune = job.recipe["stages"][1]["config"]
    assert prune["finetune_epochs"] == 0  # the next finetune stage fine-tunes the detector
    # one sparsity epoch with the detection optimizer (the YOLO loss plus L1 on the BN scales)
    assert (prune["sparsity_epochs"], prune["optimizer"], prune["lr"]) == (1, "adam", 0.0005)
    assert job.recipe["targets"]["reference"] == "stage:0"
