"""The slow diagnostics families on PostgreSQL, on a CDM holding only the tables they read.

    python benchmarks/bench_synth.py --persons 10000000 --seed 1 --keep cdm_10m.duckdb
    python benchmarks/bench_pg_families.py subset --cdm cdm_10m.duckdb --out sub_10m.duckdb
    python benchmarks/pg_private.py start /tmp/pg-sub --wal-minimal      # for loading; restart it without
    python benchmarks/bench_pg_families.py load --subset sub_10m.duckdb --pg-root /tmp/pg-sub --pg-schema cdm
    python benchmarks/bench_pg_families.py run --pg-root /tmp/pg-sub --pg-schema cdm char+lsc pop
    python benchmarks/bench_pg_families.py run … --explain-ms 4000 char     # plans over 4 s into the server log
    python benchmarks/bench_pg_families.py subset … --tables person,observation_period,cdm_source   # pop only

A whole 10M-person CDM takes 44 minutes to copy into PostgreSQL and 58 GB of disk. The statements
that grew most from 1M to 10M (docs/performance.md, sessions 14 and 16) read only ``person``,
``observation_period``, ``visit_occurrence``, ``measurement`` and ``concept``, and the cohort
table. ``subset`` builds the lung cohorts on the DuckDB CDM (in a scratch write schema, dropped
afterwards) and writes those tables and the cohort rows into a new DuckDB file; ``load`` copies
it into a private cluster with ``cdm copy``'s code (keys, indexes, ``ANALYZE``) and the cohort
rows into ``<write-schema>.cohort``; ``run`` runs families of the suite there, unit by unit as the
runner does, one connection per group (``char+lsc pop``: the suite's two connections), and
prints each family's wall seconds, the server's CPU seconds and the statements with the most time
(``pg_stat_statements``). Families: ``char`` (characteristics), ``lsc`` (large-scale
characteristics: only ``measurement`` of its event tables is in the subset), ``pop`` (incidence
and prevalence). ``--explain-ms`` logs the ``EXPLAIN (ANALYZE, BUFFERS)`` plan of every statement
slower than that to the cluster's log (``auto_explain``; it times every plan node, which slows
nested loops most: compare timings without it). ``OPTIMA_PG_WORK_MEM`` etc. apply as at a site.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_diagnostics import REPO  # noqa: E402
from pg_private import running_cluster, statements  # noqa: E402

SUBSET_TABLES = ("person", "observation_period", "visit_occurrence", "measurement", "concept", "cdm_source")
SCRATCH = "bench_families"
COHORT_COLUMNS = "cohort_definition_id, subject_id, cohort_start_date, cohort_end_date"


def definitions():
    from site_agent.cohorts import collect_definitions

    return collect_definitions([REPO / "cohort_definitions" / "lung"])


def subset(args) -> None:
    import duckdb

    from site_agent.cdm import connect_cdm
    from site_agent.cohorts import build_cohorts
    from site_agent.cohorts.build import ensure_results_tables

    tables = args.tables.split(",")
    bad = [t for t in tables if not t.isidentifier()]
    if bad:
        raise SystemExit(f"not table names: {bad}: give --tables as a comma-separated list, e.g. person,observation_period")
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"{out} exists: choose another --out or remove it")
    t = time.perf_counter()
    with connect_cdm(args.cdm, write_schema=SCRATCH) as cdm:
        ensure_results_tables(cdm)
        build_cohorts(cdm, definitions())
    print(f"lung cohorts on DuckDB: {time.perf_counter() - t:.1f} s", flush=True)
    t = time.perf_counter()
    con = duckdb.connect(str(out))
    try:
        con.execute(f"ATTACH '{Path(args.cdm).resolve()}' AS src")
        for table in tables:
            con.execute(f"CREATE TABLE {table} AS SELECT * FROM src.main.{table}")
            print(f"  {table}: {con.execute(f'SELECT COUNT(*) FROM {table}').fetchone()[0]:,} rows", flush=True)
        con.execute(f"CREATE TABLE cohort_rows AS SELECT {COHORT_COLUMNS} FROM src.{SCRATCH}.cohort")
        print(f"  cohort rows: {con.execute('SELECT COUNT(*) FROM cohort_rows').fetchone()[0]:,}")
        con.execute(f"DROP SCHEMA src.{SCRATCH} CASCADE")  # the source CDM as it was
    finally:
        con.close()
    print(f"subset written to {out}: {time.perf_counter() - t:.1f} s")


def load(args) -> None:
    import duckdb
    import psycopg2

    from site_agent.cdm import connect_cdm
    from site_agent.cdm.transfer import (
        BATCH_ROWS,
        CsvStream,
        _pg_dsn,
        copy_duckdb_to_postgres,
    )
    from site_agent.cohorts.build import ensure_results_tables

    cluster = running_cluster(Path(args.pg_root))
    t = time.perf_counter()
    report = copy_duckdb_to_postgres(args.subset, cluster.url, args.pg_schema)
    print(f"cdm copy: {time.perf_counter() - t:.1f} s ({', '.join(f'{k} {v:.0f} s' for k, v in report.seconds.items())})",
          flush=True)
    with connect_cdm(cluster.url, cdm_schema=args.pg_schema, write_schema=args.write_schema) as cdm:
        ensure_results_tables(cdm)
    duck = duckdb.connect(args.subset, read_only=True)
    pg = psycopg2.connect(**_pg_dsn(cluster.url))
    try:
        with pg, pg.cursor() as cur:
            cur.execute(f"TRUNCATE {args.write_schema}.cohort")
            rows = duck.execute(f"SELECT {COHORT_COLUMNS} FROM cohort_rows").to_arrow_reader(BATCH_ROWS)
            cur.copy_expert(f"COPY {args.write_schema}.cohort ({COHORT_COLUMNS}) FROM STDIN WITH (FORMAT csv)",
                            CsvStream(rows))
            cur.execute(f"ANALYZE {args.write_schema}.cohort")
            cur.execute(f"SELECT COUNT(*) FROM {args.write_schema}.cohort")
            print(f"cohort rows: {cur.fetchone()[0]:,}; in all {time.perf_counter() - t:.1f} s")
    finally:
        duck.close()
        pg.close()


def run(args) -> None:
    from site_agent.cdm import connect_cdm
    from site_agent.diagnostics import characteristics, large_scale, population
    from site_agent.diagnostics.base import DiagnosticContext
    from site_agent.diagnostics.runner import units_of

    families = {"char": characteristics.DIAGNOSTICS, "lsc": large_scale.DIAGNOSTICS, "pop": population.DIAGNOSTICS}
    groups = [g.split("+") for g in args.groups]
    unknown = {f for g in groups for f in g} - set(families)
    if unknown:
        raise SystemExit(f"unknown families {sorted(unknown)}: use {', '.join(families)} (e.g. char+lsc pop)")
    cluster = running_cluster(Path(args.pg_root))
    defs = definitions()
    failures: list[BaseException] = []

    def worker(names: list[str]) -> None:
        try:
            with connect_cdm(cluster.url, cdm_schema=args.pg_schema, write_schema=args.write_schema) as cdm:
                if args.explain_ms >= 0:  # auto_explain is preloaded by pg_private.py
                    cdm.execute_all([f"SET auto_explain.log_min_duration = {int(args.explain_ms)}",
                                     "SET auto_explain.log_analyze = on", "SET auto_explain.log_buffers = on"])
                ctx = DiagnosticContext(cdm=cdm, cdm_name="bench", cohorts=tuple(defs))
                for name in names:
                    for diag in families[name]:
                        t = time.perf_counter()
                        for unit in units_of(diag, defs):
                            diag.run(ctx, unit)
                        print(f"{diag.name}: {time.perf_counter() - t:.1f} s", flush=True)
        except BaseException as exc:  # reported after the other groups finish
            failures.append(exc)

    statements(cluster.url, reset=True)
    cpu0 = cluster.server_cpu_seconds()
    t = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(g,)) for g in groups]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if failures:
        raise failures[0]
    print(f"wall {time.perf_counter() - t:.1f} s, server CPU {cluster.server_cpu_seconds() - cpu0:.1f} s "
          f"({len(groups)} connection(s), {' | '.join('+'.join(g) for g in groups)})")
    print(f"{'server_s':>9} {'calls':>5}  statement")
    for seconds, calls, query in statements(cluster.url, top=args.top):
        print(f"{seconds:>9.1f} {calls:>5}  {query[:110]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="step", required=True)
    s = sub.add_parser("subset", help="cohorts on the DuckDB CDM, then the tables they need into a new file")
    s.add_argument("--cdm", required=True, help="a DuckDB CDM (bench_synth.py --keep)")
    s.add_argument("--out", required=True, help="the subset file to write (must not exist)")
    s.add_argument("--tables", default=",".join(SUBSET_TABLES),
                   help=f"CDM tables to copy (default {','.join(SUBSET_TABLES)}; the population family "
                        "needs only person,observation_period,cdm_source)")
    s = sub.add_parser("load", help="copy the subset into a private cluster")
    s.add_argument("--subset", required=True)
    for p in (s, sub.add_parser("run", help="run families of the suite, one connection per group")):
        p.add_argument("--pg-root", required=True, help="a running cluster of benchmarks/pg_private.py")
        p.add_argument("--pg-schema", required=True, help="the schema holding (or to hold) the subset CDM")
        p.add_argument("--write-schema", default="results", help="where the cohort rows are (default results)")
    r = sub.choices["run"]
    r.add_argument("groups", nargs="+", help="families per connection, e.g. char+lsc pop")
    r.add_argument("--explain-ms", type=int, default=-1, help="log plans of statements slower than this (ms)")
    r.add_argument("--top", type=int, default=12, help="statements to list")
    args = ap.parse_args()
    {"subset": subset, "load": load, "run": run}[args.step](args)


if __name__ == "__main__":
    main()
