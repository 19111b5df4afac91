"""What one core of PostgreSQL costs against one core of DuckDB on the suite's building blocks.

    python benchmarks/bench_engine_floor.py --cdm cdm_1m.duckdb --pg-root /tmp/pg-1m --pg-schema cdm
    python benchmarks/bench_engine_floor.py --cdm cdm_1m.duckdb --pg postgresql+psycopg2://… --pg-schema cdm

The diagnostics suite is built from a few kinds of work over the event tables: a scan with a
filter, aggregates keyed by concept or by person, a hash join of the events to the cohorts'
subjects followed by a ``DISTINCT`` (large-scale characteristics, code use), and a sort with a
window function per person (characteristics, cohort eras). This script times each of those
on the same CDM in both databases, through the agent's own connections (``connect_cdm``: its
session settings, DuckDB's memory limit), one core each (DuckDB ``threads = 1``, PostgreSQL
``max_parallel_workers_per_gather = 0``), then with the session's own setting (DuckDB: one
thread per core; PostgreSQL: the server's parallel workers). It prints the best of ``--repeat``
wall times, the CPU seconds (DuckDB: this process; PostgreSQL: the whole private cluster's,
parallel workers included, with ``--pg-root`` only: a server elsewhere shows ``-``) and the
PostgreSQL/DuckDB ratios.

It answers a question the suite's own timings cannot: how much of the PostgreSQL/DuckDB
ratio is the engines' cost for the same work, which no rewrite of the suite's SQL changes.
The CDM must be the same in both (``site-agent cdm copy`` of the DuckDB file); the DuckDB
file is copied first and opened from the copy. The cohorts' subjects are stood in for by
every 7th person (about 14% of persons; the lung suite's cohorts hold 137k of 1M).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from optima_common.errors import OptimaError  # noqa: E402

#: name -> (what it stands for, SQL with {s} for the CDM schema); every query returns one row
PRIMITIVES: dict[str, tuple[str, str]] = {
    "scan": ("one pass over measurement (count, sum of a column)",
             "SELECT count(*), sum(measurement_concept_id) FROM {s}.measurement"),
    "scan_filter": ("a date filter over measurement",
                    "SELECT count(*) FROM {s}.measurement WHERE measurement_date >= DATE '2015-01-01'"),
    "group_concept": ("counts per concept (code use, orphan codes)",
                      "SELECT count(*), sum(n) FROM (SELECT measurement_concept_id, count(*) AS n "
                      "FROM {s}.measurement GROUP BY measurement_concept_id) g"),
    "group_person": ("an aggregate per person (envelopes, denominators)",
                     "SELECT count(*), sum(n) FROM (SELECT person_id, count(*) AS n "
                     "FROM {s}.condition_occurrence GROUP BY person_id) g"),
    "join_subjects": ("events of the cohorts' subjects (a join to 14% of persons; "
                      "PostgreSQL reads its person_id index only)",
                      "SELECT count(*) FROM {s}.measurement m JOIN floor_subjects f ON f.person_id = m.person_id"),
    "join_distinct": ("distinct (concept, subject) of those events (large-scale characteristics)",
                      "SELECT count(*) FROM (SELECT DISTINCT m.measurement_concept_id, m.person_id "
                      "FROM {s}.measurement m JOIN floor_subjects f ON f.person_id = m.person_id) d"),
    "window_sort": ("a window per person over the subjects' sorted visits (characteristics, spans)",
                    "SELECT count(*) FROM (SELECT v.visit_start_date - LAG(v.visit_start_date) OVER "
                    "(PARTITION BY v.person_id ORDER BY v.visit_start_date) AS gap FROM {s}.visit_occurrence v "
                    "JOIN floor_subjects f ON f.person_id = v.person_id) w WHERE gap IS NULL OR gap > 30"),
    "window_sort_all": ("the same window over every visit (15M rows at 1M persons: PostgreSQL sorts on disk)",
                        "SELECT count(*) FROM (SELECT visit_start_date - LAG(visit_start_date) OVER "
                        "(PARTITION BY person_id ORDER BY visit_start_date) AS gap FROM {s}.visit_occurrence) w "
                        "WHERE gap IS NULL OR gap > 30"),
}

SUBJECTS_SQL = "CREATE TEMP TABLE floor_subjects AS SELECT person_id FROM {s}.person WHERE person_id % 7 = 0"


class Engine:
    """One open CDM (a ``CdmConnection``) and how to read the CPU seconds its queries cost."""

    def __init__(self, cdm, server_cpu: Callable[[], float] | None = None):
        self.cdm = cdm
        self.schema = cdm.cdm_schema
        self.server_cpu = server_cpu  # PostgreSQL: the whole server's CPU seconds (parallel workers too)
        cdm.execute_all([SUBJECTS_SQL.format(s=self.schema)] + (["ANALYZE floor_subjects"] if cdm.is_server else []))
        # the setting that bounds the cores of one query, as the agent's session has it
        self.cores_setting = "max_parallel_workers_per_gather" if cdm.is_server else "threads"
        self.cores_default = cdm.scalar(f"SELECT current_setting('{self.cores_setting}')")

    def cpu(self) -> float | None:
        if not self.cdm.is_server:
            return time.process_time()
        return None if self.server_cpu is None else self.server_cpu()

    def one_core(self, on: bool) -> None:
        """One core per query (PostgreSQL: no parallel workers; DuckDB: one thread), or the session's default."""
        value = (0 if self.cdm.is_server else 1) if on else int(self.cores_default)
        self.cdm.execute_all([f"SET {self.cores_setting} = {value}"])

    def time(self, sql: str, repeat: int) -> tuple[float, float | None, tuple]:
        """Best wall seconds of ``repeat`` runs, the CPU seconds of that run, and its row."""
        best: tuple[float, float | None, tuple] | None = None
        for _ in range(repeat):
            c0, t0 = self.cpu(), time.perf_counter()
            row = tuple(self.cdm.query_df(sql.format(s=self.schema)).iloc[0])
            wall, c1 = time.perf_counter() - t0, self.cpu()
            cpu = None if c0 is None or c1 is None else c1 - c0
            if best is None or wall < best[0]:
                best = (wall, cpu, row)
        assert best is not None
        return best


