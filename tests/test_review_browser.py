"""The review page in a real headless Chromium, keyboard only: accept, correct, none of these, undo; a reload shows
the decisions, and the page runs under its strict Content-Security-Policy."""

import sqlite3

import pytest

pytest.importorskip("fastapi")

from helpers import REVIEW_CLASSES as CLASSES  # noqa: E402
from helpers import chromium, fake_catalogue, live_server  # noqa: E402

from fashionclf.apps.desk.app import create_app  # noqa: E402


@pytest.mark.browser
@pytest.mark.slow
def test_review_page_keyboard_only(tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    cat = tmp_path / "cat.db"
    fake_catalogue(cat, tmp_path / "photos", 9, unknown=(2,))  # needing review, least certain first: items 1, 2, 4, 5, 7, 8
    with live_server(create_app(cat)) as base:
        browser = chromium()
        try:
            browser.get(base + "/?reviewer=ann")
            wait = WebDriverWait(browser, 30)

            def shown():
                wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("ready", "empty"))
                return browser.find_element(By.TAG_NAME, "body").get_attribute("data-item")

            def press(*keys):
                before = shown()
                ActionChains(browser).send_keys(*keys).perform()
                wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-item") != before)
                return shown()

            assert shown() == "1"
            assert browser.find_element(By.ID, "photo").get_attribute("naturalWidth") not in (None, "0")
            assert len(browser.find_elements(By.CSS_SELECTOR, "#top3 .bar")) == 3
            assert "no run" in browser.find_element(By.ID, "heatnote").text
            sel = browser.find_element(By.CSS_SELECTOR, "#classes button.sel")
            assert sel.get_attribute("data-label") == CLASSES[0]  # item 1's prediction is highlighted
            assert sel.value_of_css_property("background-color") == "rgba(204, 221, 238, 1)"  # the hashed style block applied
            assert not browser.find_element(By.ID, "verdict").is_displayed()
            assert press(Keys.ENTER) == "2"  # accept the model's label
            assert "none of these" in browser.find_element(By.ID, "verdict").text  # item 2: the run called it unknown
            assert press("3") == "4"  # item 2: correct it to the third class
            # item 4 (predicted pants): arrow to the next class, Enter takes it
            ActionChains(browser).send_keys(Keys.ARROW_DOWN).perform()
            wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#classes button.sel").get_attribute("data-label") == "shirt")
            assert press(Keys.ENTER) == "5"
            assert press("n") == "7"  # item 5: none of these
            assert press("u") == "5"  # undo brings item 5 back
            assert press("n") == "7"
            browser.refresh()
            assert shown() == "7"
            wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#recent li")) == 4)
            recent = [(li.get_attribute("data-item"), li.get_attribute("data-action"), li.get_attribute("data-label"))
                      for li in browser.find_elements(By.CSS_SELECTOR, "#recent li")]  # fmt: skip
            assert recent == [("5", "unknown", ""), ("4", "correct", "shirt"), ("2", "correct", "skirt"), ("1", "accept", "pants")]
        finally:
            browser.quit()
    with sqlite3.connect(cat) as conn:
        rows = conn.execute("SELECT id, status, reviewed_label, reviewer FROM items WHERE id IN (1, 2, 4, 5) ORDER BY id").fetchall()
    assert rows == [
        (1, "reviewed", "pants", "ann"),
        (2, "reviewed", "skirt", "ann"),
        (4, "reviewed", "shirt", "ann"),
        (5, "unknown", None, "ann"),
    ]
