"""The decomposition methods' latency gate (min_measured_speedup): a chain that passed the MAC
check is timed against its dense conv in ONNX Runtime and kept only if it is that much faster."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from compression import registry
from compression.datasets import DatasetBundle, load_digits
from compression.errors import ConfigError
from compression.methods import _decomposition as dec
from compression.methods import cp_decomposition as cpd
from compression.methods import tucker_decomposition as td
from compression.stage import ModelState, StageContext

CPU = torch.device("cpu")
METHODS = {"tucker": (td, td.TuckerDecompositionConfig), "cp": (cpd, cpd.CpDecompositionConfig)}
MEASURED = re.compile(r"measured ORT \d+ µs dense -> \d+ µs chain, \d+\.\d\dx faster")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Net(nn.Module):
    """Two convs the methods decompose (a and b) and a stem they leave alone."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 32, 3, padding=1)  # 1 input channel: below min_channels
        self.a = nn.Conv2d(32, 48, 3, padding=1)
        self.b = nn.Conv2d(48, 48, 3, stride=2, padding=1)
        self.head = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b(torch.relu(self.a(torch.relu(self.stem(x))))))
        out: torch.Tensor = self.head(x.mean((2, 3)))
        return out


def _cfg(kind: str, **values: Any) -> Any:
    # CP at ratio 8 and Tucker-2 at 4 both cut a's and b's MACs past min_mac_reduction 1.5.
    ratio = 4.0 if kind == "tucker" else 8.0
    return registry.config_from_dict(
        METHODS[kind][1], {"rank_method": "ratio", "target_ratio": ratio, **values}
    )


def _decompose(kind: str, model: nn.Module, **values: Any) -> tuple[list[Any], list[Any]]:
    out: tuple[list[Any], list[Any]] = METHODS[kind][0].decompose_model(
        model, (1, 12, 12), 10, _cfg(kind, **values)
    )
    return out


@pytest.mark.parametrize("kind", sorted(METHODS))
def test_the_gate_parameters_validate(kind: str) -> None:
    assert _cfg(kind).min_measured_speedup == 0.0  # off by default
    assert _cfg(kind).latency_threads == 2
    assert _cfg(kind, min_measured_speedup=2.5).min_measured_speedup == 2.5
    with pytest.raises(ConfigError, match=r"min_measured_speedup.*>= 0"):
        _cfg(kind, min_measured_speedup=-1.0)
    with pytest.raises(ConfigError, match=r"min_measured_speedup.*<= 100"):
        _cfg(kind, min_measured_speedup=1000.0)
    with pytest.raises(ConfigError, match=r"latency_threads.*>= 1"):
        _cfg(kind, latency_threads=0)
    fields = {p.name for p in registry.get_method(f"{kind}_decomposition").params()}
    assert {"min_measured_speedup", "latency_threads"} <= fields  # forms, API, CLI, docs


@pytest.mark.parametrize("kind", sorted(METHODS))
def test_an_impossible_gate_skips_every_conv_with_its_measured_speedup(kind: str) -> None:
    torch.manual_seed(0)
    model = Net().eval()
    # 100x (the largest allowed) is out of reach for a chain of 3 or 4 convs over these shapes.
    changes, skips = _decompose(kind, model, min_measured_speedup=100.0)
    assert changes == []
    reasons = {s.name: s for s in skips}
    for name, shape in (("a", "32x12x12"), ("b", "48x12x12")):
        skip = reasons[name]
        assert MEASURED.search(skip.reason), skip.reason
        assert f"at batch 1 on {shape} (needs 100x, min_measured_speedup)" in skip.reason
        assert skip.latency_us_before > 0 and skip.latency_us_after > 0
        row = dec.skip_row(skip)
        assert row.note is not None and row.note.startswith("skipped: ")
        assert (row.latency_us_before, row.latency_us_after) == (
            skip.latency_us_before,
            skip.latency_us_after,
        )
        assert isinstance(getattr(model, name), nn.Conv2d)  # left dense
    assert "min_channels" in reasons["stem"].reason and reasons["stem"].latency_us_before is None


