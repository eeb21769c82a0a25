from jobs_fixtures import (  # noqa: F401
    _jobs_not_sent_to_a_shared_worker,
    finished_job,
    org_a,
    org_b,
    token_for,
)
