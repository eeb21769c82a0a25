"""In Chromium: a manager ticks versions in the catalog, opens the comparison, sees the table with
the best values marked, sorts it, and sees the Pareto chart with its front labelled."""

from __future__ import annotations

import pytest
from browser import chromium_context, first_page
from compare_factories import dataset, device, device_result, job, metrics, version
from factories import client_for, make_member, make_organization, make_user

from webapp.accounts.models import Role

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_manager_compares_versions_picked_in_the_catalog(live_server, tmp_path):
    # Rows first: the ORM refuses to run beside Playwright's event loop.
    org = make_organization(owner=make_user())
    manager = make_member(org, role=Role.MANAGER, username="mona")
    data = dataset(org, name="digits-lab")
    base = version(org, fmt="torch", size=8000)
    j = job(org, base, data, baseline=metrics(98.0, 2.0, fmt="torch"),
            stages=[metrics(97.5, 1.0, fmt="torch"), metrics(97.0, 0.5)],
            final=metrics(97.0, 0.5))  # fmt: skip
    fp32 = version(org, parent=base, job=j, label="fp32", size=4000)
    int8 = version(org, parent=base, job=j, label="int8", size=1000)
    device_result(org, int8, device(org, "pi"), p50=4.0)
    session = client_for(manager).cookies["sessionid"].value

    with chromium_context(tmp_path) as context:
        context.add_cookies([{"name": "sessionid", "value": session, "url": live_server.url}])
        page = first_page(context)
        page.goto(f"{live_server.url}/models/")
        for v in (base, fp32, int8):
            page.check(f'input[data-compare-pick][value="{v.pk}"]')
        page.click("[data-compare-submit]")
        page.wait_for_selector("[data-compare-table]")
        rows = page.locator("[data-compare-table] tbody tr")
        assert rows.count() == 3
        assert page.locator("tr[data-baseline]").get_attribute("data-version") == str(base.pk)
        best = page.locator(f'tr[data-version="{int8.pk}"] td[data-cell="host_p50_ms"]')
        assert best.get_attribute("data-best") is not None
        assert "×0.25" in best.inner_text()
        # compare.js (deferred, after Plotly) draws the chart and then wires the sort buttons.
        page.wait_for_selector("#chart-pareto-host .main-svg", timeout=30_000)
        # Sorting by test accuracy puts the most accurate first (higher is better).
        page.click('th[data-column="accuracy"] button')
        assert rows.first.get_attribute("data-version") == str(base.pk)
        page.click('th[data-column="size_bytes"] button')
        assert rows.first.get_attribute("data-version") == str(int8.pk)
        # The Pareto chart: drawn by Plotly, with the front's members labelled.
        labels = page.locator("#chart-pareto-host .textpoint text").all_text_contents()
        assert sorted(labels) == sorted([f"{base}", f"{fp32} fp32", f"{int8} int8"])
        page.select_option("[data-chart-select]", "chart-pareto-size")
        page.wait_for_selector("#chart-pareto-size .main-svg", timeout=30_000)
        assert page.locator("#chart-pareto-host").is_hidden()
