"""The network report: one offline HTML file (no external JS/CSS; SVG and PNG figures embedded) + the network CSV."""

from __future__ import annotations

import datetime as dt
import threading
from importlib import resources
from pathlib import Path

from pydantic import BaseModel

from coordinator.pooling.cache import pooled_result
from coordinator.pooling.results import NetworkResult
from coordinator.report import diagrams as D
from coordinator.report import sections as S
from coordinator.report import survival_sections
from coordinator.report.figure_pool import deferred
from coordinator.report.genomics import genomics_section
from coordinator.report.nlp_section import nlp_section
from coordinator.store import ResultsStore, StoreError, packing
from coordinator.store.ops import runs
from optima_common.fileio import Staged, write_atomic

ASSETS = Path(__file__).parent / "assets"


def assets() -> tuple[str, str]:
    """(CSS, JS) inlined into every page: the report works from a file, offline.

    The table script and its styles are optima_common/web's, shared with the site's review page;
    the diagrams are the report's own."""
    web = resources.files("optima_common.web")
    css = (web / "tables.css").read_text(encoding="utf-8") + (ASSETS / "diagrams.css").read_text(encoding="utf-8")
    js = (web / "tables.js").read_text(encoding="utf-8") + "\n" + (ASSETS / "diagrams.js").read_text(encoding="utf-8")
    return css, js


def page_html(title: str, header: str, panels: list[tuple[str, str, str]]) -> str:
    """One self-contained page: a header, a tab bar, and one panel per (id, tab title, HTML)."""
    css, js = assets()
    body = "\n".join(f'<section class="panel" id="{S.esc(pid)}" data-title="{S.esc(t)}">{h}</section>'
                     for pid, t, h in panels if h)
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><link rel=\"icon\" href=\"data:,\">"
            f"<title>{S.esc(title)}</title><style>{css}</style></head><body>"
            f"<header>{header}</header><nav id=\"tabs\" role=\"tablist\"></nav><main>{body}</main>"
            f"<script>{js}</script></body></html>\n")


class ReportPaths(BaseModel):
    html: Path
    csv: Path
    csv_gz: Path | None = None


