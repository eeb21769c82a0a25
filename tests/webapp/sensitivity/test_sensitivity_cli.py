"""``edgeslim sensitivity`` against a live server: start (refused with exit 2 on bad ratios),
show the table once the runner has finished, and print the stage."""

from __future__ import annotations

import json

import pytest
from jobs_factories import make_digits, make_model_version

from webapp.cli import main
from webapp.sensitivity.runner import analysis_run

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_cli_starts_shows_and_converts(live_server, org_a, token_for, capsys):
    org, user = org_a
    mv, ds = make_model_version(org), make_digits(org)
    token = token_for(user)["HTTP_AUTHORIZATION"].split()[1]
    flags = ["--server", live_server.url, "--token", token]

    bad = main(["sensitivity", "run", "--model", str(mv.pk), "--dataset", str(ds.pk),
                "--ratios", "0.5,1.2", "--no-wait", *flags])  # fmt: skip
    assert bad == 2 and "ratios" in capsys.readouterr().err
    assert main(["sensitivity", "run", "--model", str(mv.pk), "--dataset", str(ds.pk),
                 "--ratios", "0.5", "--no-wait", *flags]) == 0  # fmt: skip
    pk = int(capsys.readouterr().out.strip())
    assert analysis_run(pk) == "succeeded"

    assert main(["sensitivity", "show", str(pk), *flags]) == 0
    table = capsys.readouterr().out
    assert "val images" in table and "features.3" in table and "ratio 0.5" in table
    assert main(["sensitivity", "stage", str(pk), "--max-drop", "100", *flags]) == 0
    stage = json.loads(capsys.readouterr().out)
    assert stage["method"] == "channel_pruning"
    assert set(stage["config"]["layer_ratios"]) == {
        "features.0", "features.3", "classifier.1", "classifier.3",
    }  # fmt: skip
