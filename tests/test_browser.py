"""The report and the viewer in a real browser: Debian's chromium driven by Selenium (chromium-driver).

scripts/test.sh installs ``chromium`` and ``chromium-driver``; without them these tests fail
(they are not skipped): the pages are meant to be opened by people, so a browser checks them.
Offline: the pages must load with no console errors and fetch nothing.
"""

from __future__ import annotations

import shutil
import threading
import time

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

from coordinator.report import write_report
from coordinator.store import ResultsStore
from coordinator.viewer import make_server
from tests.test_report import stored  # noqa: F401  (module fixture: a store with two sites' bundles)

pytestmark = pytest.mark.slow


def chromium_paths() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    assert browser and driver, "chromium and chromium-driver are needed (scripts/test.sh installs them as root)"
    return browser, driver


@pytest.fixture(scope="module")
def browser():
    binary, driver = chromium_paths()
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000",
              "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=127.0.0.1;localhost"):  # offline: no internet
        opts.add_argument(a)
    opts.binary_location = binary
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(driver), options=opts)
    yield d
    d.quit()


def errors(d) -> list[dict]:
    return [e for e in d.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def check_page(d) -> None:
    """Loaded with no console error; tabs switch; a filter and a search narrow a table; paging says counts."""
    assert d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1"
    assert errors(d) == []
    tabs = d.find_elements(By.CSS_SELECTOR, "nav#tabs button")
    names = [t.text for t in tabs]
    assert {"Overview", "Cohort counts", "Attrition", "Incidence", "Survival"} <= set(names), names
    panels = d.find_elements(By.CSS_SELECTOR, "section.panel")
    assert sum(p.is_displayed() for p in panels) == 1
    tabs[names.index("Cohort counts")].click()
    visible = [p for p in panels if p.is_displayed()]
    assert len(visible) == 1 and visible[0].get_attribute("id") == "counts"
    table = visible[0].find_element(By.CSS_SELECTOR, "table.itable")
    total = int(table.get_attribute("data-rows"))
    assert int(table.get_attribute("data-matching")) == total > 2
    # a column filter (the cohort column) narrows the rows
    sel = Select(visible[0].find_element(By.CSS_SELECTOR, ".tbar select[data-col='0']"))
    sel.select_by_index(1)
    narrowed = int(table.get_attribute("data-matching"))
    assert 0 < narrowed < total
    assert len(table.find_elements(By.CSS_SELECTOR, "tbody tr")) == narrowed
    sel.select_by_index(0)
    search = visible[0].find_element(By.CSS_SELECTOR, ".tbar input[type=search]")
    search.send_keys("zzz-no-such-row")
    assert table.get_attribute("data-matching") == "0"
    assert "no rows match" in visible[0].find_element(By.CSS_SELECTOR, ".pager").text
    search.send_keys(Keys.CONTROL, "a")
    search.send_keys(Keys.BACKSPACE)
    assert int(table.get_attribute("data-matching")) == total
    # sorting by a column keeps every row
    table.find_elements(By.CSS_SELECTOR, "thead th")[0].click()
    assert int(table.get_attribute("data-matching")) == total
    # the attrition flow diagram is drawn (SVG, in the page, from its embedded data)
    tabs[names.index("Attrition")].click()
    svg = d.find_element(By.CSS_SELECTOR, "#attrition div.diagram svg")
    assert svg.is_displayed() and svg.find_elements(By.CSS_SELECTOR, "rect.box")
    # forest plots and yearly rates are SVG text in the page: laid out at their size, every point inside
    tabs[names.index("Incidence")].click()
    figs = d.find_elements(By.CSS_SELECTOR, "#incidence figure > svg")
    assert figs and all(f.is_displayed() and f.size["width"] > 300 and f.size["height"] > 80 for f in figs)
    marks = 0
    for f in figs:
        box = f.rect
        for mark in f.find_elements(By.CSS_SELECTOR, "g.site rect, circle"):
            marks += 1
            r = mark.rect
            assert box["x"] <= r["x"] and r["x"] + r["width"] <= box["x"] + box["width"] + 1, (box, r)
    assert marks, "no point drawn in any incidence figure"
    tabs[names.index("Survival")].click()
    assert d.find_element(By.ID, "survival").is_displayed()
    assert errors(d) == []


def test_report_in_a_browser_offline(stored, tmp_path, browser):  # noqa: F811
    path, manifest = stored
    with ResultsStore.open(path) as store:
        paths = write_report(store, manifest.manifest_id, tmp_path / "out")
    t0 = time.perf_counter()
    browser.get(paths.html.as_uri())
    assert time.perf_counter() - t0 < 20
    check_page(browser)


def test_viewer_serves_the_store(stored, browser):  # noqa: F811
    path, manifest = stored
    store = ResultsStore.open(path)
    server = make_server(store, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        browser.get(base + "/")
        assert errors(browser) == []
        link = browser.find_element(By.CSS_SELECTOR, f"a[href='/m/{manifest.manifest_id}']")
        link.click()
        check_page(browser)
        browser.get(f"{base}/m/{manifest.manifest_id}/results.csv")
        browser.get(f"{base}/m/no-such-manifest")
        assert "not in the results store" in browser.find_element(By.TAG_NAME, "body").text
    finally:
        server.shutdown()
        server.server_close()
        store.close()


def test_compact_tables_are_the_same_tables_in_a_browser(stored, tmp_path, browser, monkeypatch):  # noqa: F811
    """Long tables are written without the optional </td></tr> (a 20-site report stays under 10 MB):
    the browser builds the same rows and cells, and the page behaves the same."""
    import coordinator.report.sections as S

    path, manifest = stored
    with ResultsStore.open(path) as store:
        full = write_report(store, manifest.manifest_id, tmp_path / "full")
        monkeypatch.setattr(S, "COMPACT_ROWS", 0)  # every table compact
        compact = write_report(store, manifest.manifest_id, tmp_path / "compact")
    page = compact.html.read_text(encoding="utf-8")
    assert "</td>" not in page and len(page) < 0.9 * len(full.html.read_text(encoding="utf-8"))
    browser.get_log("browser")  # what earlier tests left in the log (the viewer's 404) is not this page's
    cells = []
    for p in (full, compact):
        browser.get(p.html.as_uri())
        assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1"
        cells.append(browser.execute_script(
            "return Array.from(document.querySelectorAll('section.panel table')).map(t => [t.dataset.rows,"
            " Array.from(t.tBodies[0] ? t.tBodies[0].rows : []).slice(0, 30).map(r =>"
            " Array.from(r.cells).map(c => c.innerHTML))])"))
    assert cells[0] == cells[1] and len(cells[0]) > 5
    check_page(browser)
