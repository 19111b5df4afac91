"""PostgreSQL at 1M persons as a stand-in for 10M: the suite with the server's memory capped, and
the large-scale characteristics' event reads by plan.

    python benchmarks/pg_private.py start /tmp/pg-1m          # prints the URL
    site-agent cdm copy cdm_1m.duckdb --to URL --schema cdm
    python benchmarks/bench_pg_proxies.py --pg-root /tmp/pg-1m --pg-schema cdm --memory-limit 2.5G
    python benchmarks/bench_pg_proxies.py --pg-root /tmp/pg-1m --pg-schema cdm --plans --repeat 2

A 10M-person CDM takes about 16 minutes to generate, 44 to copy and 30 to run on a 2-core
machine, and its database (58 GB) is 2.4 times that machine's memory. These two measurements
ask, at 1M, whether what changes at 10M is what slows it (docs/performance.md, session 15):

``--memory-limit SIZE`` (e.g. ``2.5G``: 5.9 GB of 1M database against 2.5 GB, as 58 GB against
24 GB) moves the cluster's processes into a memory cgroup with that limit (cgroup v1 ``memory``,
or v2 where it is the only hierarchy), so its page cache cannot hold the database; drops the page
cache; runs the diagnostics suite from scratch in a new write schema (as ``bench_diagnostics.py``);
prints wall seconds, the agent's and the server's CPU seconds, the total statement time
(``pg_stat_statements``) and the cgroup's peak memory; then moves the processes back and removes
the cgroup. Run it once without the flag for the same figures unconstrained.

``--plans`` builds the large-scale characteristics' TEMP tables for the lung cohorts and times,
for each event table, the read of the cohort persons' records near their entries, with the
planner's plan and forced through the person index (``enable_hashjoin``, ``enable_mergejoin`` and
``enable_seqscan`` off: a nested loop over ``idx_<table>_person_id_1``), alternating, with the
page cache dropped before each read.

Both need root (cgroups, ``/proc/sys/vm/drop_caches``). The third stand-in, sorts and hashes
spilling to disk as they do at 10M, needs no script: ``OPTIMA_PG_WORK_MEM=25MB python
benchmarks/bench_pg_connections.py … --connections 2`` against the default 256MB.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_diagnostics import REPO, child  # noqa: E402
from pg_private import running_cluster, statements  # noqa: E402

V1 = Path("/sys/fs/cgroup/memory")
V2 = Path("/sys/fs/cgroup")


def drop_page_cache() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().rstrip("B")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


class MemoryCgroup:
    """A memory cgroup holding the cluster's processes while in use (v1 ``memory`` or pure v2)."""

    def __init__(self, limit: int):
        if V1.is_dir():
            self.path, self.limit_file, self.peak_file, self.root = (
                V1 / "optima-bench", "memory.limit_in_bytes", "memory.max_usage_in_bytes", V1)
        elif "memory" in (V2 / "cgroup.controllers").read_text(errors="replace"):
            self.path, self.limit_file, self.peak_file, self.root = V2 / "optima-bench", "memory.max", "memory.peak", V2
        else:
            raise SystemExit("no memory cgroup controller on this machine")
        self.limit = limit

    def __enter__(self) -> MemoryCgroup:
        self.path.mkdir(exist_ok=True)
        (self.path / self.limit_file).write_text(str(self.limit))
        return self

    def adopt(self, pids: list[int]) -> None:
        for pid in pids:
            (self.path / "cgroup.procs").write_text(str(pid))

    def peak(self) -> int:
        f = self.path / self.peak_file
        return int(f.read_text()) if f.exists() else -1

    def __exit__(self, *exc) -> None:
        for pid in (self.path / "cgroup.procs").read_text().split():
            try:
                (self.root / "cgroup.procs").write_text(pid)
            except OSError:  # the process ended meanwhile
                pass
        self.path.rmdir()


def server_pids(root: Path) -> list[int]:
    """The postmaster and its children (backends, background workers)."""
    postmaster = int((root / "data" / "postmaster.pid").read_text().split()[0])
    kids = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True).stdout.split()
    return [postmaster, *map(int, kids)]


def statement_seconds(url: str, reset: bool) -> float:
    return sum(sec for sec, _, _ in statements(url, reset=reset))


