"""Screenshots of the report and the viewer for docs/viewer.md (not part of the test run).

    python scripts/screenshots.py demo-network            # a finished `coordinator demo --out demo-network`

Writes docs/img/report-<tab>.png and docs/img/viewer-<tab>.png with Debian's chromium through
Selenium (chromium-driver), offline. Prints the page load times.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

TABS = ("overview", "incidence", "survival", "extra1", "characteristics", "pathways", "attrition", "overlap")


def driver() -> webdriver.Chrome:
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000", "--hide-scrollbars"):
        opts.add_argument(a)
    opts.binary_location = "/usr/bin/chromium"
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def shoot(d: webdriver.Chrome, url: str, prefix: str, out: Path) -> float:
    t0 = time.perf_counter()
    d.get(url)
    loaded = time.perf_counter() - t0
    for tab in TABS:
        buttons = d.find_elements(By.CSS_SELECTOR, f"nav#tabs button[data-tab='{tab}']")
        if buttons:
            buttons[0].click()
            d.save_screenshot(str(out / f"{prefix}-{tab}.png"))
    return loaded


def main(folder: str, out: str = "docs/img") -> int:
    from coordinator.store import ResultsStore
    from coordinator.viewer import make_server

    demo, target = Path(folder), Path(out)
    target.mkdir(parents=True, exist_ok=True)
    d = driver()
    try:
        print(f"report.html loaded in {shoot(d, (demo / 'report.html').resolve().as_uri(), 'report', target):.2f}s")
        store = ResultsStore.open(demo / "store.sqlite3")
        server = make_server(store, "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_address[1]}"
        d.get(base + "/")
        d.save_screenshot(str(target / "viewer-index.png"))
        link = d.find_element(By.CSS_SELECTOR, "a[href^='/m/']").get_attribute("href")
        t0 = time.perf_counter()
        d.get(link)  # first request builds the page from the store
        print(f"viewer study page (built from the store) in {time.perf_counter() - t0:.2f}s")
        print(f"viewer study page (cached) in {shoot(d, link, 'viewer', target):.2f}s")
        server.shutdown()
        store.close()
    finally:
        d.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
