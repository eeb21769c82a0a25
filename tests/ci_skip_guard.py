"""A pytest plugin: on CI (``CI=true``) a browser or agent-wheel test that skips fails the run.

Those tests skip on a developer's machine when Chromium or the package index is missing; on CI
a skip would hide that the pages or the agent's install were never exercised. GPU tests may
still skip (CI machines have no GPU). ``tests/conftest.py`` loads this plugin; it is a module of
its own so that ``tests/test_ci_skip_guard.py`` can load it into a pytester run.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

# Markers whose tests must run, not skip, on CI.
MUST_RUN_MARKERS = ("browser", "agent_wheel")
_SKIPPED = pytest.StashKey[list[str]]()


def _on_ci() -> bool:
    return os.environ.get("CI") == "true"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[Any]:
    outcome = yield
    report = outcome.get_result()
    if not _on_ci() or not report.skipped or hasattr(report, "wasxfail"):
        return
    marks = [m for m in MUST_RUN_MARKERS if item.get_closest_marker(m) is not None]
    if marks:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        item.config.stash.setdefault(_SKIPPED, []).append(
            f"{item.nodeid} [{', '.join(marks)}]: {reason}"
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    skipped = session.config.stash.get(_SKIPPED, [])
    if skipped and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    skipped = config.stash.get(_SKIPPED, [])
    if not skipped:
        return
    terminalreporter.section("tests that must run on CI were skipped", sep="=", red=True)
    terminalreporter.line(
        f"CI=true: {len(skipped)} browser or agent-wheel test(s) skipped instead of running; "
        "the run fails. Install what they need (scripts/test installs Chromium)."
    )
    for line in skipped:
        terminalreporter.line(f"  {line}")
