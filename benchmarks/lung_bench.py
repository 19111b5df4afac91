"""The harness shared by the one-diagnostic benchmarks (``bench_characteristics.py``,
``bench_incidence.py``, ``bench_lsc.py``): connect, build the lung study's cohorts if they are
stale, optionally turn on auto_explain, time ``compute`` ``--repeat`` times (a fresh
``DiagnosticContext``, so a fresh memo, each time), write the last run's rows to ``--out`` and
print one JSON line: rows, per run the wall seconds, the agent's CPU seconds (DuckDB runs
in-process) and, with ``--pg-root`` (a cluster of ``benchmarks/pg_private.py``), the PostgreSQL
server's CPU seconds; the peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def run(doc: str, compute: Callable) -> None:
    """``compute(ctx, definitions) -> DataFrame`` of released (aggregate) rows."""
    ap = argparse.ArgumentParser(description=doc.strip().splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)
    ap.add_argument("--url", required=True, help="DuckDB file or PostgreSQL URL")
    ap.add_argument("--schema", help="CDM schema (PostgreSQL)")
    ap.add_argument("--write-schema", help="where the cohorts are built (default: the agent's)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--pg-root", help="private cluster folder, to read the server's CPU")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--explain-ms", type=int, default=-1, help="auto_explain statements slower than this (PostgreSQL)")
    args = ap.parse_args()
    from site_agent.cdm import connect_cdm
    from site_agent.cdm.fingerprint import cdm_fingerprint
    from site_agent.cohorts import build_cohorts, collect_definitions
    from site_agent.cohorts.build import ensure_results_tables
    from site_agent.cohorts.state import stale_cohorts
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
        if args.explain_ms >= 0 and cdm.dialect == "postgresql":
            cdm.execute_all([f"SET auto_explain.log_min_duration = {args.explain_ms}",
                             "SET auto_explain.log_analyze = on", "SET auto_explain.log_buffers = on",
                             "SET auto_explain.log_nested_statements = on"])
        runs = []
        for _ in range(args.repeat):
            ctx = DiagnosticContext(cdm=cdm, cdm_name="ref", cohorts=tuple(defs))  # a fresh memo each time
            t, c, s = time.perf_counter(), cpu(), server() if server else 0.0
            df = compute(ctx, defs)
            runs.append({"wall_s": round(time.perf_counter() - t, 2), "agent_cpu_s": round(cpu() - c, 2),
                         "server_cpu_s": round(server() - s, 2) if server else None})
    df.to_csv(args.out, index=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": len(df), "runs": runs, "peak_rss_mb": round(peak)}))
