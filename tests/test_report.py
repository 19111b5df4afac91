"""The offline network report: one self-contained HTML file and the network CSV, per site and pooled."""

from __future__ import annotations

import base64
import gzip
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest

from coordinator.report import write_report
from coordinator.store import ResultsStore, StoreError
from optima_common.bundle import render
from optima_common.results import validate_csv
from tests.conftest import REPO
from tests.test_network_results import network_sites


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    manifest, bundles, _, _ = network_sites()
    path = tmp_path_factory.mktemp("report") / "results.sqlite3"
    with ResultsStore.open(path) as store:
        store.add_manifest(manifest, spec_name="lung diagnostics")
        for b in bundles:
            store.set_site_status(manifest.manifest_id, b.site, "sent")
            assert store.add_bundle(b, render(b))
            store.set_site_status(manifest.manifest_id, b.site, "done")
        store.set_site_status(manifest.manifest_id, "site_c", "sent")
        store.set_site_status(manifest.manifest_id, "site_c", "refused", "cohort hash not approved by the site")
    return path, manifest


def test_report_is_offline_and_shows_sites_pooled_and_flags(stored, tmp_path):
    path, manifest = stored
    with ResultsStore.open(path) as store:
        paths = write_report(store, manifest.manifest_id, tmp_path / "out")
    assert paths.html == tmp_path / "out" / "report.html" and paths.csv == tmp_path / "out" / "results.csv"
    page = paths.html.read_text(encoding="utf-8")
    # offline: nothing fetched from anywhere; every image embedded, as a PNG (Kaplan-Meier) or as SVG text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page, re.IGNORECASE)
    assert not re.search(r"<script[^>]+src", page, re.IGNORECASE) and "@import" not in page  # JS/CSS inlined
    assert re.search(r"<script>.*enhance.*</script>", page, re.DOTALL) and 'id="tabs"' in page
    assert page.count('class="panel"') >= 8 and "data-rows=" in page
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(imgs) >= 1 and all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in imgs)
    assert page.count("<img") == len(imgs)
    svgs = re.findall(r"<svg .*?</svg>", page, re.DOTALL)  # forest plots and yearly rates
    assert len(svgs) >= 2 and page.count("<svg") == len(svgs)
    for svg in svgs:
        root = ET.fromstring(svg)  # each is well-formed XML on its own
        assert root.find("title").text and not list(root.iter("{*}script"))
    for text in ("site_a", "site_b", "network", "refused", "cohort hash not approved by the site", "2025-01-15",
                 "v5.0 2024", "Cohort counts", "Attrition", "Characteristics", "Incidence", "Prevalence",
                 "random effects", "I²", "Kaplan-Meier", "Number at risk", "lower bounds", "&ge;", "&lt;5"):
        assert text in page, text
    # the CSV is the network summarised_result in the omopgenerics layout
    res = validate_csv(paths.csv)
    # the compressed copy is the same table (R's readr and pandas read .csv.gz directly)
    assert paths.csv_gz == paths.csv.with_suffix(".csv.gz")
    assert gzip.decompress(paths.csv_gz.read_bytes()) == paths.csv.read_bytes()
    assert paths.csv_gz.stat().st_size < paths.csv.stat().st_size / 3
    assert set(res.data["cdm_name"]) == {"site_a", "site_b", "network"}
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_report_command(stored, tmp_path):
    path, manifest = stored
    run = lambda *a: subprocess.run([sys.executable, "-m", "coordinator.cli.main", "report", *a],
                                    capture_output=True, text=True, cwd=REPO, check=False)
    p = run(manifest.study_id, "--store", str(path), "--out", str(tmp_path / "r"))  # a study id: its newest manifest
    assert p.returncode == 0 and (tmp_path / "r" / "report.html").is_file() and "results.csv" in p.stdout, p.stderr
    for args, words in (([ "nosuchstudy", "--store", str(path), "--out", str(tmp_path / "x")], "neither"),
                        ([manifest.manifest_id, "--store", str(path), "--out", str(path)], "not a folder")):
        p = run(*args)
        assert p.returncode != 0 and p.stderr.count("\n") == 1 and words in p.stderr, p.stderr
    assert not (tmp_path / "x").exists()
    # the CSV is written by a thread beside the page: its failure still stops the command, one line,
    # and no report.html is left claiming a CSV that is not there
    blocked = tmp_path / "blocked"
    (blocked / "results.csv").mkdir(parents=True)
    p = run(manifest.study_id, "--store", str(path), "--out", str(blocked))
    assert p.returncode != 0 and p.stderr.count("\n") == 1 and "cannot write the report" in p.stderr, p.stderr
    assert not (blocked / "report.html").exists()


