"""Diagnostics suite at scale: wall time, peak RSS and the suite/scan ratio.

    python benchmarks/bench_diagnostics.py                     # 100k and 1M persons, DuckDB
    python benchmarks/bench_diagnostics.py --sizes 100000,1000000,3000000 --with-10m
    python benchmarks/bench_diagnostics.py --sizes 1000000 --pg postgresql+psycopg2://…
    python benchmarks/bench_diagnostics.py --sizes 1000000 --pg private   # a throw-away local cluster
    python benchmarks/bench_diagnostics.py --cdm cdm_1m.duckdb --pg private  # an existing CDM (copied first)
    python benchmarks/pg_private.py start /tmp/pg-1m && site-agent cdm copy …   # a cluster kept across runs
    python benchmarks/bench_diagnostics.py --cdm cdm_1m.duckdb --pg-root /tmp/pg-1m --pg-schema cdm --concurrent

For each size it generates an oncology site (timed separately), then times one full scan
of the clinical event tables (count, person_id sum, max date and concept sum of every row
of condition_occurrence, drug_exposure, procedure_occurrence, measurement,
visit_occurrence, observation) and the full diagnostics suite on the lung study's cohorts
(cohort building included), from scratch, then a second run with nothing changed.
Peak RSS is measured for the suite in a child process (the agent; PostgreSQL's own
processes are not counted). ``--pg private`` starts a PostgreSQL cluster under a temp dir
(benchmarks/pg_private.py) and copies each CDM into it with ``cdm copy``'s code; the
``ratio`` column is the PostgreSQL suite time over the DuckDB one, measured in the same run.
``--cdm`` runs on a CDM generated before (``site-agent cdm synth``) instead of generating one:
it is copied into the work folder first, so its own file stays without cohorts or cache and
every run starts from scratch. ``--pg-root DIR --pg-schema S`` runs on a cluster kept under
DIR (``benchmarks/pg_private.py start``) whose schema S already holds the same CDM: no copy;
the suites write into a new write schema each time (dropped first), so they still start from
scratch. ``--postgres-only`` (with ``--pg-root``/``--pg-schema``, no ``--cdm``) runs only the
PostgreSQL suite, for a CDM too large to keep beside its DuckDB file on one disk (10M persons:
~59 GB in PostgreSQL): run the DuckDB suite first with ``--cdm``, then this; the ratio is
then the quotient of the two runs' figures, taken on the same machine. ``--concurrent`` runs the DuckDB and the PostgreSQL suites at the same time (wall
times then inflate each other; the CPU seconds and the ratio do not). Besides wall seconds it prints CPU seconds (the agent's, and
the PostgreSQL server's from /proc), the load-independent figure on a shared machine.
``OPTIMA_DUCKDB_MEMORY_LIMIT`` etc. apply as at a site. A 10M-person site needs about
4 GB of disk (checked before generating).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCAN = {
    "condition_occurrence": ("condition_start_date", "condition_concept_id"),
    "drug_exposure": ("drug_exposure_start_date", "drug_concept_id"),
    "procedure_occurrence": ("procedure_date", "procedure_concept_id"),
    "measurement": ("measurement_date", "measurement_concept_id"),
    "visit_occurrence": ("visit_start_date", "visit_concept_id"),
    "observation": ("observation_date", "observation_concept_id"),
}
BYTES_PER_PERSON = 400  # measured: ~364 MB per 1M oncology persons


def child(args: list[str]) -> dict:
    """Run one measured step in a fresh process; it prints a JSON line last."""
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"step {args[0]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def step_scan(url: str, schema: str | None) -> dict:
    from site_agent.cdm import connect_cdm

    with connect_cdm(url, cdm_schema=schema) as cdm:
        t = time.perf_counter()
        for table, (date, concept) in SCAN.items():
            cdm.query_df(f"SELECT count(*), sum(person_id), max({date}), sum({concept}) FROM {cdm.cdm_schema}.{table}")
        return {"seconds": time.perf_counter() - t}


def step_suite(url: str, schema: str | None, out: str, write_schema: str | None = None) -> dict:
    from site_agent.cdm import connect_cdm
    from site_agent.cohorts import collect_definitions
    from site_agent.diagnostics.runner import run_diagnostics

    defs = collect_definitions([REPO / "cohort_definitions" / "lung"])
    with connect_cdm(url, cdm_schema=schema, write_schema=write_schema) as cdm:
        t = time.perf_counter()
        s = run_diagnostics(cdm, defs, out=Path(out), progress=lambda m: print(m, file=sys.stderr))
        secs = time.perf_counter() - t
    use = resource.getrusage(resource.RUSAGE_SELF)
    return {"seconds": secs, "computed": s.computed, "reused": s.reused, "peak_rss_mb": use.ru_maxrss / 1024,
            "rows": len(s.result), "cpu_s": use.ru_utime + use.ru_stime}


def step_generate(out: str, persons: int) -> dict:
    from site_agent.cdm.synth import generate_site

    t = time.perf_counter()
    generate_site(out=out, persons=persons, site="bench", profile="oncology", seed=1)
    return {"seconds": time.perf_counter() - t,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("scan", "suite", "generate"):
        step, rest = sys.argv[1], sys.argv[2:]
        schema = None if len(rest) < 2 or rest[1] == "-" else rest[1]
        res = {"scan": lambda: step_scan(rest[0], schema),
               "suite": lambda: step_suite(rest[0], schema, rest[2], rest[3] if len(rest) > 3 else None),
               "generate": lambda: step_generate(rest[0], int(rest[1]))}[step]()
        print(json.dumps(res))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--with-10m", action="store_true", help="also run 10,000,000 persons (~4 GB disk)")
    ap.add_argument("--pg", help="also run each size on this PostgreSQL URL (schema bench_cdm, replaced), "
                    "or 'private' for a throw-away local cluster")
    ap.add_argument("--workdir", help="where to put the CDM files (default: a temp dir)")
    ap.add_argument("--cdm", help="an existing DuckDB CDM to run on instead of generating (--sizes ignored)")
    ap.add_argument("--pg-root", help="a running cluster of benchmarks/pg_private.py (with --pg-schema: no copy)")
    ap.add_argument("--pg-schema", help="the schema of --pg-root that already holds the CDM of --cdm")
    ap.add_argument("--concurrent", action="store_true", help="run the DuckDB and PostgreSQL suites at the same time")
    ap.add_argument("--postgres-only", action="store_true",
                    help="with --pg-root/--pg-schema: only the PostgreSQL suite (no --cdm, no DuckDB copy); for a "
                         "CDM too large to keep beside its DuckDB file, whose DuckDB suite ran before on this machine")
    args = ap.parse_args()
    if bool(args.pg_root) != bool(args.pg_schema) or (args.pg_root and (args.pg or not (args.cdm or args.postgres_only))):
        raise SystemExit("--pg-root needs --pg-schema and --cdm (or --postgres-only), and no --pg")
    if args.postgres_only and not args.pg_root:
        raise SystemExit("--postgres-only needs --pg-root and --pg-schema")
    sizes = [int(s) for s in args.sizes.split(",")] + ([10_000_000] if args.with_10m else [])
    if args.postgres_only:
        sizes = []  # counted in the kept schema once the cluster is found
    elif args.cdm:
        if not Path(args.cdm).is_file():
            raise SystemExit(f"--cdm: no DuckDB file at {args.cdm}")
        import duckdb

        with duckdb.connect(args.cdm, read_only=True) as con:
            sizes = [int(con.execute("SELECT count(*) FROM person").fetchone()[0])]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="optima-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if args.pg == "private":
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from pg_private import private_cluster

            cluster = stack.enter_context(private_cluster())
            args.pg, args.server_cpu = cluster.url, cluster.server_cpu_seconds
        elif args.pg_root:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from pg_private import running_cluster

            cluster = running_cluster(Path(args.pg_root))
            args.pg, args.server_cpu = cluster.url, cluster.server_cpu_seconds
            if args.postgres_only:
                from site_agent.cdm import connect_cdm

                with connect_cdm(args.pg, cdm_schema=args.pg_schema) as cdm:
                    sizes = [int(cdm.query_df(f"SELECT count(*) AS n FROM {cdm.cdm_schema}.person")["n"][0])]
        run_sizes(args, sizes, work)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


def run_sizes(args, sizes: list[int], work: Path) -> None:
    server_cpu = getattr(args, "server_cpu", None)
    print(f"{'persons':>10} {'backend':>8} {'generate_s':>10} {'copy_s':>7} {'scan_s':>7} {'suite_s':>8} "
          f"{'rerun_s':>7} {'suite/scan':>10} {'pg/duck':>7} {'suite_rss_mb':>12} {'rows':>7} {'load_1m':>7} "
          f"{'agent_cpu_s':>11} {'pg_cpu_s':>8} {'cpu_ratio':>9} {'rerun_cpu_s':>11} {'rerun_pg_cpu_s':>14} "
          f"{'rerun_rss_mb':>12} {'copy_pg_cpu_s':>13}", flush=True)
    for n in sizes:
        need = 0 if args.postgres_only else n * BYTES_PER_PERSON * 1.5
        free = shutil.disk_usage(work).free
        if free < need:
            print(f"{n:>10} skipped: needs ~{need / 1e9:.1f} GB free in {work}, {free / 1e9:.1f} GB available")
            continue
        path = work / f"bench_{n}.duckdb"
        if args.postgres_only:
            gen = {"seconds": 0.0}
        elif args.cdm:
            shutil.copyfile(args.cdm, path)
            gen = {"seconds": 0.0}
        else:
            gen = child(["generate", str(path), str(n)])
        targets = [] if args.postgres_only else [("duckdb", str(path), "-", 0.0)]
        copy_pg_cpu = 0.0
        write_schema = None
        if args.pg and args.pg_schema:  # a kept cluster that holds the CDM: a fresh write schema, no copy
            write_schema = f"bench_w{int(time.time())}"
            targets.append(("postgres", args.pg, args.pg_schema, 0.0))
        elif args.pg:
            from site_agent.cdm.transfer import copy_duckdb_to_postgres

            t = time.perf_counter()
            pg0 = server_cpu() if server_cpu else None
            copy_duckdb_to_postgres(path, args.pg, "bench_cdm")
            copy_pg_cpu = server_cpu() - pg0 if pg0 is not None else 0.0
            targets.append(("postgres", args.pg, "bench_cdm", time.perf_counter() - t))
        measured: dict[str, tuple] = {}

        def measure(backend: str, url: str, schema: str) -> None:
            ws = [write_schema] if backend == "postgres" and write_schema else []
            scan = child(["scan", url, schema])
            pg0 = server_cpu() if server_cpu and backend == "postgres" else None
            suite = child(["suite", url, schema, str(work / f"res_{n}_{backend}.csv"), *ws])
            pg_cpu = server_cpu() - pg0 if pg0 is not None else 0.0
            pg1 = server_cpu() if server_cpu and backend == "postgres" else None
            rerun = child(["suite", url, schema, str(work / f"res_{n}_{backend}_2.csv"), *ws])
            rerun_pg_cpu = server_cpu() - pg1 if pg1 is not None else 0.0
            measured[backend] = (scan, suite, pg_cpu, rerun, rerun_pg_cpu, pg0 is not None)
            print(json.dumps({"backend": backend, "suite": suite, "server_cpu_s": pg_cpu, "rerun": rerun,
                              "rerun_server_cpu_s": rerun_pg_cpu}), file=sys.stderr, flush=True)  # as each ends

        if args.concurrent:
            threads = [threading.Thread(target=measure, args=(b, u, sc)) for b, u, sc, _ in targets]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
        else:
            for backend, url, schema, _ in targets:
                measure(backend, url, schema)
        duck_s = duck_cpu = None
        for backend, url, schema, copy_s in targets:
            if backend not in measured:
                raise SystemExit(f"the {backend} suite failed (see above)")
            scan, suite, pg_cpu, rerun, rerun_pg_cpu, have_pg_cpu = measured[backend]
            cpu = suite["cpu_s"] + pg_cpu  # all CPU the suite cost: the agent (DuckDB in-process) and the server
            if backend == "duckdb":
                duck_s, duck_cpu = suite["seconds"], cpu
            ratio = f"{suite['seconds'] / duck_s:>7.2f}" if backend != "duckdb" and duck_s else f"{'':>7}"
            cpu_ratio = f"{cpu / duck_cpu:>9.2f}" if backend != "duckdb" and duck_cpu and have_pg_cpu else f"{'':>9}"
            print(f"{n:>10} {backend:>8} {gen['seconds']:>10.1f} {copy_s:>7.1f} {scan['seconds']:>7.2f} "
                  f"{suite['seconds']:>8.1f} {rerun['seconds']:>7.1f} {suite['seconds'] / scan['seconds']:>10.1f} "
                  f"{ratio} {suite['peak_rss_mb']:>12.0f} {suite['rows']:>7} {os.getloadavg()[0]:>7.2f} "
                  f"{suite['cpu_s']:>11.1f} {pg_cpu:>8.1f} {cpu_ratio} {rerun['cpu_s']:>11.1f} {rerun_pg_cpu:>14.1f} "
                  f"{rerun['peak_rss_mb']:>12.0f} {copy_pg_cpu if backend == 'postgres' else 0.0:>13.1f}", flush=True)
        if write_schema:
            print(f"{n:>10} PostgreSQL write schema of this run: {write_schema}", flush=True)
        if args.pg and not args.postgres_only:
            same = _same_result(work / f"res_{n}_duckdb.csv", work / f"res_{n}_postgres.csv")
            print(f"{n:>10} DuckDB and PostgreSQL results identical: {same}", flush=True)
        path.unlink(missing_ok=True)


def _same_result(a: Path, b: Path) -> bool:
    """The two released CSVs hold the same rows (order aside), but the snapshot's source_type (the DBMS)."""
    import pandas as pd

    x, y = (pd.read_csv(p, dtype=str, keep_default_na=False) for p in (a, b))
    x, y = (f[f["estimate_name"] != "source_type"] for f in (x, y))
    cols = sorted(x.columns)
    return x.shape == y.shape and x[cols].sort_values(cols).reset_index(drop=True).equals(
        y[cols].sort_values(cols).reset_index(drop=True))


if __name__ == "__main__":
    main()
