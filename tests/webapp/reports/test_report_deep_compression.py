"""A report with a weight-coding stage shows the paper's per-layer table and a size waterfall;
a report without one shows neither."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.urls import reverse
from factories import client_for
from jobs_factories import make_digits, make_model_version, two_stage_recipe

from compression.methods.weight_coding import deep_compression_table
from webapp.jobs import services
from webapp.jobs.models import JobStatus
from webapp.reports import charts, selectors

pytestmark = pytest.mark.django_db


def _stream(symbols: int, coded: int) -> dict[str, Any]:
    return {"symbols": symbols, "distinct": 32, "entropy_bits_per_symbol": 4.0,
            "entropy_bytes": symbols / 2, "coded_bytes": coded, "table_bytes": 18}  # fmt: skip


def _layer(name: str, weights: int, nonzero: int, huffman: int) -> dict[str, Any]:
    return {"name": name, "kind": "fc", "shape": [weights], "stored_as": "shared",
            "weights": weights, "nonzero": nonzero, "codebook_size": 32, "codebook_bits": 5,
            "index_bits": 5, "entries": nonzero + 7, "filler_entries": 7,
            "bytes_dense_fp32": 4 * weights, "bytes_pruned": 8 * nonzero,
            "bytes_shared": 2 * nonzero, "bytes_huffman": huffman,
            "values": _stream(nonzero, nonzero // 2), "gaps": _stream(nonzero, nonzero // 4)}  # fmt: skip


def _deep_compression() -> dict[str, Any]:
    layers = [_layer("fc1.weight", 100_000, 8_000, 12_000), _layer("fc2.weight", 1_000, 200, 320)]
    stats = {"layers": layers, "bytes_dense_fp32": 404_000, "params_bytes_fp32": 405_000,
             "bytes_pruned": 65_600, "bytes_shared": 16_400, "bytes_huffman": 12_320,
             "total_bytes": 13_500, "header_bytes": 168, "graph_bytes": 1_012, "version": 1,
             "sha256": "ab" * 32, "decoded_bytes": 406_000}  # fmt: skip
    table = deep_compression_table(stats)
    table["verification"] = {"predictions_equal": True, "samples": 1000, "decode_seconds": 0.012}
    return {"stage": 3, **table}


def _job(org: Any, user: Any, report: dict[str, Any]) -> Any:
    job = services.job_create(
        organization=org, user=user, model_version=make_model_version(org),
        dataset=make_digits(org), recipe=two_stage_recipe(), queue="cpu",
    )  # fmt: skip
    job.status = JobStatus.SUCCEEDED
    job.report = report
    job.save()
    return job


def _report(dc: dict[str, Any] | None) -> dict[str, Any]:
    m = {"accuracy": 95.0, "onnx_bytes": 405_000}
    return {"baseline": m, "stages": [], "final": m, "deep_compression": dc}


def test_the_report_shows_the_per_layer_table_steps_and_waterfall(org_a: Any) -> None:
    org, user = org_a
    job = _job(org, user, _report(_deep_compression()))
    page = client_for(user).get(reverse("reports:detail", args=[job.pk]))
    html = page.content.decode()
    assert "data-deep-compression-table" in html
    row = re.search(r'<tr data-dc-layer="fc1.weight">(.*?)</tr>', html, re.S)
    assert row is not None
    cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td>(.*?)</td>", row.group(1))]
    # name, weights, kept, weight bits P+Q and P+Q+H, index bits P+Q and P+Q+H, fillers, sizes, ratio
    assert cells[1:8] == ["100000", "8.0%", "5", "4.00", "5", "2.00", "7"]
    assert cells[-1] == "33.3x"  # 400 kB dense over 12 kB coded
    steps = re.findall(
        r'<tr data-dc-step="([^"]+)"><td>([^<]+)</td><td>[^<]+</td><td>([^<]*)</td>', html
    )
    assert [(s[0], s[2]) for s in steps] == [
        ("dense fp32", "1.0x"),
        ("pruning", "6.1x"),  # 405000 / (65600 + 1000 other bytes)
        ("weight sharing", "23.3x"),  # 405000 / (16400 + 1000)
        ("Huffman coding", "30.0x"),  # 405000 / 13500, every byte of the container
    ]
    assert "data-dc-verified" in html and "all 1000 test images" in html
    fig = page.context["figures"]["chart-deep-compression"]
    water = fig["data"][0]
    assert water["type"] == "waterfall"
    assert list(water["measure"]) == ["absolute", "relative", "relative", "relative", "total"]
    assert list(water["x"]) == ["dense fp32", "pruning", "weight sharing", "Huffman coding",
                                "container"]  # fmt: skip
    # The bars add up to the container's size.
    assert sum(water["y"]) == pytest.approx(13_500 / 1024)
    assert 'data-chart="chart-deep-compression"' in html


def test_a_report_without_weight_coding_has_no_table_and_no_waterfall(org_a: Any) -> None:
    org, user = org_a
    job = _job(org, user, _report(None))
    page = client_for(user).get(reverse("reports:detail", args=[job.pk]))
    assert page.status_code == 200
    assert "data-deep-compression" not in page.content.decode()
    assert "chart-deep-compression" not in page.context["figures"]


def test_a_partial_table_reads_as_dashes_not_an_error() -> None:
    dc = selectors.report_deep_compression(
        {"deep_compression": {"layers": [{"name": "conv1.weight", "stored_as": "raw"}]}}
    )
    assert dc is not None
    assert dc["layers"][0]["weight_bits"] is None and dc["layers"][0]["kept_pct"] is None
    assert dc["steps"] == [] and charts.deep_compression_waterfall(dc) == {}
    assert selectors.report_deep_compression({"deep_compression": "nonsense"}) is None
