"""Cohort engine throughput: build the network's 12 cohorts on a synthetic site.

    python benchmarks/bench_cohorts.py --persons 200000 [--profile oncology] [--pg URL]

Prints generation time, per-cohort build time, total, rows/s and peak RSS; with --pg it
copies the site into PostgreSQL and times the same build there.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from site_agent.cdm import connect_cdm
from site_agent.cdm.synth import generate_site
from site_agent.cohorts import build_cohorts, cohort_attrition, collect_definitions

REPO = Path(__file__).resolve().parents[1]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed_build(url: str, cdm_schema: str | None, defs) -> None:
    with connect_cdm(url, cdm_schema=cdm_schema) as cdm:
        total = 0.0
        for d in defs:
            t = time.perf_counter()
            (c,) = build_cohorts(cdm, [d])
            dt = time.perf_counter() - t
            total += dt
            print(f"  {d.cohort_definition_id:>2} {d.cohort_name:<26} {dt:7.2f}s  records {c.number_records:>8}"
                  f"  subjects {c.number_subjects:>8}")
        print(f"  all cohorts: {total:.1f}s")
        stage = next(d for d in defs if d.cohort_name == "sclc_stage_i_ii")
        for s in cohort_attrition(cdm, stage):
            print(f"    attrition {s.reason_id}. {s.reason:<48} subjects {s.number_subjects}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--persons", type=int, default=200_000)
    ap.add_argument("--profile", default="oncology")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--pg", help="PostgreSQL URL to also benchmark on")
    args = ap.parse_args()
    defs = collect_definitions([REPO / "cohort_definitions"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "site.duckdb"
        t = time.perf_counter()
        res = generate_site(out=path, persons=args.persons, site="site_a", profile=args.profile, seed=args.seed)
        print(f"generated {args.persons} persons ({args.profile}) in {time.perf_counter() - t:.1f}s")
        print("DuckDB:")
        timed_build(str(path), None, defs)
        print("ground truth (generator):")
        for name, tr in res.truth.items():
            print(f"  {name:<26} records {tr['records']:>8}  subjects {tr['subjects']:>8}")
        if args.pg:
            from site_agent.cdm.transfer import copy_duckdb_to_postgres

            t = time.perf_counter()
            copy_duckdb_to_postgres(path, args.pg, "bench_cdm")
            print(f"PostgreSQL (copy {time.perf_counter() - t:.1f}s):")
            timed_build(args.pg, "bench_cdm", defs)
    print(f"peak RSS {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
