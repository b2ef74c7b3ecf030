"""The Space in a real browser: headless Debian Chromium (driven by Playwright) uploads photos, clicks Describe and
reads the description; a bad upload shows an error and the next good upload still works.

Uses the system browser at /usr/bin/chromium (`make test` installs it); Playwright never downloads one.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from conftest import make_photo
from test_space import generate, serve_space

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
# Offline-safe flags: no sandbox (root in CI), no GPU, and no background calls home.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 60_000  # two shared cores: a cold model call can take a while


# The random tiny model emits control bytes, some of which the page drops: compare both sides without them.
VISIBLE_DESCRIPTION = r"""() => document.querySelector("#description textarea").value
    .replace(/[\x00-\x1f\x7f-\x9f]/g, "").trim()"""


def visible(text: str) -> str:
    return "".join(character for character in text if unicodedata.category(character) != "Cc").strip()


def expect_description(page: Page, text: str) -> None:
    """Waits until the description box shows `text`."""
    try:
        page.wait_for_function(
            f"expected => ({VISIBLE_DESCRIPTION})() === expected", arg=visible(text), timeout=TIMEOUT_MS
        )
    except PlaywrightTimeoutError:
        shown = page.evaluate(VISIBLE_DESCRIPTION)
        raise AssertionError(f"the page shows {shown!r}, model.generate says {visible(text)!r}") from None


def upload(page: Page, path: Path) -> None:
    remove = page.locator("#photo").get_by_label("Remove Image")
    if remove.count():
        remove.click()
    page.locator("#photo input[type=file]").set_input_files(str(path))
    expect(page.locator("#photo img")).to_have_count(1, timeout=TIMEOUT_MS)
    page.locator("#describe").click()


def test_upload_describe_bad_upload_then_recover(tiny_checkpoint, tiny_model, tiny_processor, tmp_path):
    assert CHROMIUM.exists(), "Debian's chromium is needed at /usr/bin/chromium (`make test` installs it)"
    photos = [tmp_path / "first.png", tmp_path / "second.png"]
    for seed, path in enumerate(photos):
        make_photo(seed).save(path)
    expected = generate(tiny_model, tiny_processor, photos, max_new_tokens=32)
    assert visible(expected[0]) != visible(expected[1]), "the fixture model should tell these photos apart"
    bad = tmp_path / "bad.png"
    bad.write_text("a text file with an image's name")

    with serve_space(tiny_checkpoint, tmp_path, fast="none") as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(url, wait_until="domcontentloaded")

            upload(page, photos[0])
            expect_description(page, expected[0])
            expect(page.locator("#timing")).to_contain_text("Described 1 image in", timeout=TIMEOUT_MS)

            upload(page, bad)
            error = page.get_by_test_id("toast-text")
            expect(error).to_contain_text("bad.png is not an image MODA can read", timeout=TIMEOUT_MS)

            upload(page, photos[1])
            expect_description(page, expected[1])
        finally:
            browser.close()
