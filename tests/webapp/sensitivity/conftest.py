import pytest
from jobs_fixtures import _jobs_not_sent_to_a_shared_worker, org_a, org_b, token_for  # noqa: F401

from webapp.sensitivity import services


@pytest.fixture(autouse=True)
def _analyses_not_sent_to_a_shared_worker(monkeypatch):
    """The tests call the runner as a plain function; nothing goes to the broker."""
    monkeypatch.setattr(services, "_enqueue", lambda analysis: None)
