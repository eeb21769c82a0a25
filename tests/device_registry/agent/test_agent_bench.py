"""The agent benchmarks through compression.latency and checks accuracy on an .npz."""

from __future__ import annotations

import pytest
from device_onnx import write_eval_set, write_linear_model

from edgeslim_agent.bench import accuracy_check, input_shape_for, latency_runs
from edgeslim_agent.facts import collect
from edgeslim_agent.protocol import BenchSettings, Hello, decode, encode


def test_it_measures_every_batch_size_with_the_shared_harness(tmp_path):
    model = write_linear_model(tmp_path / "m.onnx")
    settings = BenchSettings(warmup=1, runs=5, batch_sizes=[1, 4], profile=True)
    results = list(latency_runs(model, settings))
    assert [i for i, _ in results] == [0, 1]
    first, second = results[0][1], results[1][1]
    assert first["batch_size"] == 1 and second["batch_size"] == 4
    assert second["input_shape"] == [4, 4]
    for key in ("p50_ms", "p90_ms", "mean_ms", "throughput", "load_time_ms"):
        assert first[key] > 0
    assert first["p99_ms"] is None  # 5 timed runs: too few for a p99
    assert first["peak_rss_mb"] > 0
    assert "MatMul" in first["op_profile_ms"]


def test_it_skips_batches_already_done(tmp_path):
    model = write_linear_model(tmp_path / "m.onnx")
    settings = BenchSettings(warmup=0, runs=2, batch_sizes=[1, 2, 3])
    assert [i for i, _ in latency_runs(model, settings, skip={0, 2})] == [1]


def test_a_symbolic_dim_needs_an_input_shape():
    with pytest.raises(ValueError, match="input_shape"):
        input_shape_for([1, "C", 4], BenchSettings(), 1)
    assert input_shape_for([1, "C", 4], BenchSettings(input_shape=[1, 3, 4]), 8) == (8, 3, 4)


def test_accuracy_on_the_eval_set(tmp_path):
    model = write_linear_model(tmp_path / "m.onnx")
    npz = write_eval_set(tmp_path / "eval.npz", samples=60, wrong=6)
    out = accuracy_check(model, npz, BenchSettings(), batch=16)
    assert (out["samples"], out["correct"]) == (60, 54)
    assert out["top1_pct"] == 90.0 and "top1" not in out  # percent, from the integer counts


def test_facts_are_a_valid_hello_payload():
    facts = collect()
    assert facts.cores >= 1 and facts.memory_mb > 0
    assert "CPUExecutionProvider" in facts.providers
    hello = Hello(agent_version="0.1.0", facts=facts)
    assert decode(encode(hello)) == hello
