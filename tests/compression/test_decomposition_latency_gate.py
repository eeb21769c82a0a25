"""The decomposition methods' latency gate (min_measured_speedup): a chain that passed the MAC
check is timed against its dense conv in ONNX Runtime and kept only if it is that much faster."""

from __future__ import annotations

import re
from pathlib import Path
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
MEASURED = re.compile(
    r"measured ORT \d+ µs dense -> \d+ µs chain, (\d+\.\d\d)x faster "
    r"\(rounds (\d+\.\d\d)-(\d+\.\d\d)x\)"
)


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
    assert _cfg(kind).min_speedup_share == 0.0  # off by default
    assert _cfg(kind, min_speedup_share=0.75).min_speedup_share == 0.75
    with pytest.raises(ConfigError, match=r"min_speedup_share.*<= 1"):
        _cfg(kind, min_speedup_share=1.5)
    fields = {p.name for p in registry.get_method(f"{kind}_decomposition").params()}
    assert {"min_measured_speedup", "min_speedup_share", "latency_threads"} <= fields


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

    monkeypatch.setattr(dec, "measure_round_medians", no_timing)
    changes, skips = _decompose(kind, gated, min_measured_speedup=0.0)
    assert [c.name for c in changes] == ["a", "b"]
    assert changes == ref_changes and skips == ref_skips  # rows, ranks, notes alike
    assert all(c.latency_us_before is None and c.latency_us_after is None for c in changes)
    assert all(s.latency_us_before is None for s in skips)
    x = torch.randn(2, 1, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(gated(x), reference(x))


def _fake_rounds(
    monkeypatch: pytest.MonkeyPatch, dense_ms: list[float], chain_ms: list[float]
) -> list[tuple[list[str], tuple[int, ...], int]]:
    """Replace the gate's timing with fixed round medians; returns the calls it got."""
    calls: list[tuple[list[str], tuple[int, ...], int]] = []

    def fake(paths: list[Path], *, input_shape: tuple[int, ...], threads: int, **k: Any) -> Any:
        assert k["rounds"] == dec.GATE_ROUNDS and k["min_round_ms"] == dec.GATE_ROUND_MS
        calls.append(([Path(p).stem for p in paths], input_shape, threads))
        return [dense_ms, chain_ms]

    monkeypatch.setattr(dec, "measure_round_medians", fake)
    return calls


def test_the_gate_keeps_a_chain_by_its_measured_speedup(monkeypatch: pytest.MonkeyPatch) -> None:
    """The decision, with the timings replaced: dense 100 µs, chain 40 µs (2.5x faster)."""
    calls = _fake_rounds(monkeypatch, [0.1] * 5, [0.04] * 5)
    model = Net().eval()
    changes, skips = _decompose("tucker", model, min_measured_speedup=2.4, latency_threads=3)
    assert [c.name for c in changes] == ["a", "b"]
    assert changes[0].latency_us_before == pytest.approx(100.0)
    assert changes[0].latency_us_after == pytest.approx(40.0)
    assert "measured ORT 100 µs dense -> 40 µs chain, 2.50x faster" in str(changes[0].note)
    # Dense and chain side by side in one call, at the conv's input shape, batch 1.
    assert calls == [
        (["dense", "chain"], (1, 32, 12, 12), 3),
        (["dense", "chain"], (1, 48, 12, 12), 3),
    ]
    calls.clear()
    model = Net().eval()
    changes, skips = _decompose("tucker", model, min_measured_speedup=2.6)
    assert changes == [] and all(isinstance(getattr(model, n), nn.Conv2d) for n in "ab")
    assert (
        "2.50x faster (rounds 2.50-2.50x) at batch 1 on 32x12x12 (needs 2.6x, "
        "min_measured_speedup)" in {s.name: s.reason for s in skips}["a"]
    )


def test_the_gate_decides_on_the_median_of_paired_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """One round where both ran slow (a neighbour took the core) moves neither the decision nor
    the figures: the speedup pairs each round's two medians and takes the median over rounds."""
    _fake_rounds(monkeypatch, [0.1, 0.1, 0.5, 0.1, 0.1], [0.04, 0.04, 0.45, 0.04, 0.05])
    changes, _ = _decompose("tucker", Net().eval(), min_measured_speedup=2.4)
    assert [c.name for c in changes] == ["a", "b"]
    assert "2.50x faster (rounds 1.11-2.50x)" in str(changes[0].note)
    # A chain that ran slow in most rounds fails, however fast its best rounds were.
    _fake_rounds(monkeypatch, [0.1, 0.1, 0.1, 0.1, 0.1], [0.04, 0.09, 0.09, 0.09, 0.04])
    changes, skips = _decompose("tucker", Net().eval(), min_measured_speedup=2.4)
    assert changes == [] and "1.11x faster (rounds 1.11-2.50x)" in skips[-1].reason
    # The row keeps the speedup the gate decided on next to the two medians, which can differ:
    # here the medians say 300 / 100 µs = 3x, the paired rounds 5, 2, 1.5, 1.33, 5 say 2x.
    _fake_rounds(monkeypatch, [0.1, 0.2, 0.3, 0.4, 0.5], [0.02, 0.1, 0.2, 0.3, 0.1])
    changes, _ = _decompose("tucker", Net().eval(), min_measured_speedup=1.9)
    row = changes[0]
    assert (row.latency_us_before, row.latency_us_after) == pytest.approx((300.0, 100.0))
    assert row.latency_speedup == pytest.approx(2.0) and "2.00x faster" in str(row.note)
    _, skips = _decompose("tucker", Net().eval(), min_measured_speedup=2.1)
    assert skips[-1].latency_speedup == pytest.approx(2.0)
    assert dec.skip_row(skips[-1]).latency_speedup == pytest.approx(2.0)


def test_the_share_gate_asks_for_a_share_of_each_chains_own_mac_cut(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ungated, _ = _decompose("tucker", Net().eval())
    cut = {c.name: c.macs_before / c.macs_after for c in ungated}
    assert all(c > 2.5 for c in cut.values())  # so 2.5x measured is under a 1.0 share
    _fake_rounds(monkeypatch, [0.1] * 5, [0.04] * 5)  # 2.5x faster
    model = Net().eval()
    changes, skips = _decompose("tucker", model, min_speedup_share=1.0)
    assert changes == [] and all(isinstance(getattr(model, n), nn.Conv2d) for n in "ab")
    reason = {s.name: s.reason for s in skips}["a"]
    assert f"(needs {cut['a']:.2f}x = 1 of its {cut['a']:.2f}x MAC cut, min_speedup_share)" in (
        reason
    )
    share = 2.5 / max(cut.values()) - 0.01  # just under what every conv's 2.5x realises
    changes, _ = _decompose("tucker", Net().eval(), min_speedup_share=share)
    assert [c.name for c in changes] == ["a", "b"]
    # Both thresholds apply: the absolute one still stops a chain the share would keep.
    changes, skips = _decompose(
        "tucker", Net().eval(), min_speedup_share=share, min_measured_speedup=3.0
    )
    assert changes == [] and "(needs 3x, min_measured_speedup)" in skips[-1].reason


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
        found = MEASURED.search(str(row.note))
        assert found, row.note
        median, low, high = (float(v) for v in found.groups())
        assert low <= median <= high
    assert rows["stem"].latency_us_before is None