def suite(args, root: Path) -> None:
    cluster = running_cluster(root)
    write_schema = f"bench_proxy_{os.getpid()}"
    out = Path(tempfile.mkdtemp(prefix="optima-proxy-")) / "results.csv"
    with contextlib.ExitStack() as stack:
        cgroup = None
        if args.memory_limit:
            cgroup = stack.enter_context(MemoryCgroup(parse_size(args.memory_limit)))
            cgroup.adopt(server_pids(root))  # backends forked from now on inherit it
        drop_page_cache()
        statement_seconds(cluster.url, reset=True)
        s0 = cluster.server_cpu_seconds()
        t = time.perf_counter()
        res = child(["suite", cluster.url, args.pg_schema, str(out), write_schema])
        wall = time.perf_counter() - t
        server = cluster.server_cpu_seconds() - s0
        stmt = statement_seconds(cluster.url, reset=False)
        peak = f"{cgroup.peak() / 2**20:.0f} MB" if cgroup else "-"
    drop_schema(cluster.url, write_schema)
    print(f"memory_limit {args.memory_limit or 'none'}: wall {wall:.1f} s (suite {res['seconds']:.1f}), agent "
          f"{res['cpu_s']:.1f} + server {server:.1f} CPU s, statements {stmt:.1f} s, cgroup peak {peak}, "
          f"rows {res['rows']}")


def drop_schema(url: str, schema: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.begin() as c:
            c.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    finally:
        engine.dispose()


def plans(args, root: Path) -> None:
    from site_agent.cdm import connect_cdm
    from site_agent.cohorts import build_cohorts, collect_definitions
    from site_agent.cohorts.build import ensure_results_tables
    from site_agent.diagnostics import large_scale as lsc
    from site_agent.diagnostics.base import DiagnosticContext

    cluster = running_cluster(root)
    defs = collect_definitions([REPO / "cohort_definitions" / "lung"])
    forced = ["SET enable_hashjoin = off", "SET enable_mergejoin = off", "SET enable_seqscan = off"]
    planner = ["RESET enable_hashjoin", "RESET enable_mergejoin", "RESET enable_seqscan"]
    with connect_cdm(cluster.url, cdm_schema=args.pg_schema, write_schema=f"bench_proxy_{os.getpid()}") as cdm:
        ensure_results_tables(cdm)
        build_cohorts(cdm, defs)
        ctx = DiagnosticContext(cdm=cdm, cdm_name="bench", cohorts=tuple(defs))
        cdm.execute_all(lsc._spans_sql(ctx, tuple(sorted(d.cohort_definition_id for d in defs))))
        persons = int(cdm.scalar(f"SELECT COUNT(*) FROM {lsc.PERSONS_TABLE}"))
        print(f"cohort persons {persons}")
        for table, (col, dcol) in lsc.EVENT_TABLES.items():
            read = (f"SELECT COUNT(*), SUM(t.{col}) FROM {lsc.PERSONS_TABLE} p JOIN {args.pg_schema}.{table} t "
                    f"ON t.person_id = p.subject_id AND t.{dcol} >= p.a AND t.{dcol} <= p.b "
                    f"WHERE t.{col} IS NOT NULL AND t.{col} <> 0")
            times: dict[str, list[float]] = {"planner": [], "person_index": []}
            answers = set()
            for _ in range(args.repeat):
                for name, settings in (("planner", planner), ("person_index", forced)):
                    cdm.execute_all(settings)
                    drop_page_cache()
                    t = time.perf_counter()
                    answers.add(tuple(int(v) for v in cdm.query_df(read).iloc[0]))
                    times[name].append(time.perf_counter() - t)
            cdm.execute_all(planner)
            same = "same answer" if len(answers) == 1 else "ANSWERS DIFFER"
            print(f"{table:22s} " + "  ".join(f"{k} {', '.join(f'{s:.2f}' for s in v)} s" for k, v in times.items())
                  + f"  ({same})")
    drop_schema(cluster.url, f"bench_proxy_{os.getpid()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--pg-root", required=True, help="a running cluster of benchmarks/pg_private.py")
    ap.add_argument("--pg-schema", required=True, help="its schema holding the CDM")
    ap.add_argument("--memory-limit", help="cap the server's memory (page cache included), e.g. 2.5G")
    ap.add_argument("--plans", action="store_true", help="time the event reads by plan instead of the suite")
    ap.add_argument("--repeat", type=int, default=2, help="--plans: reads per plan and table")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: memory cgroups and /proc/sys/vm/drop_caches")
    root = Path(args.pg_root)
    (plans if args.plans else suite)(args, root)


if __name__ == "__main__":
    main()
