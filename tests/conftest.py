"""Test setup shared by every suite: real PostgreSQL and Redis, never mocks.

``scripts/test`` exports the environment; when run bare (``.venv/bin/pytest tests/webapp``)
the defaults below apply. pytest-django imports the settings before any conftest, so after
filling in the environment the settings module is read again, once, before any database,
cache or channel-layer connection exists. Each run gets its own Redis key prefixes (cache,
channel layer, Celery broker) so parallel runs sharing Redis db 15 never see each other. The
built-in samples' cache is one folder per run: the run's first organisation builds them, the
later ones copy them, and nothing a run finds depends on what an earlier run left behind.

Under pytest-xdist (``scripts/test`` runs two workers, ``PYTEST_XDIST_WORKER`` = gw0, gw1, ...)
each worker process is a run of its own: its own key prefixes (a fresh run id), its own Redis
db number (see :func:`_worker_redis_url`), its own data folder and built-in cache (a subfolder
per worker of any folder the environment names), and its own test database (pytest-django
adds ``_gw0``, ``_gw1``). A live stack a worker starts inherits that worker's environment, so
its Celery worker only ever reads that worker's queues.
"""

from __future__ import annotations

import importlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

_RUN_ID = uuid.uuid4().hex[:8]
_XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")  # "" when not under pytest-xdist
_DB_LIST_ENV = "EDGESLIM_TEST_REDIS_DBS"


def _worker_redis_url(url: str, worker: str) -> str:
    """The Redis URL of xdist worker ``gwN``: db ``EDGESLIM_TEST_REDIS_DBS[N]`` when that
    comma-separated list is set, else the URL's db minus N (db 15 -> gw0 15, gw1 14)."""
    from urllib.parse import urlsplit, urlunsplit

    index = int(worker.removeprefix("gw"))
    parts = urlsplit(url)
    listed = [d.strip() for d in os.environ.get(_DB_LIST_ENV, "").split(",") if d.strip()]
    if listed:
        if index >= len(listed):
            raise RuntimeError(
                f"{_DB_LIST_ENV}={os.environ[_DB_LIST_ENV]!r} names {len(listed)} Redis dbs, "
                f"too few for xdist worker {worker}"
            )
        db = int(listed[index])
    else:
        db = int(parts.path.lstrip("/") or 0) - index
    if not 0 <= db <= 15:
        raise RuntimeError(
            f"no Redis db for xdist worker {worker} from {url} (got {db}); "
            f"set {_DB_LIST_ENV}, e.g. 15,14"
        )
    return urlunsplit(parts._replace(path=f"/{db}"))


if _XDIST_WORKER and os.environ.get("EDGESLIM_TEST_WORKER_ENV") != _XDIST_WORKER:
    # The outer environment (scripts/test) is shared by every worker: split what it names,
    # once (a pytest this worker starts in a subprocess inherits the split environment).
    os.environ["EDGESLIM_TEST_WORKER_ENV"] = _XDIST_WORKER
    if os.environ.get("REDIS_URL"):
        os.environ["REDIS_URL"] = _worker_redis_url(os.environ["REDIS_URL"], _XDIST_WORKER)
    for _name in (
        "EDGESLIM_DATA_DIR",
        "EDGESLIM_BUILTIN_CACHE_DIR",
        "EDGESLIM_MEDIA_ROOT",
        "EDGESLIM_STATIC_ROOT",
        "EDGESLIM_UPLOAD_TMP_DIR",
    ):
        if os.environ.get(_name):
            os.environ[_name] = os.path.join(os.environ[_name], _XDIST_WORKER)
            os.makedirs(os.environ[_name], exist_ok=True)
_DEFAULTS = {
    "EDGESLIM_ENV": "test",
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/edgeslim",
    "REDIS_URL": _worker_redis_url("redis://127.0.0.1:6379/15", _XDIST_WORKER)
    if _XDIST_WORKER
    else "redis://127.0.0.1:6379/15",
    "EDGESLIM_DATA_DIR": tempfile.mkdtemp(prefix="edgeslim-test-data-"),
    "EDGESLIM_CHANNEL_PREFIX": f"edgeslim-test-{_RUN_ID}",
    "EDGESLIM_CACHE_PREFIX": f"edgeslim-test-{_RUN_ID}",
    "EDGESLIM_BROKER_PREFIX": f"edgeslim-test-{_RUN_ID}:",
    # The built-in samples' results, shared by the run's live stacks (the catalog tests use
    # their own): after the first organisation, a live-stack test's organisation gets them at once.
    "EDGESLIM_BUILTIN_CACHE_DIR": tempfile.mkdtemp(prefix="edgeslim-test-builtin-"),
}
for _name, _value in _DEFAULTS.items():
    os.environ.setdefault(_name, _value)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")