def _open(stack: ExitStack, url: str, schema: str | None, what: str):
    from site_agent.cdm import connect_cdm

    try:
        return stack.enter_context(connect_cdm(url, cdm_schema=schema))
    except OptimaError as exc:
        raise SystemExit(f"cannot open the {what} CDM: {exc}") from None


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cdm", required=True, help="the DuckDB CDM file (copied first)")
    ap.add_argument("--pg", help="PostgreSQL URL holding the same CDM")
    ap.add_argument("--pg-root", help="a private cluster (benchmarks/pg_private.py start DIR) instead of --pg")
    ap.add_argument("--pg-schema", default="cdm", help="the CDM's schema in PostgreSQL (default cdm)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per query and engine; the best is kept (default 3)")
    ap.add_argument("--only", help="comma-separated primitives (default: all)")
    args = ap.parse_args()
    if bool(args.pg) == bool(args.pg_root):
        raise SystemExit("give one of --pg URL or --pg-root DIR")
    names = list(PRIMITIVES) if not args.only else [n.strip() for n in args.only.split(",")]
    unknown = [n for n in names if n not in PRIMITIVES]
    if unknown:
        raise SystemExit(f"unknown primitive(s) {', '.join(unknown)}; known: {', '.join(PRIMITIVES)}")
    src = Path(args.cdm)
    if not src.is_file():
        raise SystemExit(f"no DuckDB file at {src}: make one with `site-agent cdm synth`")
    url, server_cpu = args.pg, None
    if args.pg_root:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from pg_private import running_cluster

        cluster = running_cluster(Path(args.pg_root))
        url, server_cpu = cluster.url, cluster.server_cpu_seconds
    with tempfile.TemporaryDirectory(prefix="optima-floor-") as tmp, ExitStack() as stack:
        copy = Path(tmp) / src.name
        shutil.copyfile(src, copy)
        duck = Engine(_open(stack, str(copy), None, "DuckDB"))
        pg = Engine(_open(stack, url, args.pg_schema, "PostgreSQL"), server_cpu)
        print(f"{'primitive':>14} {'cores':>5} {'duckdb_s':>8} {'duck_cpu':>8} {'pg_s':>7} {'pg_cpu':>7} "
              f"{'pg/duck':>7} {'cpu_ratio':>9}  what")
        for one in (True, False):
            duck.one_core(one)
            pg.one_core(one)
            for name in names:
                what, sql = PRIMITIVES[name]
                dw, dc, drow = duck.time(sql, args.repeat)
                pw, pc, prow = pg.time(sql, args.repeat)
                if [float(x) for x in drow] != [float(x) for x in prow]:
                    raise SystemExit(f"{name}: the engines disagree ({drow} against {prow}): not the same CDM?")
                ratio_cpu = None if dc is None or pc is None or dc <= 0 else pc / dc  # CPU clocks tick in 10 ms
                print(f"{name:>14} {'1' if one else 'all':>5} {dw:>8.3f} {_fmt(dc):>8} {pw:>7.3f} {_fmt(pc):>7} "
                      f"{pw / dw:>7.1f} {'-' if ratio_cpu is None else f'{ratio_cpu:.1f}':>9}  {what}", flush=True)

if __name__ == "__main__":
    main()