def write_report(store: ResultsStore, manifest_id: str, out_dir: Path, *, extra_sections: tuple[str, ...] = (),
                 net: NetworkResult | None = None) -> ReportPaths:
    """Write ``out_dir/report.html`` and ``out_dir/results.csv`` (each atomically) for one manifest.

    ``extra_sections``: HTML sections computed elsewhere (e.g. the network's Cox model). ``net``: the
    manifest's pooled result if the caller holds it (else the one kept in the store, pooled once).
    The network CSV is made, compressed and staged (written to temp files) by a thread while this
    process builds the page (Arrow's CSV writer, zlib and the writes release the GIL), and
    Kaplan-Meier figures are drawn by worker processes (:mod:`.figure_pool`) meanwhile; the files
    take their names only once the page is built, so a failure leaves the folder as it was.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise StoreError(f"--out {out_dir} exists and is not a folder")
    existed = out_dir.exists()
    staged: list[Staged] = []

    def stage(csv_bytes: bytes) -> None:
        staged.append(Staged(out_dir / "results.csv", csv_bytes))
        # the same CSV compressed (~10x smaller): R's readr/omopgenerics and pandas read .csv.gz as is
        staged.append(Staged(out_dir / "results.csv.gz", packing.compress(csv_bytes)))

    try:
        with deferred() as figures:
            page, _ = _render(store, manifest_id, extra_sections=extra_sections, net=net, csv_sink=stage)
            page = figures.fill(page) if figures else page
        csv_path, gz_path = (s.commit() for s in staged)
    except BaseException:
        for s in staged:
            s.discard()
        if not existed and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    html_path = write_atomic(out_dir / "report.html", page.encode("utf-8"))
    return ReportPaths(html=html_path, csv=csv_path, csv_gz=gz_path)


def render_report(store: ResultsStore, manifest_id: str, *, extra_sections: tuple[str, ...] = (),
                  net: NetworkResult | None = None) -> tuple[str, bytes]:
    """(the page, the network CSV) for one manifest, from the store; nothing written."""
    with deferred() as figures:
        page, csv_bytes = _render(store, manifest_id, extra_sections=extra_sections, net=net)
        return (figures.fill(page) if figures else page), csv_bytes


class _Background(threading.Thread):
    """``work()`` in a thread; :meth:`result` joins it and returns its value or raises its error."""

    def __init__(self, work):
        super().__init__(daemon=True)
        self.work, self.value, self.error = work, None, None

    def run(self) -> None:
        try:
            self.value = self.work()
        except BaseException as exc:  # raised again by result()
            self.error = exc

    def result(self):
        self.join()
        if self.error is not None:
            raise self.error
        return self.value


def _render(store: ResultsStore, manifest_id: str, *, extra_sections: tuple[str, ...],
            net: NetworkResult | None, csv_sink=None) -> tuple[str, bytes]:
    """The page (figures may still be placeholders: see :mod:`.figure_pool`) and the network CSV,
    built (and handed to ``csv_sink``) by a thread while the page is built."""
    manifest = store.manifest(manifest_id)
    statuses = store.site_statuses(manifest_id)
    try:  # pooled once and kept in the store (with the answers to re-sends of this manifest)
        net = net or pooled_result(store, manifest_id)
    except ValueError as exc:
        raise StoreError(f"cannot pool manifest {manifest_id}: {str(exc).splitlines()[0]}") from None

    write = net.result.csv_bytes_later()  # the Python part here; Arrow's writer and zlib in the thread

    def csv_work() -> bytes:
        csv_bytes = write()
        if csv_sink is not None:
            csv_sink(csv_bytes)
        return csv_bytes
    csv_job = _Background(csv_work)
    csv_job.start()
    try:
        page = _page(store, manifest, statuses, net, extra_sections)
    except BaseException:
        csv_job.join()  # the page's error is the one raised
        raise
    return page, csv_job.result()


def _page(store: ResultsStore, manifest, statuses, net: NetworkResult, extra_sections: tuple[str, ...]) -> str:
    from coordinator.pooling.versions import (
        changes_section,  # versions pools through network_results too
    )

    manifest_id = manifest.manifest_id
    view = S.View(net)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    answered = sum(s.has_bundle for s in statuses)
    notes = "".join(f"<li>{S.esc(n)}</li>" for n in net.notes)
    header = (f"<h1>Network study {S.esc(manifest.study_id)} {S.esc(manifest.study_version)}</h1>"
              f"<p>manifest {S.esc(manifest_id)}, issued {manifest.issued_at:%Y-%m-%d %H:%M} UTC; "
              f"{answered} of {len(manifest.target_sites)} sites answered (minimum {manifest.min_sites}); "
              f"report written {now}. Pooled rows are under <b>{S.esc(net.pooled_name)}</b>.</p>")
    overview = (
        '<h2>Overview</h2><p class="note">Suppressed site cells are shown as &lt;N (N = minimum cell count). A pooled '
        "value marked &ge; includes suppressed site cells and is a lower bound. Rates and proportions are pooled from "
        "the sites whose cells are all visible; random effects are DerSimonian-Laird with I&sup2;. Every table can be "
        "searched, filtered, sorted and downloaded as CSV (the rows that match).</p>"
        + (f"<ul>{notes}</ul>" if notes else "") + S.status_section(statuses) + S.provenance_section(view))
    panels = [
        ("overview", "Overview", overview),
        ("counts", "Cohort counts", S.counts_section(view)),
        ("attrition", "Attrition", D.after_title(S.attrition_section(view), D.attrition_diagram(view))),
        ("overlap", "Overlap", D.after_title(S.overlap_section(view), D.overlap_diagram(view))),
        ("code-use", "Code use", S.code_use_section(view)),
        ("characteristics", "Characteristics", S.characteristics_section(view)),
        ("incidence", "Incidence", S.rates_section(view, "incidence")),
        ("prevalence", "Prevalence", S.rates_section(view, "prevalence")),
        ("pathways", "Treatment pathways", D.after_title(S.pathways_section(view), D.pathways_diagram(view))),
        ("outcomes", "Outcomes at horizons", survival_sections.horizons_section(view)),
        ("survival", "Survival", survival_sections.km_section(view)),
        ("genomics", "Genomics", genomics_section(view)),
        ("nlp", "NLP metastasis", nlp_section(view)),
        *[(f"extra{i + 1}", S.title_of(x, "More"), x) for i, x in enumerate(extra_sections)],
        ("lower-bounds", "Lower bounds", S.lower_bounds_section(view)),
        ("changes", "Changes", changes_section(store, manifest.study_id) if runs(store, manifest.study_id) else ""),
    ]
    return page_html(f"{manifest.study_id} network report", header, panels)
