"""Incidence and prevalence alone: their released rows for every lung cohort and the CPU they cost.

    python benchmarks/bench_incidence.py --url cdm.duckdb --out ip.csv
    python benchmarks/bench_incidence.py --url postgresql+psycopg2://… --schema cdm --out ip_pg.csv \\
        --pg-root DIR [--explain-ms 500]

Builds the lung study's cohorts if they are stale, then runs ``run_incidence`` and
``run_prevalence`` for each of them, as a diagnostics run does (the first call builds the
denominator TEMP tables and runs the set-based statements for all cohorts; the others read
their memo; ``--repeat`` reuses the connection, so its denominator too) and writes the
released rows of all cohorts, in order (incidence, then prevalence), to
``--out``: a reference to compare byte for byte before and after a rewrite, or across
backends (the file holds aggregates only). Prints the wall seconds, the agent's CPU seconds
(DuckDB runs in-process), the peak RSS and, with ``--pg-root`` (a cluster of
``benchmarks/pg_private.py``), the PostgreSQL server's CPU seconds. ``--explain-ms`` turns on
auto_explain (ANALYZE) for this session: the plans of slower statements go to the cluster's
log (TEMP-table statements included).
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
    ap.add_argument("--explain-ms", type=int, default=-1, help="auto_explain statements slower than this (PostgreSQL)")
    args = ap.parse_args()
    import pandas as pd

    from site_agent.cdm import connect_cdm
    from site_agent.cdm.fingerprint import cdm_fingerprint
    from site_agent.cohorts import build_cohorts, collect_definitions
    from site_agent.cohorts.build import ensure_results_tables
    from site_agent.cohorts.state import stale_cohorts
    from site_agent.diagnostics.base import DiagnosticContext
    from site_agent.diagnostics.incidence import run_incidence
    from site_agent.diagnostics.prevalence import run_prevalence

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
        if args.explain_ms >= 0 and cdm.dialect == "postgresql":
            cur = cdm.connection().connection.cursor()
            for s in (f"SET auto_explain.log_min_duration = {args.explain_ms}", "SET auto_explain.log_analyze = on",
                      "SET auto_explain.log_buffers = on", "SET auto_explain.log_nested_statements = on"):
                cur.execute(s)
            cur.close()
        runs = []
        for _ in range(args.repeat):
            ctx = DiagnosticContext(cdm=cdm, cdm_name="ref", cohorts=tuple(defs))  # a fresh memo each time
            t, c, s = time.perf_counter(), cpu(), server() if server else 0.0
            frames = [run_incidence(ctx, (d,)).data for d in defs] + [run_prevalence(ctx, (d,)).data for d in defs]
            runs.append({"wall_s": round(time.perf_counter() - t, 2), "agent_cpu_s": round(cpu() - c, 2),
                         "server_cpu_s": round(server() - s, 2) if server else None})
    df = pd.concat(frames, ignore_index=True)
    df.to_csv(args.out, index=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": len(df), "runs": runs, "peak_rss_mb": round(peak)}))


if __name__ == "__main__":
    main()
