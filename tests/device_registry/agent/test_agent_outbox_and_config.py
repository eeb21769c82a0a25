"""The outbox keeps results until acknowledged; the credential file is owner-only."""

from __future__ import annotations

import random
import stat

import pytest

from edgeslim_agent.config import AgentConfig, ConfigError
from edgeslim_agent.connection import Backoff
from edgeslim_agent.outbox import Outbox
from edgeslim_agent.protocol import Result


def _result(dep: int, seq: int) -> Result:
    return Result(deployment_id=dep, seq=seq, kind="latency", data={"p50_ms": seq})


def test_results_survive_a_new_outbox_until_acked(tmp_path):
    box = Outbox(tmp_path / "outbox")
    for dep, seq in [(2, 1), (1, 2), (1, 1)]:
        box.put(_result(dep, seq))
    box.put(_result(1, 1))  # the same key again: still one
    reopened = Outbox(tmp_path / "outbox")
    assert [(r.deployment_id, r.seq) for r in reopened.pending()] == [(1, 1), (1, 2), (2, 1)]
    assert reopened.ack(1, 1)
    assert not reopened.ack(1, 1)
    assert reopened.seqs(1) == {2}
    assert len(reopened) == 2


def test_a_half_written_temp_file_is_ignored(tmp_path):
    box = Outbox(tmp_path / "outbox")
    (box.directory / ".000000000001-000001.json.abc.tmp").write_text('{"v": 1, "ty')
    assert box.pending() == []


def test_the_credential_file_is_owner_only_and_holds_no_code(tmp_path):
    config = AgentConfig(
        server="http://h:8000",
        device_id=3,
        device_name="pi",
        credential="sekrit",
        server_public_key="AAAA",
    )
    path = config.save(tmp_path / "state")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    assert "code" not in path.read_text()
    assert AgentConfig.load(tmp_path / "state") == config


def test_a_world_readable_credential_file_is_refused(tmp_path):
    config = AgentConfig(
        server="http://h", device_id=1, device_name="x", credential="c", server_public_key="k"
    )
    path = config.save(tmp_path)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        AgentConfig.load(tmp_path)


def test_backoff_grows_with_jitter_and_caps():
    backoff = Backoff(base=1.0, cap=8.0, rng=random.Random(1))
    delays = [backoff.next() for _ in range(8)]
    for i, d in enumerate(delays):
        ceiling = min(8.0, 2.0**i)
        assert ceiling / 2 <= d <= ceiling
    assert len({round(d, 6) for d in delays}) == len(delays)  # jittered, not lockstep
    backoff.reset()
    assert backoff.next() <= 1.0
