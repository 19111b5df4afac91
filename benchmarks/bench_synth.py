"""Benchmark the synthetic CDM generator.

    python benchmarks/bench_synth.py --persons 1000000 --profile oncology

Writes into a temporary folder (deleted afterwards unless --keep) and prints persons/s,
elapsed seconds, rows per table, the file size and the peak RSS of this process.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--persons", type=int, default=1_000_000)
    ap.add_argument("--profile", choices=["primary-care", "oncology"], default="oncology")
    ap.add_argument("--site", default="site_a")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--chunk-size", type=int, default=250_000)
    ap.add_argument("--keep", help="write the CDM to this path instead of a temporary folder")
    ap.add_argument("--truth", action="store_true", help="also print the ground truth")
    args = ap.parse_args(argv)

    from site_agent.cdm.synth import generate_site

    with tempfile.TemporaryDirectory(prefix="bench_synth_") as tmp:
        out = Path(args.keep) if args.keep else Path(tmp) / "site.duckdb"
        t0 = time.perf_counter()
        res = generate_site(out=out, persons=args.persons, site=args.site, profile=args.profile,
                            seed=args.seed, chunk_size=args.chunk_size)
        elapsed = time.perf_counter() - t0
        size_mb = out.stat().st_size / 2**20
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    rows = sum(res.counts.values())
    print(f"persons        {args.persons:,} ({args.profile}, site {args.site}, seed {args.seed}, chunk {args.chunk_size:,})")
    print(f"elapsed        {elapsed:.1f} s")
    print(f"persons/s      {args.persons / elapsed:,.0f}")
    print(f"rows/s         {rows / elapsed:,.0f} ({rows:,} rows)")
    print(f"file size      {size_mb:,.0f} MiB")
    print(f"peak RSS       {peak_kb / 1024:,.0f} MiB")
    print("rows per table:")
    for table, n in sorted(res.counts.items(), key=lambda kv: -kv[1]):
        print(f"  {table:24s} {n:>14,}")
    if args.truth:
        print(json.dumps({"truth": res.truth, "truth_attrition": res.truth_attrition}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
