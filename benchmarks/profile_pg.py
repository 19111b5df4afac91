"""Profile the lung diagnostics suite and the SCLC study on a private PostgreSQL cluster.

    python benchmarks/profile_pg.py --cdm site.duckdb [--top 15] [--plans plans.txt] [--skip-study]

Starts a throw-away cluster (benchmarks/pg_private.py) with every statement's duration
logged, copies the DuckDB CDM into it with ``cdm copy``'s code (keys, indexes, ANALYZE),
runs the diagnostics suite and then the SCLC study, and prints the slowest statements
(grouped by shape: numbers and literals blanked) with their share of the total. With
``--plans`` the ``EXPLAIN (ANALYZE, BUFFERS)`` plan of every statement slower than
``--explain-ms`` (auto_explain, so temp-table statements too) is written there.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pg_private import (
    private_cluster,  # benchmarks/ is on sys.path as the script folder
)

_LINE = re.compile(r"duration: ([0-9.]+) ms\s+statement: (.*)")


def slow_statements(log: Path) -> list[tuple[float, str]]:
    """(ms, statement) from a PostgreSQL log written with log_min_duration_statement."""
    out: list[tuple[float, str]] = []
    current: list | None = None
    for line in log.read_text(errors="replace").splitlines():
        m = _LINE.search(line)
        if m:
            current = [float(m.group(1)), m.group(2)]
            out.append(current)  # type: ignore[arg-type]
        elif current is not None and (line.startswith("\t") or line.startswith(" ")):
            current[1] += "\n" + line
        else:
            current = None
    return [(ms, sql) for ms, sql in out]


def shape(sql: str) -> str:
    """The statement with numbers and quoted text blanked, to group repeats of one query."""
    s = re.sub(r"'[^']*'", "'?'", sql)
    s = re.sub(r"\b\d+\b", "N", s)
    return re.sub(r"\s+", " ", s).strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cdm", required=True, help="DuckDB CDM to copy")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--plans", help="write the EXPLAIN (ANALYZE, BUFFERS) plans of statements over --explain-ms here")
    ap.add_argument("--explain-ms", type=int, default=1000)
    ap.add_argument("--skip-study", action="store_true")
    ap.add_argument("--log-ms", type=int, default=50, help="log statements slower than this (ms)")
    ap.add_argument("--dump", help="write the slowest statements' SQL to this folder")
    args = ap.parse_args()
    from site_agent.cdm import connect_cdm
    from site_agent.cdm.transfer import copy_duckdb_to_postgres
    from site_agent.cohorts import collect_definitions
    from site_agent.diagnostics.runner import run_diagnostics

    with private_cluster(log_min_duration_ms=args.log_ms, explain_ms=args.explain_ms if args.plans else -1) as pg:
        t = time.perf_counter()
        copy_duckdb_to_postgres(args.cdm, pg.url, "cdm")
        print(f"cdm copy: {time.perf_counter() - t:.1f} s", flush=True)
        mark = pg.log_path.stat().st_size
        defs = collect_definitions([REPO / "cohort_definitions" / "lung"])
        with connect_cdm(pg.url, cdm_schema="cdm") as cdm, tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            run_diagnostics(cdm, defs, out=Path(tmp) / "d.csv", progress=lambda m: print("  " + m, flush=True))
            print(f"diagnostics: {time.perf_counter() - t:.1f} s", flush=True)
            if not args.skip_study:
                from site_agent.analyses.study_run import run_study
                from site_agent.study_spec import load_study

                study = load_study(REPO / "cohort_definitions" / "studies" / "sclc_stage_i_ii.json")
                t = time.perf_counter()
                run_study(cdm, study, Path(tmp) / "study")
                print(f"study: {time.perf_counter() - t:.1f} s", flush=True)
        text = pg.log_path.read_text(errors="replace")[mark:]
        log = Path(tempfile.mkdtemp()) / "log"
        log.write_text(text)
        stmts = slow_statements(log)
        total = sum(ms for ms, _ in stmts)
        by_shape: dict[str, list[float]] = defaultdict(list)
        example: dict[str, str] = {}
        for ms, sql in stmts:
            by_shape[shape(sql)].append(ms)
            example.setdefault(shape(sql), sql)
        ranked = sorted(by_shape.items(), key=lambda kv: -sum(kv[1]))
        print(f"\n{len(stmts)} statements over {args.log_ms} ms, {total / 1000:.1f} s in all")
        print(f"{'total_s':>8} {'n':>4} {'max_s':>7}  statement")
        for i, (sh, times) in enumerate(ranked[:args.top]):
            print(f"{sum(times) / 1000:>8.1f} {len(times):>4} {max(times) / 1000:>7.2f}  [{i}] {sh[:150]}")
        if args.dump:
            d = Path(args.dump)
            d.mkdir(parents=True, exist_ok=True)
            for i, (sh, _) in enumerate(ranked[:args.top]):
                (d / f"stmt_{i:02d}.sql").write_text(example[sh])
        if args.plans:
            plans = re.findall(r"duration: ([0-9.]+) ms\s+plan:\n(.*?)(?=\n\S|\Z)", text, flags=re.DOTALL)
            plans.sort(key=lambda p: -float(p[0]))
            Path(args.plans).write_text("\n\n".join(f"-- {float(ms) / 1000:.2f} s\n{body}" for ms, body in plans))
            print(f"{len(plans)} plans (slowest first) in {args.plans}")

if __name__ == "__main__":
    main()
