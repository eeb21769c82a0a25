"""Hostile recipes through the jobs API: a YAML alias bomb and huge values get a short error.

Before the fix the recipe errors quoted the whole (expanded) value: the alias bomb below, 268
bytes of YAML, came back as a 4.3 MB error body.
"""

from __future__ import annotations

import json

import pytest
from django.test import Client
from django.urls import reverse
from hostile_corpus import yaml_alias_bomb
from jobs_factories import make_digits, make_model_version

from webapp.jobs.models import Job

MAX_ERROR_BODY = 2000


def _create(org_a, token_for, recipe):  # type: ignore[no-untyped-def]
    org, user = org_a
    mv, ds = make_model_version(org), make_digits(org)
    return Client().post(
        reverse("api:jobs-list"),
        data=json.dumps({"model_version": mv.pk, "dataset": ds.pk, "recipe": recipe}),
        content_type="application/json",
        **token_for(user),
    )


@pytest.mark.django_db
def test_a_yaml_alias_bomb_gets_a_short_error(org_a, token_for):
    response = _create(org_a, token_for, yaml_alias_bomb())
    assert response.status_code == 400
    assert len(response.content) < MAX_ERROR_BODY, len(response.content)
    body = response.json()
    assert body["field"] == "recipe"
    assert "uses the YAML alias *a" in body["detail"]
    assert "aliases are not accepted" in body["detail"]
    assert not Job.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "recipe",
    [
        # A nested value where a number belongs (a JSON object cannot alias, but it can be big).
        {"stages": [{"method": "finetune", "config": {"epochs": [[["lol"] * 100] * 100] * 10}}]},
        {"stages": [{"method": "finetune", "config": {"optimizer": "x" * 1_000_000}}]},
        {"stages": [{"method": "m" * 1_000_000}]},
        {"stages": [{"method": "finetune", "config": {"k" * 1_000_000: 1}}]},
        {"stages": [{"method": "finetune"}], "targets": {"reference": "r" * 1_000_000}},
    ],
    ids=["nested", "long_string", "long_method", "long_key", "long_reference"],
)
def test_errors_quote_only_a_short_prefix_of_a_value(org_a, token_for, recipe):
    response = _create(org_a, token_for, recipe)
    assert response.status_code == 400
    assert len(response.content) < MAX_ERROR_BODY, len(response.content)
    text = response.json()["detail"] + response.json()["field"]
    assert "…" in text or "..." in text


def test_parse_recipe_refuses_aliases_and_merge_keys_but_keeps_anchors():
    from compression.errors import ConfigError
    from compression.recipe import parse_recipe

    anchored = "stages:\n- &s {method: finetune, config: {epochs: 1}}\n"
    assert parse_recipe(anchored).stages[0].method == "finetune"
    merged = "stages:\n- &s {method: finetune}\n- {<<: *s, name: again}\n"
    with pytest.raises(ConfigError, match=r"line 3 uses the YAML alias \*s"):
        parse_recipe(merged)
