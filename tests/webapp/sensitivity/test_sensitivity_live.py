"""On the live stack (daphne + a Celery worker + Redis + PostgreSQL): ``edgeslim sensitivity
run`` queues an analysis through the API, the worker's task runs it, and the CLI prints the
table when it is done."""

from __future__ import annotations

import pytest
from factories import make_organization, make_user
from jobs_factories import make_digits, make_model_version

from webapp.accounts.services import api_token_create
from webapp.cli import main
from webapp.sensitivity.models import AnalysisStatus, SensitivityAnalysis

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_the_worker_runs_an_analysis_the_cli_started(edgeslim_stack, capsys):
    user = make_user()
    org = make_organization(owner=user)
    mv, ds = make_model_version(org), make_digits(org)
    _, token = api_token_create(user=user, name="live")
    code = main(["sensitivity", "run", "--model", str(mv.pk), "--dataset", str(ds.pk),
                 "--ratios", "0.5", "--timeout", "600", "--server", edgeslim_stack.base_url,
                 "--token", token])  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err + edgeslim_stack.worker_log.read_text()[-3000:]
    assert "features.3" in out.out and "val images" in out.out
    analysis = SensitivityAnalysis.objects.get(organization=org)
    assert analysis.status == AnalysisStatus.SUCCEEDED and analysis.attempts == 1
