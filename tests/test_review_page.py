"""The site's review page (`site-agent diagnostics --html`): every released cell is listed (no cut,
even past the old 2,000-row limit) and every suppressed cell carries its reason."""

from __future__ import annotations

import html as H
import re

from optima_common.disclosure import protect
from optima_common.results import SummarisedResult
from site_agent.diagnostics.html import write_html
from site_agent.suppression import suppress

N_COHORTS = 700  # 700 cohorts x 4 cells = 2,800 rows


def _row(cohort, variable, value, additional=("overall", "overall")):
    return {"result_id": 1, "cdm_name": "x", "group_name": "cohort_name", "group_level": cohort,
            "strata_name": "overall", "strata_level": "overall", "variable_name": variable, "estimate_name": "count",
            "estimate_type": "integer", "estimate_value": str(value), "additional_name": additional[0],
            "additional_level": additional[1]}


def _raw() -> SummarisedResult:
    rows = []
    for i in range(N_COHORTS):
        small = i % 7 == 0  # every 7th cohort has 3 subjects: primary suppression
        n = 3 if small else 40 + i % 11
        rows += [_row(f"c{i:04d}", "Number records", n), _row(f"c{i:04d}", "Number subjects", n)]
        rows.append(_row(f"c{i:04d}", "Age", 61.5 if not small else 58.0) | {"estimate_name": "mean",
                                                                             "estimate_type": "numeric"})
        # a visit flag 2 below the subject count: not small itself, but 40 - 38 = 2 would leak
        rows.append(_row(f"c{i:04d}", "Any visit prior year", n - 2 if i == 1 else n,
                         additional=("table &&& window &&& value", "visit_occurrence &&& -365 to -1 &&& flag")))
    return SummarisedResult.from_records(rows, [{"result_id": 1, "result_type": "summarise_characteristics",
                                                 "package_name": "p", "package_version": "1"}])


def _cells(page: str) -> list[list[str]]:
    body = re.search(r"<table data-name='summarise_characteristics'.*?<tbody>(.*?)</tbody>", page, re.DOTALL).group(1)
    return [[H.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", tr, re.DOTALL)]
            for tr in re.findall(r"<tr>(.*?)</tr>", body, re.DOTALL)]


def test_every_released_row_is_listed_and_each_suppressed_cell_has_a_reason(tmp_path):
    raw = _raw()
    prot = protect(raw, suppress(raw, 5), 5)
    released = prot.result.data
    page = write_html(prot.result, tmp_path / "review.html", title="t", min_cell_count=5,
                      secondary=prot.secondary_frame()).read_text()
    rows = _cells(page)
    assert len(rows) == len(released) == 4 * N_COHORTS  # nothing cut
    assert "more rows in the CSV" not in page and "<script>" in page  # paged in the browser instead
    sup = [r for r in rows if r[-2] == "<5"]
    assert len(sup) == int((released["estimate_value"] == "-").sum()) > 0
    assert all(r[-1] for r in sup), "a suppressed cell without a reason"
    assert all(not r[-1] for r in rows if r[-2] != "<5"), "a visible cell with a reason"
    small = {f"c{i:04d}" for i in range(N_COHORTS) if i % 7 == 0}
    for r in sup:
        cohort, estimate = r[2], r[9]
        if cohort in small and estimate == "count":
            assert r[-1].startswith("primary: count below the minimum cell count (5)")
    # cohort c0001: the flag is secondary-suppressed, and the page names the relation the audit gave
    flag = [r for r in rows if r[2] == "c0001" and r[5] == "Any visit prior year"]
    sec = prot.secondary_frame()
    assert flag[0][-2] == "<5" and flag[0][-1] == "secondary: " + sec.loc[0, "relation"]
    assert any(r[-1].startswith("derived:") for r in sup if r[9] == "mean")


def test_the_site_page_uses_the_same_table_script_as_the_report():
    """One table script, optima_common/web's: the report and the site's review page both inline it."""
    from importlib import resources

    from coordinator.report import assets

    script = (resources.files("optima_common.web") / "tables.js").read_text(encoding="utf-8")
    css, js = assets()
    assert js.startswith(script) and "d-venn" in css
