"""The diagnostics suite on PostgreSQL with 1, 2, ... connections (site_agent/diagnostics/parallel.py).

    python benchmarks/pg_private.py start /tmp/pgpar/pg        # prints the URL
    site-agent cdm copy cdm.duckdb --to URL --schema cdm
    python benchmarks/bench_pg_connections.py --pg-root /tmp/pgpar/pg --pg-schema cdm --connections 1,2 --repeat 2

Each suite (the lung cohorts, as ``bench_diagnostics.py``) runs from scratch in its own process
(a new write schema: cohorts built, no unit cache), with ``OPTIMA_PG_CONNECTIONS`` set to the
count; the counts alternate across repeats. Printed per run: wall s, the agent process's CPU s,
the server's CPU s (/proc: postmaster, backends, parallel workers), peak RSS, and at the end
whether every released CSV has the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_diagnostics import child  # noqa: E402
from pg_private import running_cluster  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pg-root", required=True, help="a running cluster of benchmarks/pg_private.py")
    ap.add_argument("--pg-schema", required=True, help="its schema holding the CDM")
    ap.add_argument("--connections", default="1,2", help="comma-separated connection counts")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--workdir", default="/tmp/optima-bench-pgconn")
    args = ap.parse_args()
    cluster = running_cluster(Path(args.pg_root))
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    digests = set()
    print(f"{'conns':>5} {'wall_s':>7} {'agent_cpu_s':>11} {'server_cpu_s':>12} {'rss_mb':>6} {'rows':>7} "
          f"{'load_1m':>7}  md5", flush=True)
    for rep in range(args.repeat):
        for n in [int(c) for c in args.connections.split(",")]:
            ws = f"bench_c{n}_{rep}_{int(time.time())}"
            out = work / f"{ws}.csv"
            os.environ["OPTIMA_PG_CONNECTIONS"] = str(n)
            pg0 = cluster.server_cpu_seconds()
            res = child(["suite", cluster.url, args.pg_schema, str(out), ws])
            pg_cpu = cluster.server_cpu_seconds() - pg0
            md5 = hashlib.md5(out.read_bytes()).hexdigest()
            digests.add(md5)
            print(f"{n:>5} {res['seconds']:>7.1f} {res['cpu_s']:>11.1f} {pg_cpu:>12.1f} {res['peak_rss_mb']:>6.0f} "
                  f"{res['rows']:>7} {os.getloadavg()[0]:>7.2f}  {md5}", flush=True)
    print(f"released CSVs identical: {len(digests) == 1}", flush=True)


if __name__ == "__main__":
    main()
