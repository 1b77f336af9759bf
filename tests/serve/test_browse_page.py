"""The browse page in a real browser (Debian chromium + chromedriver via Selenium): search,
thumbnails really loaded, ThumbHash placeholders decoded as the Python reference does, detail
view, "more like this", shard view. Also writes the README screenshot of the result grid."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from support import browser
from support.serve_support import Catalogue, running

from assemblage_assets.serve.app import create_app
from assemblage_assets.serve.service import SearchService

# Skipped only where chromium is absent and not required (.ci/run sets ASSEMBLAGE_REQUIRE_BROWSER=1).
pytestmark = pytest.mark.skipif(browser.missing() is not None and os.environ.get("ASSEMBLAGE_REQUIRE_BROWSER") != "1",
                                reason=browser.missing() or "")
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "browse-grid.png"
TOKEN = "browser-test-token"


@pytest.fixture(scope="module")
def site(catalogue: Catalogue) -> Iterator[str]:
    service = SearchService(catalogue.dsn, catalogue.provider())
    try:
        with running(create_app(service, catalogue.config(token=TOKEN))) as url:
            yield url
    finally:
        service.close()


@pytest.fixture(scope="module")
def driver(site: str) -> Iterator[object]:
    with browser.chromium() as d:
        d.set_page_load_timeout(30)
        yield d


def wait_for(driver, script: str, timeout: float = 20):  # noqa: ANN001, ANN201
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: d.execute_script(script))


def loaded_thumbnails(driver) -> list[int]:  # noqa: ANN001
    script = """const imgs = [...document.querySelectorAll('#grid img.thumb')];
                return imgs.length && imgs.every(i => i.complete) ? imgs.map(i => i.naturalWidth) : null;"""
    return wait_for(driver, script)


def test_login_search_detail_and_more_like_this(driver, site: str, catalogue: Catalogue,  # noqa: ANN001
                                                tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    driver.get(site + "/")
    driver.find_element(By.NAME, "token").send_keys(TOKEN)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait_for(driver, "return document.querySelector('#q') !== null")

    box = driver.find_element(By.ID, "q")
    box.send_keys("bicycle")
    driver.find_element(By.ID, "go").click()
    wait_for(driver, "return location.search.includes('q=bicycle')")
    widths = loaded_thumbnails(driver)
    assert len(widths) == len(catalogue.ids) and all(w > 0 for w in widths), widths
    cards = driver.find_elements(By.CSS_SELECTOR, "#grid .card")
    assert cards[0].get_attribute("data-id") == catalogue.ids["green-0.jpg"]  # caption + tag match first
    assert len(driver.find_elements(By.CSS_SELECTOR, "#grid .card canvas.placeholder")) == len(catalogue.ids)
    assert not driver.find_element(By.ID, "more").is_displayed()  # one page holds every result
    # ASSEMBLAGE_WRITE_SCREENSHOT=1 refreshes the README's picture; otherwise it goes to tmp
    shot = SCREENSHOT if os.environ.get("ASSEMBLAGE_WRITE_SCREENSHOT") == "1" else tmp_path / "grid.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000

    cards[0].click()
    wait_for(driver, "const p = document.querySelector('#preview'); return p && p.complete && p.naturalWidth > 0")
    text = driver.find_element(By.CSS_SELECTOR, ".detail").text
    assert "a red bicycle leaning on a wall" in text and "Paris, Ile-de-France, FR" in text
    assert "FUJIFILM" in text and "bicycle 0.90" in text
    swatches = driver.find_elements(By.CSS_SELECTOR, ".palette .swatch")
    assert swatches and swatches[0].get_attribute("title").startswith("#")

    driver.find_element(By.ID, "like").click()
    wait_for(driver, "return location.search.startsWith('?like=')")
    widths = loaded_thumbnails(driver)
    assert len(widths) == len(catalogue.ids) - 1 and all(w > 0 for w in widths)
    ids = [c.get_attribute("data-id") for c in driver.find_elements(By.CSS_SELECTOR, "#grid .card")]
    assert catalogue.ids["green-0.jpg"] not in ids and set(ids) < set(catalogue.ids.values())

    # the duplicates of orange-0 are shown in its detail view
    driver.get(f"{site}/image/{catalogue.ids['orange-0.jpg']}")
    wait_for(driver, "return document.querySelectorAll('.detail .grid .card').length > 0")
    dupes = [c.get_attribute("data-id") for c in driver.find_elements(By.CSS_SELECTOR, ".detail .grid .card")]
    assert dupes == [catalogue.ids["orange-1.jpg"]]


def test_shard_view_is_reachable_by_its_browse_url(driver, site: str, catalogue: Catalogue) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By

    driver.get(f"{site}/shard/parks")
    if driver.find_elements(By.NAME, "token"):
        driver.find_element(By.NAME, "token").send_keys(TOKEN)
        driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    widths = loaded_thumbnails(driver)
    assert len(widths) == 2 and all(w > 0 for w in widths)
    assert "Shard parks" in driver.find_element(By.ID, "view").text
    assert "indexed: 2" in driver.find_element(By.ID, "view").text


def test_thumbhash_decoder_matches_the_python_reference(driver, site: str, catalogue: Catalogue) -> None:  # noqa: ANN001
    from assemblage_assets.core import db
    from assemblage_assets.core.thumbhash import thumbhash_to_rgba

    driver.get(site + "/")
    with db.connect(catalogue.dsn) as conn:
        hashes = [r["thumbhash"] for r in conn.execute("SELECT thumbhash FROM images ORDER BY id").fetchall()]
    for text in hashes:
        got = driver.execute_script(
            "const {w, h, rgba} = thumbHashToRGBA(Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0)));"
            "return [w, h, Array.from(rgba)];", text)
        expected = thumbhash_to_rgba(base64.b64decode(text))
        assert (got[1], got[0]) == expected.shape[:2]
        diff = np.abs(np.array(got[2], np.int16).reshape(expected.shape) - expected.astype(np.int16))
        assert diff.max() <= 1, text  # rounding vs truncation of the last bit
