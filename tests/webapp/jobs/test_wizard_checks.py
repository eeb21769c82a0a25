"""The wizard refuses what it can at the step where it is known: a data set that does not fit the
model at step 1 beside the field, a preset the model cannot run at step 2, a parameter the
model refuses at step 3 beside that parameter, and never launches a recipe that fails its check."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse
from factories import client_for
from jobs_factories import make_digits, make_model_version

from device_registry.models import Device
from webapp.catalog.models import Dataset, DatasetKind, ItemStatus
from webapp.jobs.models import Job

pytestmark = pytest.mark.django_db


def _pick(c: Any, mv: Any, ds: Any) -> Any:
    return c.post(reverse("jobs:wizard", args=["pick"]), {"model_version": mv.pk, "dataset": ds.pk})


def _field_error(response: Any, field: str) -> str:
    return " ".join(response.context["form"].errors.get(field, []))


def test_a_class_count_mismatch_is_refused_at_step_1_beside_the_dataset(org_a):
    org, user = org_a
    mv = make_model_version(org)
    two = Dataset.objects.create(
        organization=org, name="cats", kind=DatasetKind.IMAGE_ZIP, num_classes=2,
        status=ItemStatus.READY, report={"input_shape": [3, 32, 32]},
    )  # fmt: skip
    r = _pick(client_for(user), mv, two)
    assert r.status_code == 400
    assert "predicts 10 classes but the dataset 'cats' has 2" in _field_error(r, "dataset")
    assert 'class="field-error"' in r.content.decode()


def test_a_channel_mismatch_is_refused_at_step_1(org_a):
    org, user = org_a
    mv = make_model_version(org)
    mv.in_channels = 3
    mv.save()
    r = _pick(client_for(user), mv, make_digits(org))
    assert r.status_code == 400
    assert "1-channel (grayscale) images but the model expects 3 channels" in _field_error(
        r, "dataset"
    )


def test_a_detection_model_is_refused_on_a_classification_dataset(org_a):
    org, user = org_a
    mv = make_model_version(org)
    mv.task = "detection"
    mv.save()
    r = _pick(client_for(user), mv, make_digits(org))
    assert r.status_code == 400 and "a detection model" in _field_error(r, "dataset")


def test_a_classifier_is_refused_on_a_detection_dataset_naming_both(org_a):
    org, user = org_a
    mv = make_model_version(org)
    boxes = Dataset.objects.create(
        organization=org, name="scenes", kind=DatasetKind.MNIST_SCENES, task="detection",
        num_classes=10, status=ItemStatus.READY, report={"task": "detection"},
    )  # fmt: skip
    r = _pick(client_for(user), mv, boxes)
    assert r.status_code == 400
    assert (
        "the model is a classification model but 'scenes' is a detection data set "
        "(images with boxes)" in _field_error(r, "dataset")
    )


def test_the_picker_hides_job_outputs_until_asked(org_a):
    org, user = org_a
    make_model_version(org, name="mine")
    derived = make_model_version(org, name="slimmed")
    derived.produced_by_job_id = 99
    derived.save()
    c = client_for(user)
    page = c.get(reverse("jobs:wizard", args=["pick"])).content.decode()
    assert "mine v1" in page and "slimmed v1" not in page and "Show derived versions" in page
    page = c.get(reverse("jobs:wizard", args=["pick"]) + "?derived=1").content.decode()
    assert "slimmed v1 · torch · from job 99" in page


def test_goal_step_offers_registered_devices_and_refuses_an_unfit_preset(org_a):
    org, user = org_a
    Device.objects.create(organization=org, name="kitchen-pi", hardware="Raspberry Pi 4")
    mv, ds = make_model_version(org), make_digits(org)
    mv.format = "onnx"
    mv.arch = ""
    mv.save()
    c = client_for(user)
    _pick(c, mv, ds)
    page = c.get(reverse("jobs:wizard", args=["goal"])).content.decode()
    assert '<option value="kitchen-pi">kitchen-pi (Raspberry Pi 4)</option>' in page
    assert "Not for this model" in page
    r = c.post(reverse("jobs:wizard", args=["goal"]), {"goal": "balanced"})
    assert r.status_code == 400 and "does not fit this model" in _field_error(r, "goal")
    r = c.post(reverse("jobs:wizard", args=["goal"]), {"goal": "fastest", "target_device": "x"})
    assert r.status_code == 400 and _field_error(r, "target_device")  # not a registered device
    r = c.post(
        reverse("jobs:wizard", args=["goal"]), {"goal": "fastest", "target_device": "kitchen-pi"}
    )
    assert r.status_code == 302
    stages = c.session["jobs_wizard"]["stages"]
    assert [s["method"] for s in stages] == ["ptq_int8"]
    assert stages[0]["config"]["activation_type"] == "int8"  # tuned for an ARM board


def test_params_step_puts_a_refused_parameter_beside_its_field(org_a):
    org, user = org_a
    c = client_for(user)
    _pick(c, make_model_version(org), make_digits(org))
    c.post(reverse("jobs:wizard", args=["goal"]), {"goal": "balanced"})
    page = c.get(reverse("jobs:wizard", args=["params"]))
    form = page.context["stage_forms"][0]
    assert form["importance"].value() == "l2"  # LeNet-5 has no BatchNorm
    assert "sparsity_lambda" in [f.name for f in form.advanced_fields]
    assert '<details class="advanced-params"' in page.content.decode()
    data = {f"s0-{b.name}": b.value() for b in form}
    data.update({f"s1-{b.name}": b.value() for b in page.context["stage_forms"][1]})
    data = {k: v for k, v in data.items() if v is not None and v is not False}
    data["s0-importance"] = "bn_scale"
    r = c.post(reverse("jobs:wizard", args=["params"]), data)
    assert r.status_code == 400
    errors = r.context["stage_forms"][0].errors["importance"]
    assert "use importance l1 or l2" in " ".join(errors)


def test_review_shows_the_check_beside_the_yaml_and_never_launches_it(org_a):
    org, user = org_a
    c = client_for(user)
    _pick(c, make_model_version(org), make_digits(org))
    c.post(reverse("jobs:wizard", args=["goal"]), {"goal": "custom", "stage_0": "channel_pruning"})
    page = c.get(reverse("jobs:wizard", args=["review"]))  # default importance: bn_scale
    assert page.context["recipe_error"].field == "recipe.stages[0].config.importance"
    assert "data-recipe-error" in page.content.decode()
    r = c.post(
        reverse("jobs:wizard", args=["review"]),
        {"recipe_yaml": page.context["form"].initial["recipe_yaml"]},
    )
    assert r.status_code == 400 and not Job.objects.exists()
