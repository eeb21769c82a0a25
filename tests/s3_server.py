"""The S3-protocol server that storage tests talk to: moto's standalone server, a real HTTP
server in a process of its own (never moto's in-process mocks).

``scripts/test`` starts one for the whole run and exports ``EDGESLIM_TEST_S3_ENDPOINT``; when
pytest runs without it, :func:`s3_endpoint` starts one on a free port for the session and
stops it at the end. Each test gets a bucket of its own (:func:`s3_bucket`); :func:`s3_storage`
also makes it this process's default storage, as ``EDGESLIM_S3_BUCKET`` does in production.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from stack import free_port

ENDPOINT_ENV = "EDGESLIM_TEST_S3_ENDPOINT"
ACCESS_KEY = "edgeslim-test"
SECRET_KEY = "edgeslim-test-secret"
REGION = "us-east-1"
START_TIMEOUT_S = 60


@dataclass(frozen=True)
class S3Bucket:
    endpoint: str
    name: str

    def env(self) -> dict[str, str]:
        """The settings' environment for a subprocess (worker, web) that stores here."""
        return {
            "EDGESLIM_S3_BUCKET": self.name,
            "EDGESLIM_S3_ENDPOINT_URL": self.endpoint,
            "EDGESLIM_S3_REGION": REGION,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        }

    def storage(self) -> dict[str, Any]:
        """A ``STORAGES`` entry, the one ``webapp/settings.py`` builds from :meth:`env`."""
        return {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": self.name,
                "endpoint_url": self.endpoint,
                "region_name": REGION,
                "access_key": ACCESS_KEY,
                "secret_key": SECRET_KEY,
                "default_acl": None,
                "querystring_auth": True,
            },
        }

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )

    def keys(self, prefix: str = "") -> list[str]:
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix)
        )
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # it answered
    except OSError:
        return False


def _wait_until_up(endpoint: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _answers(endpoint):
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"moto's S3 server exited with {proc.returncode}")
        if time.monotonic() > deadline:
            pytest.fail(f"no S3-protocol server answers at {endpoint}")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    given = os.environ.get(ENDPOINT_ENV)
    if given:
        _wait_until_up(given)
        yield given
        return
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("s3") / "moto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_until_up(endpoint, proc)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> S3Bucket:
    bucket = S3Bucket(endpoint=s3_endpoint, name=f"edgeslim-test-{uuid.uuid4().hex[:12]}")
    bucket.client().create_bucket(Bucket=bucket.name)
    return bucket


@pytest.fixture
def s3_storage(settings: Any, s3_bucket: S3Bucket) -> S3Bucket:
    """The bucket as this process's default storage (catalog files and job files alike)."""
    settings.STORAGES = {**settings.STORAGES, "default": s3_bucket.storage()}
    return s3_bucket
