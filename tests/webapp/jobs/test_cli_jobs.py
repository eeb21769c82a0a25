"""``edgeslim jobs`` without a server: clear messages, never a traceback."""

from __future__ import annotations

import socket

import pytest

from webapp.cli import main


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_server_is_a_clear_message():
    url = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(SystemExit) as exc:
        main(["jobs", "status", "1", "--server", url, "--token", "es_x"])
    assert str(exc.value).startswith(f"edgeslim jobs: cannot reach {url}")


def test_a_missing_token_says_how_to_get_one(monkeypatch):
    monkeypatch.delenv("EDGESLIM_TOKEN", raising=False)
    with pytest.raises(SystemExit) as exc:
        main(["jobs", "status", "1", "--token", ""])
    assert "EDGESLIM_TOKEN" in str(exc.value)


def test_an_unreadable_recipe_file_is_refused_with_exit_code_2(tmp_path):
    code = main(["jobs", "submit", str(tmp_path / "missing.yaml"), "--token", "es_x"])
    assert code == 2
