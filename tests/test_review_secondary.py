"""`site-agent review show` lists the secondary suppressions of a queued bundle and their relation."""

from __future__ import annotations

import subprocess
import sys

from optima_common import protocol as P
from site_agent.governance.outbox import Outbox
from site_agent.service import Site
from tests.conftest import REPO
from tests.federation_sites import SITES, build_network


def test_review_show_lists_secondary_suppressions(tmp_path):
    net = build_network(tmp_path, sites=SITES[2:], review=("site_east",))
    cfg = net.configs["site_east"]
    site = Site.from_file(str(cfg))
    m = net.manifest(sites=["site_east"], min_sites=1, analyses=("cohort_counts", "sclc_study"))
    status, reason, _ = site.answer_manifest(m.model_dump_json())
    assert status == P.AWAITING_REVIEW, reason
    item = Outbox(site.config.state_dir).pending()[0]
    page = tmp_path / "review.html"
    p = subprocess.run([sys.executable, "-m", "site_agent", "review", "show", item.id, "--config", str(cfg),
                        "--html", str(page)],
                       capture_output=True, text=True, cwd=REPO, check=False)
    assert p.returncode == 0, p.stderr
    assert "== secondary suppressions:" in p.stdout
    assert "primary: count below the minimum cell count (5)" in p.stdout  # each suppressed cell's reason
    line = next(x for x in p.stdout.splitlines() if x.startswith("== secondary suppressions:"))
    n = int(line.split(":")[1].split()[0])
    if n:  # each listed with the relation that made it necessary
        assert any(("add up" in x or "<=" in x or "=" in x) for x in p.stdout.splitlines()[-n:])
    # the page lists every released cell and a reason for each suppressed one
    import re

    from optima_common.results import SummarisedResult
    from site_agent.governance.outbox import read_bundle

    released = SummarisedResult.from_csv_text(read_bundle(Outbox(site.config.state_dir)._bundle_path(item.id))
                                              .results_csv, source="t").data
    html = page.read_text()
    rows = re.findall(r"<tr>(<td>.*?)</tr>", html.split("<h2 id='secondary'>")[0], re.DOTALL)
    assert len(rows) == len(released)
    sup = [r for r in rows if "<td class='sup'>" in r]
    assert len(sup) == int((released["estimate_value"] == "-").sum()) > 0
    reasons = [r.rsplit("<td>", 1)[1].removesuffix("</td>") for r in sup]
    assert all(x.startswith(("primary: ", "secondary: ", "derived: ")) for x in reasons)
    assert (sum(x.startswith("secondary: ") for x in reasons) > 0) == (n > 0)
