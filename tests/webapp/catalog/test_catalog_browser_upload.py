"""In Chromium, on the live stack (daphne + a Celery worker): upload a LeNet-5 and an
image-folder zip through the upload zone, watch the progress bar complete, and see each item
page turn ready with what the worker found."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser import chromium_context, first_page
from catalog_files import image_folder_zip, lenet5_safetensors
from factories import PASSWORD, make_organization, make_user

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

# Records the highest progress the upload zone showed, across the redirect to the item page.
RECORD_PROGRESS = """
new MutationObserver(() => {
  const bar = document.querySelector('[data-upload-progress]');
  if (!bar) return;
  const now = parseInt(bar.getAttribute('aria-valuenow') || '0', 10);
  const seen = JSON.parse(sessionStorage.getItem('progress') || '[]');
  if (seen[seen.length - 1] !== now) { seen.push(now); sessionStorage.setItem('progress', JSON.stringify(seen)); }
}).observe(document, {subtree: true, attributes: true, attributeFilter: ['aria-valuenow']});
"""
READY_TIMEOUT_MS = 240_000  # the worker builds the built-in samples first


@pytest.fixture
def browser_page(tmp_path):  # type: ignore[no-untyped-def]
    with chromium_context(tmp_path, viewport={"width": 1280, "height": 900}) as context:
        context.add_init_script(RECORD_PROGRESS)
        yield first_page(context)


def _upload_through_the_zone(page, file_path: Path) -> list[int]:  # type: ignore[no-untyped-def]
    page.evaluate("sessionStorage.removeItem('progress')")
    # Small chunks, so this small file still goes through several resumable PUTs.
    page.eval_on_selector("form[data-upload-form]", "f => { f.dataset.chunkBytes = '65536'; }")
    page.set_input_files("[data-upload-input]", str(file_path))
    with page.expect_navigation(timeout=60_000):
        page.click("[data-upload-submit]")
    return page.evaluate("JSON.parse(sessionStorage.getItem('progress') || '[]')")  # type: ignore[no-any-return]


def test_upload_a_model_and_a_dataset_and_see_them_turn_ready(edgeslim_stack, tmp_path, request):
    user = make_user(username="grace")
    make_organization(name="Upload Lab", owner=user)
    model_file = lenet5_safetensors(tmp_path / "my lenet.safetensors")
    zip_file = image_folder_zip(tmp_path / "pets.zip", per_class=5)
    page = request.getfixturevalue("browser_page")  # after the rows: the ORM can't run beside it
    base = edgeslim_stack.base_url

    page.goto(f"{base}/accounts/login/")
    page.fill("#id_username", "grace")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")

    page.goto(f"{base}/models/")
    page.select_option("select[name=arch]", "lenet5")
    page.fill("input[name=name]", "My LeNet")
    progress = _upload_through_the_zone(page, model_file)
    assert progress[-1] == 100 and len(progress) >= 4, progress
    assert "/models/" in page.url
    page.wait_for_selector('#item-body[data-item-status="ready"]', timeout=READY_TIMEOUT_MS)
    assert page.inner_text("[data-params]") == "61706"
    assert page.inner_text("[data-macs]") == "416520"
    assert page.inner_text("[data-classes]") == "10"
    assert page.locator("[data-layer-table] tbody tr").count() == 5

    page.goto(f"{base}/datasets/")
    progress = _upload_through_the_zone(page, zip_file)
    assert progress[-1] == 100, progress
    page.wait_for_selector('#item-body[data-item-status="ready"]', timeout=READY_TIMEOUT_MS)
    assert page.inner_text("[data-classes]") == "2"
    assert page.inner_text("[data-totals]") == "6 train / 2 val / 2 test"
    rows = page.locator("[data-class-table] tbody tr")
    assert rows.count() == 2 and "cat" in rows.nth(0).inner_text()
    page.wait_for_function(
        "[...document.querySelectorAll('.thumbs img')].every(i => i.complete && i.naturalWidth === 64)"
    )


def test_a_wrong_file_type_shows_the_error_in_the_upload_zone(edgeslim_stack, tmp_path, request):
    user = make_user(username="linus")
    make_organization(name="Bad Input Lab", owner=user)
    bad = tmp_path / "setup.exe"
    bad.write_bytes(b"MZ" + b"\0" * 100)
    page = request.getfixturevalue("browser_page")
    base = edgeslim_stack.base_url

    page.goto(f"{base}/accounts/login/")
    page.fill("#id_username", "linus")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")
    page.goto(f"{base}/models/")
    page.set_input_files("[data-upload-input]", str(bad))
    page.click("[data-upload-submit]")

    error = page.wait_for_selector("[data-upload-error]:not([hidden])", timeout=20_000)
    assert "not a model file" in error.inner_text()
    assert page.url == f"{base}/models/"
