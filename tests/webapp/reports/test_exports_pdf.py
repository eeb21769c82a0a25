"""PDF exports printed by Debian's Chromium: a real PDF (pypdfium2 opens it), every chart of the
page in it (each chart's title in the PDF's text, and the charts' colours in its rendered
pages), for a job report, a fleet view and a comparison."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse
from factories import client_for
from fleet_factories import family

from webapp.reports import pdf as pdf_service

pytestmark = [pytest.mark.browser, pytest.mark.django_db]

# Plotly's first two trace colours (bars, lines) and the Pareto front's red.
BLUE, RED, FRONT = (0x63, 0x6E, 0xFA), (0xEF, 0x55, 0x3B), (0xC0, 0x39, 0x2B)


@pytest.fixture(autouse=True)
def _chromium():
    from pathlib import Path

    if not Path(pdf_service.chromium_path()).exists():
        pytest.skip("Debian's chromium is not installed (scripts/test installs it)")


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _read(body: bytes) -> tuple[str, list]:
    """The PDF's text (all pages) and each page rendered to an RGB image."""
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(body)
    texts, images = [], []
    for i in range(len(doc)):
        page = doc[i]
        # PDFium extracts a printed hyphen as \x02
        texts.append(page.get_textpage().get_text_bounded().replace("\x02", "-"))
        images.append(page.render(scale=1.5).to_pil().convert("RGB"))
    return "\n".join(texts), images


def _pixels(images: list, colour: tuple[int, int, int], tol: int = 12) -> int:
    count = 0
    for img in images:
        for (r, g, b), n in ((c, n) for n, c in img.getcolors(maxcolors=1 << 24)):
            if (
                abs(r - colour[0]) <= tol
                and abs(g - colour[1]) <= tol
                and abs(b - colour[2]) <= tol
            ):
                count += n
    return count


def _pdf(client, url: str) -> bytes:
    r = client.get(url)
    assert r.status_code == 200, r.content[:300]
    assert r["Content-Type"] == "application/pdf"
    body = b"".join(r.streaming_content) if r.streaming else r.content
    assert body.startswith(b"%PDF-") and b"%%EOF" in body[-1024:]
    return body


def _titles(figures: dict) -> list[str]:
    return [fig["layout"]["title"]["text"] for fig in figures.values()]


def test_report_pdf_holds_every_chart(tmp_path):
    fam = family()
    client, job = client_for(fam["owner"]), fam["job1"]
    figures = client.get(reverse("reports:detail", args=[job.pk])).context["figures"]
    assert len(figures) >= 3  # size, accuracy against size, on-device p50
    text, images = _read(_pdf(client, reverse("reports:export", args=[job.pk, "pdf"])))
    flat = _squash(text)
    assert _squash(job.name) in flat and "Baseline,stagesandfinalmodel" in flat
    for title in _titles(figures):
        assert _squash(title) in flat, title
    # The charts are drawn, not just titled: the bars and markers are in the rendered pages.
    assert _pixels(images, BLUE) > 200
    # The page's navigation and buttons are not printed.
    assert "Signout" not in flat and "CompareitsversionsCSVJSONPDF" not in flat


def test_fleet_pdf_holds_the_latency_and_the_operator_profile(tmp_path):
    fam = family()
    client, v = client_for(fam["owner"]), fam["int8"]
    figures = client.get(reverse("reports:fleet", args=[v.pk])).context["figures"]
    assert set(figures) == {"chart-fleet-latency", "chart-fleet-ops"}
    text, images = _read(_pdf(client, reverse("reports:fleet_export", args=[v.pk, "pdf"])))
    flat = _squash(text)
    for title in _titles(figures):
        assert _squash(title) in flat, title
    for op in ("Conv", "Gemm", "Relu", "MaxPool"):  # the profile's axis
        assert op in text
    assert "Cortex-A72" in text and "jetson" in text
    # The whole table is printed, its last columns included (not scrolled off the page).
    assert "95.00%" in text and "12.5ms" in flat and "MEASURED" in text.upper()
    assert _pixels(images, BLUE) > 200 and _pixels(images, RED) > 200


def test_comparison_pdf_draws_every_pareto_chart_not_only_the_first(tmp_path):
    fam = family()
    client = client_for(fam["owner"])
    query = f"?v={fam['base'].pk}&v={fam['fp32'].pk}&v={fam['int8'].pk}"
    figures = client.get(reverse("reports:compare") + query).context["figures"]
    assert len(figures) >= 3  # host, each device, size
    text, images = _read(_pdf(client, reverse("reports:compare_export", args=["pdf"]) + query))
    flat = _squash(text)
    for title in _titles(figures):
        assert _squash(title) in flat, title
    assert _pixels(images, FRONT) > 100
