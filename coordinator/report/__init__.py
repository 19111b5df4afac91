"""The network report: one offline HTML file (no external JS/CSS, PNG plots embedded) + the network CSV."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pydantic import BaseModel

from coordinator.pooling.results import network_result
from coordinator.report import sections as S
from coordinator.store import ResultsStore, StoreError
from coordinator.store.ops import runs, study_bundles
from optima_common.fileio import write_atomic

CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.85em}
th,td{border:1px solid #ccc;padding:.2em .5em;text-align:left}th{background:#eef2f6}
.sup{color:#888}.lb{color:#b4412b;font-weight:600}figure{display:inline-block;margin:.5em}
.st-done{color:#1c7c3a}.st-failed,.st-missing,.st-rejected,.st-refused{color:#b4412b}
.note{background:#fff8e1;padding:.5em 1em;border-left:4px solid #e0a800}"""


class ReportPaths(BaseModel):
    html: Path
    csv: Path


def write_report(store: ResultsStore, manifest_id: str, out_dir: Path, *, extra_sections: tuple[str, ...] = ()
                 ) -> ReportPaths:
    """Write ``out_dir/report.html`` and ``out_dir/results.csv`` (each atomically) for one manifest.

    ``extra_sections``: HTML sections computed elsewhere (e.g. the network's Cox model).
    """
    from coordinator.pooling.versions import (
        changes_section,  # versions pools through network_results too
    )

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise StoreError(f"--out {out_dir} exists and is not a folder")
    manifest = store.manifest(manifest_id)
    statuses = store.site_statuses(manifest_id)
    bundles = study_bundles(store, manifest_id)  # with the answers to re-sends of this manifest
    if not bundles:
        raise StoreError(f"manifest {manifest_id} has no stored site bundles yet; nothing to report")
    try:
        net = network_result(bundles)
    except ValueError as exc:
        raise StoreError(f"cannot pool manifest {manifest_id}: {str(exc).splitlines()[0]}") from None
    csv_bytes = net.result.to_csv_text().encode("utf-8")
    view = S.View(net)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    answered = sum(s.has_bundle for s in statuses)
    notes = "".join(f"<li>{S.esc(n)}</li>" for n in net.notes)
    parts = [
        f"<h1>Network study {S.esc(manifest.study_id)} {S.esc(manifest.study_version)}</h1>",
        (f"<p>manifest {S.esc(manifest_id)}, issued {manifest.issued_at:%Y-%m-%d %H:%M} UTC; "
         f"{answered} of {len(manifest.target_sites)} sites answered (minimum {manifest.min_sites}); "
         f"report written {now}. Pooled rows are under <b>{S.esc(net.pooled_name)}</b>.</p>"),
        ('<p class="note">Suppressed site cells are shown as &lt;N (N = minimum cell count). A pooled value marked '
         "&ge; includes suppressed site cells and is a lower bound. Rates and proportions are pooled from the "
         "sites whose cells are all visible; random effects are DerSimonian-Laird with I&sup2;.</p>"),
        f"<ul>{notes}</ul>" if notes else "",
        S.status_section(statuses), S.provenance_section(view), S.counts_section(view), S.attrition_section(view),
        S.characteristics_section(view), S.rates_section(view, "incidence"), S.rates_section(view, "prevalence"),
        S.km_section(view), *extra_sections, S.pathways_section(view), S.lower_bounds_section(view),
        changes_section(store, manifest.study_id) if runs(store, manifest.study_id) else "",
    ]
    page = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{S.esc(manifest.study_id)} network report</title><style>{CSS}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = write_atomic(out_dir / "results.csv", csv_bytes)
    html_path = write_atomic(out_dir / "report.html", page.encode("utf-8"))
    return ReportPaths(html=html_path, csv=csv_path)
