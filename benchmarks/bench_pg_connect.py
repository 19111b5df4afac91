"""What a PostgreSQL session costs the agent to open: is a connection pool worth it? (issue 18)

    python benchmarks/bench_pg_connect.py --n 50

Starts a private cluster (benchmarks/pg_private.py) and times ``connect_cdm`` (SQLAlchemy
engine, libpq connection with the agent's session options, the CDM schema check) followed by
``SELECT 1`` and close, ``--n`` times; then a bare ``psycopg2.connect``. The agent opens one
connection per run (``CdmConnection`` keeps it for every statement of the run) and one per
Flower message at most (each message runs in a fresh ClientApp process, where no pool could
outlive it), so the figure to compare is one connection against a suite of minutes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50)
    args = ap.parse_args()
    if args.n < 1:
        print("--n must be at least 1", file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import psycopg2
    from pg_private import private_cluster

    from site_agent.cdm import connect_cdm
    from site_agent.cdm.transfer import _pg_dsn

    with private_cluster() as pg:
        dsn = _pg_dsn(pg.url)
        with psycopg2.connect(**dsn) as c, c.cursor() as cur:
            cur.execute("CREATE SCHEMA IF NOT EXISTS cdm")
        agent, bare = [], []
        for _ in range(args.n):
            t = time.perf_counter()
            with connect_cdm(pg.url, cdm_schema="cdm") as cdm:
                cdm.scalar("SELECT 1")
            agent.append(1000 * (time.perf_counter() - t))
            t = time.perf_counter()
            c = psycopg2.connect(**dsn)
            c.cursor().execute("SELECT 1")
            c.close()
            bare.append(1000 * (time.perf_counter() - t))
    for name, ms in (("connect_cdm + SELECT 1 + close", agent), ("psycopg2.connect + SELECT 1 + close", bare)):
        print(f"{name:<38} median {statistics.median(ms):7.1f} ms   max {max(ms):7.1f} ms   (n={len(ms)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
