"""The diagrams (Sankey, attrition flow, Venn) in a real browser: Debian's chromium through Selenium.

They render as SVG with no console error, offline; choosing another site redraws them, and the
linked table's cohort filter redraws the attrition flow for that cohort.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from coordinator.report import write_report
from coordinator.store import ResultsStore
from coordinator.trust.manifest import sign_manifest
from optima_common.bundle import manifest_sha256, render
from tests.factories import manifest_doc
from tests.test_browser import browser, errors  # noqa: F401  (module fixture: headless chromium)
from tests.test_report_diagrams import SITES, _bundle

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    manifest = sign_manifest(manifest_doc(target_sites=list(SITES), min_sites=2), Ed25519PrivateKey.generate())
    folder = tmp_path_factory.mktemp("diagrams")
    with ResultsStore.open(folder / "store.sqlite3") as store:
        store.add_manifest(manifest)
        for s in SITES:
            b = _bundle(s, manifest.manifest_id, manifest_sha256(manifest))
            store.set_site_status(manifest.manifest_id, s, "sent")
            assert store.add_bundle(b, render(b))
            store.set_site_status(manifest.manifest_id, s, "done")
        return write_report(store, manifest.manifest_id, folder / "out").html


def _tab(d, tab):
    d.find_element(By.CSS_SELECTOR, f"nav#tabs button[data-tab='{tab}']").click()
    return d.find_element(By.ID, tab)


def test_diagrams_render_and_redraw(report, browser):  # noqa: F811
    text = report.read_text()
    assert "http://" not in text and "https://" not in text  # offline, as the demo test checks
    d = browser
    d.get(report.as_uri())
    assert d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1"
    assert errors(d) == []
    for tab, kind, shapes in (("pathways", "sankey", "path.link"), ("attrition", "attrition", "rect.box"),
                              ("overlap", "venn", "circle")):
        panel = _tab(d, tab)
        div = panel.find_element(By.CSS_SELECTOR, f"div.diagram[data-kind='{kind}']")
        svg = div.find_element(By.CSS_SELECTOR, "svg")
        assert svg.is_displayed() and svg.get_attribute("data-site") == "network"
        assert svg.find_elements(By.CSS_SELECTOR, shapes)
        text = svg.text
        if kind == "sankey":  # 24 = 13 + 11 with a suppressed site: a lower bound; pneumonectomy never 0
            assert "≥24" in text and "pneumonectomy <5" in text
            assert svg.find_elements(By.CSS_SELECTOR, "path.sup-link")
        if kind == "venn":
            assert "≥35" in text and "≥16" in text
        drawn = int(div.get_attribute("data-drawn"))
        Select(div.find_element(By.CSS_SELECTOR, "select.dsite")).select_by_value("c")
        assert int(div.get_attribute("data-drawn")) == drawn + 1
        svg = div.find_element(By.CSS_SELECTOR, "svg")
        assert svg.get_attribute("data-site") == "c"
        if kind == "venn":  # site c suppressed every part: no numbers drawn as 0
            assert "<5" in svg.text and "0" not in svg.text.replace("<5", "")
    # the attrition table's cohort filter redraws the flow for that cohort
    panel = _tab(d, "attrition")
    div = panel.find_element(By.CSS_SELECTOR, "div.diagram")
    Select(div.find_element(By.CSS_SELECTOR, "select.dsite")).select_by_value("network")
    assert div.find_element(By.CSS_SELECTOR, "svg").get_attribute("data-group") == "death"
    Select(panel.find_element(By.CSS_SELECTOR, ".tbar select[data-col='0']")).select_by_value("sclc")
    svg = div.find_element(By.CSS_SELECTOR, "svg")
    assert svg.get_attribute("data-group") == "sclc" and "subjects: 94" in svg.text
    Select(panel.find_element(By.CSS_SELECTOR, ".tbar select[data-col='0']")).select_by_value("death")
    assert "subjects: 188" in div.find_element(By.CSS_SELECTOR, "svg").text
    assert errors(d) == []
