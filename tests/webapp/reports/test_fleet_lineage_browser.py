"""In Chromium: a manager opens a version's fleet view from its page, sees the per-operator
profile drawn, downloads the CSV and the PDF, opens the lineage and clicks through its tree."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from browser import chromium_context, first_page
from factories import client_for, make_member
from fleet_factories import family

from webapp.accounts.models import Role

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_manager_opens_the_fleet_view_downloads_it_and_walks_the_lineage(live_server, tmp_path):
    # Rows first: the ORM refuses to run beside Playwright's event loop.
    fam = family()
    manager = make_member(fam["org"], role=Role.MANAGER, username="mona")
    base, int8, pruned = fam["base"], fam["int8"], fam["pruned"]
    session = client_for(manager).cookies["sessionid"].value

    with chromium_context(tmp_path, accept_downloads=True) as context:
        context.add_cookies([{"name": "sessionid", "value": session, "url": live_server.url}])
        page = first_page(context)
        page.goto(f"{live_server.url}/models/{int8.pk}/")
        page.click("[data-fleet-link]")
        page.wait_for_selector("[data-fleet-table]")
        assert page.url.endswith(f"/reports/versions/{int8.pk}/fleet/")
        rows = page.locator("[data-fleet-table] tbody tr")
        assert rows.count() == 2
        assert "Cortex-A72" in page.locator(f'tr[data-device="{fam["pi"].pk}"]').inner_text()
        # The per-operator profile, drawn by Plotly: its op types on the axis.
        page.wait_for_selector("#chart-fleet-ops .main-svg", timeout=30_000)
        ticks = page.locator("#chart-fleet-ops .ytick text")
        by_height = sorted(
            (ticks.nth(i).bounding_box()["y"], ticks.nth(i).text_content())
            for i in range(ticks.count())
        )
        assert [text for _, text in by_height] == [
            "Conv",
            "Gemm",
            "Relu",
            "MaxPool",
        ]  # costliest on top
        page.wait_for_function("document.documentElement.dataset.chartsDrawn === '2'")

        with page.expect_download() as download:
            page.click("[data-export-csv]")
        saved = Path(download.value.path())
        table = list(csv.DictReader(io.StringIO(saved.read_text())))
        assert [r["device"] for r in table] == ["jetson", "pi"]
        assert float(table[1]["latency_p50_ms"]) == 4.0

        with page.expect_download(timeout=120_000) as download:
            page.click("[data-export-pdf]")
        assert download.value.suggested_filename == f"fleet-version-{int8.pk}.pdf"
        assert Path(download.value.path()).read_bytes().startswith(b"%PDF-")

        # The lineage: every version a box; clicking one opens that version.
        page.click("[data-lineage-link]")
        page.wait_for_selector("[data-lineage-graph]")
        assert page.locator("[data-lineage-node]").count() == 4
        assert page.locator("tr[data-focus]").get_attribute("data-version") == str(int8.pk)
        page.click(f'[data-lineage-node="{pruned.pk}"]')
        page.wait_for_url(f"**/models/{pruned.pk}/")
        page.click("[data-lineage-link]")
        page.wait_for_selector("[data-lineage-graph]")
        assert page.locator("tr[data-focus]").get_attribute("data-version") == str(pruned.pk)
        page.click(f'[data-lineage-node="{base.pk}"]')
        page.wait_for_url(f"**/models/{base.pk}/")
        assert f"{base.asset.name}" in page.locator("h1").inner_text()
