"""Print a rendered report page to PDF with headless Chromium (Debian's ``chromium``).

The design keeps the browser away from the user's credentials and from the network:

- the view has already checked who asks and rendered the page's HTML with that user's
  permissions (a report of another organisation never gets this far: it answers 404);
- Chromium is given that HTML, never a URL with a session cookie or a token: it loads a
  made-up address (``http://edgeslim-print.invalid/...``) whose every request Playwright
  intercepts. The page itself is answered with the rendered HTML, ``STATIC_URL`` paths with the
  app's own static files (Plotly, the page's scripts and styles), and everything else is
  aborted, so nothing leaves the process and no login is needed;
- it waits until the page's script says every chart is drawn (``<html data-charts-drawn="N">``
  with N the number of charts the view rendered) and prints in print media (print.css hides
  the navigation and shows every chart).

At most :data:`MAX_CONCURRENT` prints run at once per process; a print that cannot start within
``timeout_s`` or does not finish in it raises :class:`PdfError`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from django.conf import settings
from django.contrib.staticfiles import finders
from django.contrib.staticfiles.storage import staticfiles_storage

CHROMIUM_ARGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)  # fmt: skip
ORIGIN = "http://edgeslim-print.invalid"
MAX_CONCURRENT = 2
# A4 landscape is 1123 CSS px wide; less 2 x 10 mm margins: the width charts are laid out for.
PAGE_WIDTH_PX = 1040

_slots = threading.BoundedSemaphore(MAX_CONCURRENT)


class PdfError(RuntimeError):
    """The page could not be printed (the message says why, for the user)."""


def chromium_path() -> str:
    return str(getattr(settings, "EDGESLIM_CHROMIUM", "/usr/bin/chromium"))


def static_file(url_path: str) -> Path | None:
    """The file behind a ``STATIC_URL`` path: the collected one (hashed names included) when
    collected, else the one the finders find; None for anything else or outside them."""
    prefix = str(settings.STATIC_URL or "/static/")
    if not prefix.startswith("/"):
        prefix = "/" + prefix
    if not url_path.startswith(prefix):
        return None
    name = unquote(url_path[len(prefix) :])
    if not name or any(part in ("", "..") for part in name.split("/")):
        return None
    try:
        collected = Path(staticfiles_storage.path(name))
        if collected.is_file():
            return collected
    except (NotImplementedError, ValueError):
        pass
    found = finders.find(name)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def html_to_pdf(html: str, *, path: str, charts: int, timeout_s: float = 60.0) -> bytes:
    """Print ``html`` (a page rendered for ``path``) to an A4 landscape PDF once its ``charts``
    Plotly charts are drawn.

    Raises:
        PdfError: no Chromium, too many prints at once, or the page did not draw in time.
    """
    executable = chromium_path()
    if not Path(executable).exists():
        raise PdfError(f"PDF export needs Debian's chromium at {executable}; it is not installed.")
    if not _slots.acquire(timeout=timeout_s):
        raise PdfError("Too many PDFs are being printed right now; try again in a minute.")
    try:
        return _print(html, path=path, charts=charts, executable=executable, timeout_s=timeout_s)
    finally:
        _slots.release()


def _print(html: str, *, path: str, charts: int, executable: str, timeout_s: float) -> bytes:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    url = ORIGIN + path
    origin = urlsplit(ORIGIN).netloc
    timeout_ms = timeout_s * 1000

    def route(r: Any) -> None:
        requested = urlsplit(r.request.url)
        if r.request.url == url:
            r.fulfill(status=200, content_type="text/html; charset=utf-8", body=html)
            return
        found = static_file(requested.path) if requested.netloc == origin else None
        if found is not None:
            r.fulfill(path=str(found))
        else:
            r.abort()

    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=executable, args=list(CHROMIUM_ARGS), headless=True
            )
            try:
                page = browser.new_page(viewport={"width": PAGE_WIDTH_PX, "height": 1200})
                page.route("**/*", route)
                page.emulate_media(media="print")
                page.goto(url, wait_until="load", timeout=timeout_ms)
                if charts:
                    page.wait_for_function(
                        f"document.documentElement.dataset.chartsDrawn === '{int(charts)}'",
                        timeout=timeout_ms,
                    )
                pdf: bytes = page.pdf(
                    format="A4",
                    landscape=True,
                    print_background=True,
                    margin={"top": "10mm", "bottom": "10mm", "left": "10mm", "right": "10mm"},
                )
                return pdf
            finally:
                browser.close()
    except PlaywrightError as exc:
        raise PdfError(f"The page could not be printed: {str(exc).splitlines()[0]}") from exc