def _reload_settings() -> None:
    from django import conf
    from django.core.cache import caches
    from django.db import connections

    module = importlib.import_module(os.environ["DJANGO_SETTINGS_MODULE"])
    importlib.reload(module)
    conf.settings._wrapped = conf.Settings(os.environ["DJANGO_SETTINGS_MODULE"])
    # The handlers read settings lazily; drop what they read, and any connection they opened.
    from asgiref.local import Local

    connections.close_all()
    for handler in (connections, caches):
        handler.__dict__.pop("settings", None)
        handler._settings = None
        handler._connections = Local(handler.thread_critical)


_reload_settings()


def _unique_test_database() -> None:
    # Several sessions run the suite at once on one PostgreSQL: each gets its own test database.
    from django.conf import settings

    test = settings.DATABASES["default"].setdefault("TEST", {})
    if not test.get("NAME") and settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        test["NAME"] = f"test_{settings.DATABASES['default']['NAME']}_{_RUN_ID}"


_unique_test_database()


def _empty_tables_by_delete() -> None:
    """Transactional tests empty every table after each test (Django's ``flush``). On PostgreSQL
    that is one ``TRUNCATE`` of all the tables, which gives each table, index and TOAST table a
    new file and waits for them on disk: 0.3 to 1.5 s a test here, for tables holding a few
    rows. In this process only, the same flush takes the same ACCESS EXCLUSIVE locks (so, as
    with TRUNCATE, a live worker's open transaction finishes first and none of its rows
    survive) and DELETEs every row: ~20 ms. Sequences are not reset either way (the flush
    asks for that only with ``reset_sequences``, which keeps TRUNCATE, as a CASCADE does);
    the foreign keys Django makes are DEFERRABLE INITIALLY DEFERRED, so the order is free."""
    from django.db.backends.postgresql.operations import DatabaseOperations

    truncate = DatabaseOperations.sql_flush

    def sql_flush(
        self: Any,
        style: Any,
        tables: list[str],
        *,
        reset_sequences: bool = False,
        allow_cascade: bool = False,
    ) -> list[str]:
        if reset_sequences or allow_cascade or not tables:
            return truncate(  # type: ignore[no-any-return]
                self, style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade
            )
        names = [self.quote_name(t) for t in tables]
        return [
            f"LOCK TABLE {', '.join(names)} IN ACCESS EXCLUSIVE MODE;",
            "SET CONSTRAINTS ALL DEFERRED;",
            *(f"DELETE FROM {name};" for name in names),
        ]

    DatabaseOperations.sql_flush = sql_flush


_empty_tables_by_delete()
# WhiteNoise warns about a missing STATIC_ROOT on every request; tests serve from the finders.
os.makedirs(os.path.join(os.environ["EDGESLIM_DATA_DIR"], "static"), exist_ok=True)

import pytest  # noqa: E402
from ci_skip_guard import (  # noqa: E402, F401  (hooks: on CI, a skipped browser test fails the run)
    pytest_runtest_makereport,
    pytest_sessionfinish,
    pytest_terminal_summary,
)
from s3_server import s3_bucket, s3_endpoint, s3_storage  # noqa: E402, F401
from stack import (  # noqa: E402, F401
    celery_worker_process,
    daphne_server,
    daphne_tls_server,
    edgeslim_stack,
)


@pytest.fixture(autouse=True)
def _fresh_cache_namespace(settings: Any) -> None:
    """Each test counts failed logins (and anything else cached) in its own key space."""
    caches_setting = {k: dict(v) for k, v in settings.CACHES.items()}
    caches_setting["default"]["KEY_PREFIX"] = (
        f"{os.environ['EDGESLIM_CACHE_PREFIX']}-{uuid.uuid4().hex[:8]}"
    )
    settings.CACHES = caches_setting


@pytest.fixture(autouse=True)
def _fresh_channel_layer() -> Any:
    """A new channel-layer object per test: each test's async_to_sync runs its own event loop,
    and channels_redis locks bound to an earlier test's loop would fail in the next one."""
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """torch at one thread for a module's tests (``pytestmark = pytest.mark.usefixtures(...)``):
    on a shared 2-core machine OpenMP's spin-waiting makes 2 threads ~10x slower than 1."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