@pytest.mark.parametrize("kind", sorted(METHODS))
def test_the_gate_at_zero_times_nothing_and_changes_nothing(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    reference = Net().eval()
    gated = Net().eval()
    gated.load_state_dict(reference.state_dict())
    ref_changes, ref_skips = _decompose(kind, reference)  # the default: no gate

    def no_timing(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("the gate timed a model with min_measured_speedup 0")

    monkeypatch.setattr(dec, "measure_latency", no_timing)
    changes, skips = _decompose(kind, gated, min_measured_speedup=0.0)
    assert [c.name for c in changes] == ["a", "b"]
    assert changes == ref_changes and skips == ref_skips  # rows, ranks, notes alike
    assert all(c.latency_us_before is None and c.latency_us_after is None for c in changes)
    assert all(s.latency_us_before is None for s in skips)
    x = torch.randn(2, 1, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(gated(x), reference(x))


def test_the_gate_keeps_a_chain_by_its_measured_speedup(monkeypatch: pytest.MonkeyPatch) -> None:
    """The decision, with the timings replaced: dense 100 µs, chain 40 µs (2.5x faster)."""
    calls: list[tuple[str, tuple[int, ...], int]] = []

    def fake(path: Path, *, input_shape: tuple[int, ...], threads: int, **_k: Any) -> Any:
        calls.append((Path(path).stem, input_shape, threads))
        return SimpleNamespace(p50_ms=0.1 if Path(path).stem == "dense" else 0.04)

    monkeypatch.setattr(dec, "measure_latency", fake)
    model = Net().eval()
    changes, skips = _decompose("tucker", model, min_measured_speedup=2.4, latency_threads=3)
    assert [c.name for c in changes] == ["a", "b"]
    assert changes[0].latency_us_before == pytest.approx(100.0)
    assert changes[0].latency_us_after == pytest.approx(40.0)
    assert "measured ORT 100 µs dense -> 40 µs chain, 2.50x faster" in str(changes[0].note)
    # Interleaved rounds, the order rotated each round, at the conv's input shape, batch 1.
    per_conv = 2 * dec.GATE_ROUNDS
    assert [c[0] for c in calls[:per_conv]] == [
        "dense",
        "chain",
        "chain",
        "dense",
        "dense",
        "chain",
    ]
    assert {c[1] for c in calls[:per_conv]} == {(1, 32, 12, 12)} and {c[2] for c in calls} == {3}
    assert len(calls) == 2 * per_conv
    calls.clear()
    model = Net().eval()
    changes, skips = _decompose("tucker", model, min_measured_speedup=2.6)
    assert changes == [] and all(isinstance(getattr(model, n), nn.Conv2d) for n in "ab")
    assert (
        "2.50x faster at batch 1 on 32x12x12 (needs 2.6x" in {s.name: s.reason for s in skips}["a"]
    )


@pytest.fixture(scope="module")
def digits() -> DatasetBundle:
    return load_digits(size=12).subset(train=64, val=32, seed=0)


@pytest.mark.parametrize("kind", sorted(METHODS))
def test_a_decomposed_layer_row_carries_the_measured_numbers(
    tmp_path: Path, digits: DatasetBundle, kind: str
) -> None:
    torch.manual_seed(0)
    state = ModelState(input_shape=(1, 12, 12), num_classes=10, module=Net())
    ctx = StageContext(
        model=state, data=digits, device=CPU, work_dir=tmp_path, seed=0,
        report=lambda *a: None, check_cancel=lambda: None,
    )  # fmt: skip
    # A gate every chain passes (0.01x: up to 100 times slower), so both rows are timed.
    result = registry.get_method(f"{kind}_decomposition").run(
        ctx, _cfg(kind, min_measured_speedup=0.01, epochs=0)
    )
    rows = {row.name: row for row in result.layers}
    assert result.metrics["layers_decomposed"] == 2.0 and result.metrics["layers_timed"] == 2.0
    for name in ("a", "b"):
        row = rows[name]
        assert row.ranks and row.latency_us_before and row.latency_us_after
        assert row.latency_us_before > 0 and row.latency_us_after > 0
        speedup = row.latency_us_before / row.latency_us_after
        assert MEASURED.search(str(row.note)) and f"{speedup:.2f}x faster" in str(row.note)
    assert rows["stem"].latency_us_before is None
