"""Information cost and time of the disclosure audit on synthetic oncology sites.

For each site size: run the diagnostics suite and the SCLC study unsuppressed (the truth), then
time the release control (primary suppression, secondary suppression by the audit, derived
estimates) and report the share of count cells withheld before and after secondary suppression,
the audit's time against the suite's, and how many small counts the independent attacker
(tests/attacker.py) narrows on plain cell suppression versus on the audited release.

    python benchmarks/bench_disclosure.py 1000 10000 100000
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from optima_common.disclosure import check_release, protect
from optima_common.disclosure.frame import audit_frame
from optima_common.results import bind
from site_agent.analyses.study_run import study_tables
from site_agent.cdm import connect_cdm
from site_agent.cdm.synth import generate_site, params
from site_agent.cohorts import collect_definitions
from site_agent.diagnostics.runner import run_diagnostics
from site_agent.disclosure import (
    blank_linked,
    protect_horizons,
    protect_time_tables,
    withhold_nested_cohorts,
)
from site_agent.study_spec import load_study
from site_agent.suppression import suppress

MIN = 5


def one(n: int, root: Path) -> None:
    before = params.RATES["oncology"]
    params.RATES["oncology"] = dataclasses.replace(before, sclc_stage=(0.5, 0.4, 0.05, 0.05))  # stage I-II enriched
    t0 = time.perf_counter()
    res = generate_site(out=root / f"s{n}.duckdb", persons=n, site=f"bench_{n}", profile="oncology", seed=3)
    gen = time.perf_counter() - t0
    params.RATES["oncology"] = before
    study = load_study(REPO / "cohort_definitions" / "studies" / "sclc_stage_i_ii.json")
    study = study.model_copy(update={"spec": study.spec.model_copy(update={"min_cell_count": 1})})
    with connect_cdm(f"duckdb:///{res.out}", write_schema="results") as cdm:
        t0 = time.perf_counter()
        diag = run_diagnostics(cdm, collect_definitions([REPO / "cohort_definitions"]), out=None, min_cell_count=1,
                               progress=lambda _m: None).result
        # the study's tables as a release at MIN shapes them (small sequences merged, risk tables from
        # rounded cumulative counts), before any suppression: the truth the audit works from
        st = study_tables(cdm, study, f"bench_{n}", MIN)[0]
        suite = time.perf_counter() - t0
    truth = bind(diag, st)
    t0 = time.perf_counter()
    primary = suppress(protect_horizons(protect_time_tables(withhold_nested_cohorts(truth, MIN)[0], MIN), MIN), MIN)
    t_primary = time.perf_counter() - t0
    prot = protect(truth, primary, MIN)
    audit = prot.seconds
    f = audit_frame(primary)
    cnt = f["is_count"].to_numpy()
    before = f["suppressed"].to_numpy()[cnt].mean()
    after = (prot.result.data["estimate_value"] == "-").to_numpy()[cnt].mean()
    t0 = time.perf_counter()
    problems = check_release(prot.result, MIN)
    recheck = time.perf_counter() - t0
    assert not problems, problems
    line = (f"{n:>9,} persons | {len(truth.data):>7,} rows | generate {gen:6.1f}s | suite {suite:7.1f}s | "
            f"primary {t_primary:5.1f}s | audit {audit:6.1f}s ({audit / suite:5.0%} of suite) | "
            f"coordinator re-check {recheck:5.1f}s | "
            f"counts withheld {before:6.2%} -> {after:6.2%} | secondary {len(prot.secondary):,} | "
            f"LP components {prot.stats.get('lp_components', 0):,}, solves {prot.stats.get('lp_solves', 0):,}")
    if n <= 20_000:
        import importlib.util  # by path: a foreign "benchmarks" package in site-packages would shadow ours

        spec = importlib.util.spec_from_file_location("bench_attacker", REPO / "benchmarks" / "attacker.py")
        attacker = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(attacker)
        narrowed = attacker.narrowed

        old = blank_linked(suppress(withhold_nested_cohorts(truth, MIN)[0], MIN))
        line += f" | attacker narrows: plain {len(narrowed(old, truth, MIN))}, audited " \
                f"{len(narrowed(prot.result, truth, MIN))}"
    print(line, flush=True)


def main(argv: list[str]) -> None:
    sizes = [int(a) for a in argv] or [1000, 10000]
    with tempfile.TemporaryDirectory(prefix="bench-disclosure-") as tmp:
        for n in sizes:
            one(n, Path(tmp))


if __name__ == "__main__":
    main(sys.argv[1:])