def test_a_page_that_fails_leaves_the_folder_as_it_was(stored, tmp_path, monkeypatch):
    """The CSV is made and staged by a thread beside the page; when the page fails, nothing takes
    a name: an earlier report stays whole, a new folder is not left behind, no temp file remains."""
    import coordinator.report as R

    path, manifest = stored
    old = tmp_path / "old"
    with ResultsStore.open(path) as store:
        write_report(store, manifest.manifest_id, old)
        before = {p.name: p.read_bytes() for p in old.iterdir()}

        def broken(*a, **k):
            time.sleep(0.5)  # the thread has staged the CSV by now (or is doing so)
            raise RuntimeError("a section failed")
        monkeypatch.setattr(R, "_page", broken)
        for out in (old, tmp_path / "new"):
            with pytest.raises(RuntimeError, match="a section failed"):
                write_report(store, manifest.manifest_id, out)
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before
    assert not (tmp_path / "new").exists()


def test_no_bundles_no_report(tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from coordinator.trust.manifest import sign_manifest
    from tests.factories import manifest_doc as make_manifest

    manifest = sign_manifest(make_manifest(), Ed25519PrivateKey.generate())
    with ResultsStore.open(tmp_path / "s.sqlite3") as store:
        store.add_manifest(manifest)
        with pytest.raises(StoreError, match="no stored site bundles"):
            write_report(store, manifest.manifest_id, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unreadable_site_table_is_left_out_with_a_note(stored, tmp_path):
    """A verified bundle whose CSV is not a summarised_result does not sink the report."""
    import shutil

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from optima_common.bundle import sign
    from tests.factories import bundle_doc as make_bundle

    path, manifest = stored
    path = shutil.copy(path, tmp_path / "copy.sqlite3")  # the shared store stays as it was
    broken = make_bundle(manifest, site="site_c").model_copy(update={"results_csv": "a,b,c\n1,2,3\n"})
    odd = sign(broken, Ed25519PrivateKey.generate())  # a CSV with 3 columns, not a summarised_result
    with ResultsStore.open(path) as store:
        store.add_bundle(odd, render(odd))
        paths = write_report(store, manifest.manifest_id, tmp_path / "out")
    page = paths.html.read_text(encoding="utf-8")
    assert "site site_c: results not readable" in page
    assert set(validate_csv(paths.csv).data["cdm_name"]) == {"site_a", "site_b", "network"}


def test_km_figure_when_every_curve_stops_at_day_0():
    """Small sites' curves are withheld after the first interval, so the pooled curve can be the
    single point (0, 1) while the at-risk row still has later grid times: the figure must keep a
    sane size (it raised "Image size of 16210213x370 pixels is too large")."""
    import base64
    import io

    from PIL import Image

    from coordinator.report.plots import km_png

    png = km_png("sclc: death", {"network": ([0.0], [1.0], [1.0], [1.0])},
                 {"network": [(0.0, "12"), (91.0, "<"), (3652.0, "<")]})
    width, height = Image.open(io.BytesIO(base64.b64decode(png))).size
    assert 100 < width < 2000 and 100 < height < 2000


def test_km_risk_table_labels_do_not_collide():
    """The risk table's row names once ran into the day-0 counts ("network245"), and the hidden
    table axis took the day ticks with it: every text of the table must sit apart, and the curve
    panel must show its day tick labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from coordinator.report.plots import km_figure

    fig = km_figure("sclc: death", {"network": ([0, 100, 730, 3652], [1, .9, .5, .4], [1, .85, .45, .35], [1, .95, .55, .45]),
                                    "stage II": ([0, 100], [1, .8], [1, .7], [1, .9])},
                    {"network": [(0, "245"), (730, "120"), (1460, "60")], "stage II": [(0, "95"), (730, "40")]})
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax, tab = fig.axes
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in tab.texts]
    boxes.append(("title", tab.title.get_window_extent(renderer)))
    boxes += [(t.get_text(), t.get_window_extent(renderer)) for t in ax.get_xticklabels() if t.get_text()]
    for i, (a, ba) in enumerate(boxes):
        for b, bb in boxes[i + 1:]:
            assert not ba.overlaps(bb), f"{a!r} overlaps {b!r}"
    assert [t.get_text() for t in ax.get_xticklabels() if t.get_visible() and t.get_text()], "no day tick labels"
    plt.close(fig)
