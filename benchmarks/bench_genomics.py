"""Genomics profile at scale: 1,000 patients, ~100k MAF rows, a 20k-gene expression matrix.

    nice -n 10 python benchmarks/bench_genomics.py [--patients 1000] [--variants 100000] [--genes 20000]

Generates the synthetic site (timed apart), then runs ``genomics profile`` in a child process pinned to
two cores (``taskset -c 0,1`` where available; BLAS/OpenMP threads = 2) and prints the wall time per
step, the peak RSS of the profile process and the size of the inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, resource, sys, time
from pathlib import Path
from site_agent.genomics.profile import run_profile, write_outputs
d = Path(sys.argv[1])
t = time.perf_counter()
run = run_profile([d / "mutations.maf"], d / "expression.tsv", d / "linkage.csv", clinical=d / "clinical.csv",
                  cdm_name="bench")
write_outputs(run, d / "out")
print(json.dumps({"seconds": time.perf_counter() - t, "steps": run.seconds, "rows": run.accounting["maf_rows"],
                  "released": len(run.result.data), "secondary": run.secondary,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--variants", type=int, default=100_000)
    ap.add_argument("--genes", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    from site_agent.genomics.synth import generate

    tmp = Path(tempfile.mkdtemp(prefix="optima-bench-genomics-"))
    try:
        t = time.perf_counter()
        # the driver genes give ~2.5 rows per patient; passengers make up the rest
        rate = max(0.0, a.variants / a.patients - 2.5)
        r = generate(tmp / "site", a.patients, a.seed, genes=a.genes, passenger_rate=rate)
        gen = time.perf_counter() - t
        sizes = {p.name: p.stat().st_size / 1e6 for p in (tmp / "site").iterdir()}
        print(f"synthetic site: {r.patients} patients, {r.variants} MAF rows, {r.genes} genes in {gen:.1f}s "
              f"(mutations.maf {sizes['mutations.maf']:.1f} MB, expression.tsv {sizes['expression.tsv']:.1f} MB)")
        env = {**os.environ, "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2", "MKL_NUM_THREADS": "2",
               "MPLCONFIGDIR": str(tmp / "mpl")}
        cmd = [sys.executable, "-c", CHILD, str(tmp / "site")]
        if shutil.which("taskset"):
            cmd = ["taskset", "-c", "0,1", *cmd]
        t = time.perf_counter()
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t
        res = json.loads(out.stdout.strip().splitlines()[-1])
        steps = ", ".join(f"{k} {v:.1f}s" for k, v in res["steps"].items())
        print(f"profile on 2 cores: {res['seconds']:.1f}s inside the process ({wall:.1f}s with interpreter start); "
              f"steps: {steps}; peak RSS {res['peak_rss_mb']:.0f} MB; {res['rows']} MAF rows, "
              f"{res['released']} released estimates, {res['secondary']} secondary suppressions")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
