"""Information cost and time of the disclosure audit on synthetic oncology sites.

For each site size: run the diagnostics suite and the SCLC study unsuppressed (the truth), then
time the release control (primary suppression, secondary suppression by the audit, derived
estimates) and report the share of count cells withheld before and after secondary suppression,
the audit's time against the suite's, and how many small counts the independent attacker
(tests/attacker.py) narrows on plain cell suppression versus on the audited release.

    python benchmarks/bench_disclosure.py 1000 10000 100000 1000000 --cdm-dir /tmp/x --cache

``--cdm-dir``: keep the generated CDMs there (``s<n>.duckdb``) and reuse one that exists;
``--cache``: also keep the suite's unsuppressed tables and times there (``truth<n>.csv``,
``suite<n>.json``) and reuse them, so the release control can be re-measured alone. Times are
wall seconds and CPU seconds of this process (all threads: DuckDB's too).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(t: tuple[float, float]) -> tuple[float, float]:
    return time.perf_counter() - t[0], time.process_time() - t[1]


def one(n: int, root: Path, cache: bool = False, attacker_max: int = 20_000) -> None:
    from optima_common.results import SummarisedResult

    cdm_path = root / f"s{n}.duckdb"
    gen = (0.0, 0.0)
    if not cdm_path.exists():
        before = params.RATES["oncology"]
        params.RATES["oncology"] = dataclasses.replace(before, sclc_stage=(0.5, 0.4, 0.05, 0.05))  # stage I-II enriched
        t0 = _clock()
        generate_site(out=cdm_path, persons=n, site=f"bench_{n}", profile="oncology", seed=3)
        gen = _since(t0)
        params.RATES["oncology"] = before
    truth_csv, suite_json = root / f"truth{n}.csv", root / f"suite{n}.json"
    if cache and truth_csv.exists() and suite_json.exists():
        truth = SummarisedResult.from_csv(truth_csv)
        suite, suite_cpu = json.loads(suite_json.read_text())["suite"]
    else:
        study = load_study(REPO / "cohort_definitions" / "studies" / "sclc_stage_i_ii.json")
        study = study.model_copy(update={"spec": study.spec.model_copy(update={"min_cell_count": 1})})
        with connect_cdm(f"duckdb:///{cdm_path}", write_schema="results") as cdm:
            t0 = _clock()
            diag = run_diagnostics(cdm, collect_definitions([REPO / "cohort_definitions"]), out=None, min_cell_count=1,
                                   progress=lambda _m: None).result
            # the study's tables as a release at MIN shapes them (small sequences merged, risk tables from
            # rounded cumulative counts), before any suppression: the truth the audit works from
            st = study_tables(cdm, study, f"bench_{n}", MIN)[0]
            suite, suite_cpu = _since(t0)
        truth = bind(diag, st)
        if cache:
            truth.to_csv(truth_csv)
            suite_json.write_text(json.dumps({"suite": [suite, suite_cpu]}))
            truth = SummarisedResult.from_csv(truth_csv)  # the same text the cached runs read
    t0 = _clock()
    primary = suppress(protect_horizons(protect_time_tables(withhold_nested_cohorts(truth, MIN)[0], MIN), MIN), MIN)
    t_primary, c_primary = _since(t0)
    t0 = _clock()
    prot = protect(truth, primary, MIN)
    audit, audit_cpu = _since(t0)
    f = audit_frame(primary)
    cnt = f["is_count"].to_numpy()
    before = f["suppressed"].to_numpy()[cnt].mean()
    after = (prot.result.data["estimate_value"] == "-").to_numpy()[cnt].mean()
    if cache:  # the released table, for re-measuring the coordinator's re-check alone
        prot.result.to_csv(root / f"release{n}.csv")
    t0 = _clock()
    problems = check_release(prot.result, MIN)
    recheck, recheck_cpu = _since(t0)
    assert not problems, problems
    whole = suite_cpu + c_primary + audit_cpu
    line = (f"{n:>9,} persons | {len(truth.data):>7,} rows | generate {gen[0]:6.1f}s ({gen[1]:.0f} CPU s) | "
            f"suite {suite:7.1f}s ({suite_cpu:.1f} CPU s) | primary {t_primary:5.1f}s ({c_primary:.1f} CPU s) | "
            f"audit {audit:6.1f}s ({audit_cpu:.1f} CPU s; {audit_cpu / suite_cpu:5.1%} of the suite's CPU, "
            f"{audit_cpu / whole:5.1%} of suite+release control) | "
            f"coordinator re-check {recheck:5.1f}s ({recheck_cpu:.1f} CPU s) | "
            f"counts withheld {before:6.2%} -> {after:6.2%} | secondary {len(prot.secondary):,} | "
            f"LP components {prot.stats.get('lp_components', 0):,}, solves {prot.stats.get('lp_solves', 0):,}")
    if n <= attacker_max:
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
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sizes", nargs="*", type=int, default=[1000, 10000])
    ap.add_argument("--cdm-dir", help="keep (and reuse) the generated CDMs here")
    ap.add_argument("--cache", action="store_true", help="keep (and reuse) the suite's tables in --cdm-dir")
    ap.add_argument("--attacker-max", type=int, default=20_000, help="run the attacker up to this many persons")
    args = ap.parse_args(argv)
    if args.cache and not args.cdm_dir:
        ap.error("--cache needs --cdm-dir")
    if args.cdm_dir:
        Path(args.cdm_dir).mkdir(parents=True, exist_ok=True)
        for n in args.sizes:
            one(n, Path(args.cdm_dir), args.cache, args.attacker_max)
        return
    with tempfile.TemporaryDirectory(prefix="bench-disclosure-") as tmp:
        for n in args.sizes:
            one(n, Path(tmp), False, args.attacker_max)


if __name__ == "__main__":
    main(sys.argv[1:])
