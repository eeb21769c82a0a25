from jobs_fixtures import finished_job, org_a, org_b, token_for  # noqa: F401
