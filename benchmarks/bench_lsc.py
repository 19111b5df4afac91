"""Large-scale characteristics alone: its rows for every lung cohort and the CPU it costs.

    python benchmarks/bench_lsc.py --url cdm.duckdb --out lsc.csv
    python benchmarks/bench_lsc.py --url postgresql+psycopg2://… --schema cdm --out lsc_pg.csv --pg-root DIR

Builds the lung study's cohorts if they are stale, then runs the set-based large-scale
characteristics query of ``site_agent.diagnostics.large_scale`` for all of them (what one
diagnostics run does once) and writes its rows, sorted, to ``--out`` (a reference to compare
before and after a rewrite, or across backends: the file holds aggregates only). Prints the
wall seconds, the agent's CPU seconds (DuckDB runs in-process) and, with ``--pg-root`` (a
cluster of ``benchmarks/pg_private.py``), the PostgreSQL server's CPU seconds of the query.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True, help="DuckDB file or PostgreSQL URL")
    ap.add_argument("--schema", help="CDM schema (PostgreSQL)")
    ap.add_argument("--write-schema", help="where the cohorts are built (default: the agent's)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--pg-root", help="private cluster folder, to read the server's CPU")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    from site_agent.cdm import connect_cdm
    from site_agent.cdm.fingerprint import cdm_fingerprint
    from site_agent.cohorts import build_cohorts, collect_definitions
    from site_agent.cohorts.build import ensure_results_tables
    from site_agent.cohorts.state import stale_cohorts
    from site_agent.diagnostics import large_scale
    from site_agent.diagnostics.base import DiagnosticContext

    server = None
    if args.pg_root:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from pg_private import running_cluster

        server = running_cluster(Path(args.pg_root)).server_cpu_seconds
    defs = collect_definitions([REPO / "cohort_definitions" / "lung"])
    with connect_cdm(args.url, cdm_schema=args.schema, write_schema=args.write_schema) as cdm:
        ensure_results_tables(cdm)
        stale = stale_cohorts(cdm, defs, cdm_fingerprint(cdm))
        if stale:
            build_cohorts(cdm, stale)
        ctx = DiagnosticContext(cdm=cdm, cdm_name="ref", cohorts=tuple(defs))
        ids = tuple(sorted(d.cohort_definition_id for d in defs))
        runs = []
        for _ in range(args.repeat):
            t, c, s = time.perf_counter(), cpu(), server() if server else 0.0
            df = large_scale.lsc_frame(ctx, ids)
            runs.append({"wall_s": round(time.perf_counter() - t, 2), "agent_cpu_s": round(cpu() - c, 2),
                         "server_cpu_s": round(server() - s, 2) if server else None})
    df = df.astype({"cid": int, "concept_id": int, "n": int, "denominator": int})
    df = df.sort_values(["cid", "table_name", "window_name", "concept_id"]).reset_index(drop=True)
    df.to_csv(args.out, index=False)
    print(json.dumps({"rows": len(df), "runs": runs}))


if __name__ == "__main__":
    main()
