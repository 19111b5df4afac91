"""The local demo network: synthetic sites, each building the lung study cohorts.

Each site is driven through the ``site-agent`` command line in its own process, exactly
as a data partner would run it; the coordinator only sees what the agent prints: aggregate
counts with cells below the minimum cell count (default 5) suppressed at the site. The federation issue replaces the subprocess calls with Flower messages.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


class DemoError(RuntimeError):
    """A site step failed; carries the agent's own one-line error."""


@dataclass(frozen=True)
class DemoSite:
    name: str
    profile: str
    persons: int
    seed: int


def default_sites(persons: int, seed: int) -> list[DemoSite]:
    """Three sites that differ in size and kind (two oncology EMRs, one primary-care source)."""
    return [
        DemoSite("oncology_north", "oncology", persons, seed),
        DemoSite("primary_care_south", "primary-care", persons * 2, seed + 1),
        DemoSite("oncology_east", "oncology", max(persons // 2, 100), seed + 2),
    ]


def _agent(*args: str) -> str:
    cmd = [sys.executable, "-m", "site_agent", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise DemoError(f"site-agent {args[0]} {args[1] if len(args) > 1 else ''} failed: {last}")
    return proc.stdout


def run_demo(out: Path, sites: list[DemoSite], definitions: list[Path], *, min_cell_count: int = 5,
             echo=print) -> dict[str, list[dict]]:
    out.mkdir(parents=True, exist_ok=True)
    for d in definitions:
        if not d.exists():
            raise DemoError(f"cohort definitions not found at {d} (run from the repository root or pass --definitions)")
    results: dict[str, list[dict]] = {}
    for site in sites:
        cdm = out / f"{site.name}.duckdb"
        t0 = time.perf_counter()
        _agent("cdm", "synth", "--out", str(cdm), "--persons", str(site.persons), "--site", site.name,
               "--profile", site.profile, "--seed", str(site.seed))
        t1 = time.perf_counter()
        counts = json.loads(_agent("cohorts", "--cdm", str(cdm), "--definitions", *map(str, definitions), "--json",
                                   "--min-cell-count", str(min_cell_count)))
        t2 = time.perf_counter()
        results[site.name] = counts
        echo(f"\n== {site.name} ({site.profile}, {site.persons} persons; generated in {t1 - t0:.1f}s, "
             f"cohorts built in {t2 - t1:.1f}s)")
        echo(format_counts(counts, min_cell_count))
    (out / "cohort_counts.json").write_text(json.dumps(results, indent=2))
    return results


def format_counts(counts: list[dict], min_cell_count: int) -> str:
    """Counts as the coordinator sees them: suppressed cells (null) shown as <min."""
    shown = lambda v: f"<{min_cell_count}" if v is None else str(v)  # noqa: E731
    lines = [f"{'id':>3}  {'cohort_name':<26} {'records':>9} {'subjects':>9}"]
    for c in counts:
        lines.append(f"{c['cohort_definition_id']:>3}  {c['cohort_name']:<26} {shown(c['number_records']):>9} "
                     f"{shown(c['number_subjects']):>9}")
    return "\n".join(lines)
