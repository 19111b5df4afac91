"""The attacker on a demo's released files: every site bundle and the network results CSV.

Reads only what the demo released (``bundles/*.bundle`` and ``results.csv`` of a
``coordinator demo --out DIR``) and, without any truth, bounds every withheld count by LP over
the relations the attacker reads off the table (benchmarks/attacker.py, SciPy's linprog):
it reports each withheld count pinned to a small non-zero number (nothing 1..min-1 should be).

    python benchmarks/attack_demo.py DEMO_DIR [--min 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from optima_common.bundle import read_bundle
from optima_common.results import SummarisedResult


def _attacker():
    spec = importlib.util.spec_from_file_location("bench_attacker", REPO / "benchmarks" / "attacker.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("demo", type=Path)
    ap.add_argument("--min", type=int, default=5)
    a = ap.parse_args(argv)
    attacker = _attacker()
    total = 0
    for path in sorted((a.demo / "bundles").glob("*.bundle")):
        t0 = time.perf_counter()
        b = read_bundle(path)
        res = SummarisedResult.from_csv_text(b.results_csv, source=str(path))
        hidden = int((res.data["estimate_value"] == "-").sum())
        leaks = attacker.narrowable(res, a.min)
        total += len(leaks)
        print(f"{path.name}: {len(res.data):,} rows, {hidden:,} withheld, narrowed to a small non-zero number: "
              f"{len(leaks)} ({time.perf_counter() - t0:.1f}s)", flush=True)
        for leak in leaks[:5]:
            print("   ", leak)
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
