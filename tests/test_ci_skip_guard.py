"""The CI skip guard (``tests/ci_skip_guard.py``): with ``CI=true`` a skipped browser or
agent-wheel test fails the run; GPU tests and plain tests may skip."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]
# The inner runs load only the guard: not pytest-django (this session already set Django up).
NO_DJANGO = ("-p", "no:django", "-W", "ignore::pytest.PytestAssertRewriteWarning")
GUARD = ("-p", "ci_skip_guard", *NO_DJANGO)

INI = """
[pytest]
markers =
    browser: drives Chromium
    agent_wheel: installs the agent wheel
    gpu: needs CUDA
"""

TESTS = """
import pytest

@pytest.mark.browser
def test_page():
    pytest.skip("chromium is not installed")

@pytest.mark.agent_wheel
def test_wheel():
    pytest.skip("the package index cannot be reached")

@pytest.mark.gpu
def test_cuda():
    pytest.skip("no GPU")

@pytest.mark.browser
@pytest.mark.xfail(reason="known broken page", strict=True)
def test_known_broken_page():
    raise AssertionError

def test_plain_skip():
    pytest.skip("not today")

def test_ok():
    assert True
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    pytester.makepyfile(test_suite=TESTS)
    return pytester


def test_on_ci_a_skipped_browser_or_agent_wheel_test_fails_the_run(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    result = suite.runpytest(*GUARD)
    result.assert_outcomes(passed=1, skipped=4, xfailed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*tests that must run on CI were skipped*",
            "*2 browser or agent-wheel test(s) skipped*",
            "*test_suite.py::test_page [[]browser[]]: chromium is not installed",
            "*test_suite.py::test_wheel [[]agent_wheel[]]: the package index cannot be reached",
        ]
    )
    listed = result.stdout.str().split("must run on CI were skipped", 1)[1]
    assert "test_cuda" not in listed and "test_plain_skip" not in listed
    assert "test_known_broken_page" not in listed


def test_off_ci_the_same_skips_pass(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    result = suite.runpytest(*GUARD)
    result.assert_outcomes(passed=1, skipped=4, xfailed=1)
    assert result.ret == pytest.ExitCode.OK
    assert "must run on CI" not in result.stdout.str()


def test_on_ci_gpu_and_plain_skips_still_pass(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    pytester.makeini(INI)
    pytester.makepyfile(
        test_suite="""
import pytest

@pytest.mark.gpu
def test_cuda():
    pytest.skip("no GPU")

@pytest.mark.browser
def test_page_runs():
    assert True
"""
    )
    result = pytester.runpytest(*GUARD)
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.OK


def test_a_failing_run_keeps_its_own_exit_status(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    pytester.makeini(INI)
    pytester.makepyfile(
        test_suite="""
import pytest

@pytest.mark.browser
def test_page():
    pytest.skip("chromium is not installed")

def test_broken():
    raise AssertionError
"""
    )
    result = pytester.runpytest(*GUARD)
    result.assert_outcomes(failed=1, skipped=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*test_suite.py::test_page [[]browser[]]*"])
