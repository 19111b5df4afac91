"""Pooling and report time for a network of synthetic sites (full lung diagnostics per site).

    python benchmarks/bench_network_report.py --sites 3 --persons 3000

Each site: a synthetic CDM, `run_diagnostics` over cohort_definitions/lung at min cell count 5,
a signed bundle. Then: store (SQLite), pooling (`pooled_result`: `network_result`, kept in the store) and
`write_report` (reads the kept result). Prints rows per
site, CPU and wall seconds of pooling and of the report, the CSV and HTML sizes and peak RSS.
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.pooling.cache import pooled_result
from coordinator.report import write_report
from coordinator.store import ResultsStore
from coordinator.trust.manifest import build_manifest, sign_manifest
from optima_common.bundle import (
    Provenance,
    ResultBundle,
    SuppressionRecord,
    manifest_sha256,
    render,
    sign,
)
from site_agent.cdm import connect_cdm
from site_agent.cdm.synth import generate_site
from site_agent.cohorts import collect_definitions
from site_agent.diagnostics.runner import run_diagnostics

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sites", type=int, default=3)
    ap.add_argument("--persons", type=int, default=3000)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-net-"))
    names = [f"site_{i}" for i in range(args.sites)]
    manifest = sign_manifest(build_manifest(
        "lung", "1", [{"cohort_definition_id": 1, "name": "x", "sha256": "a" * 64, "expression": {}}], ["diagnostics"],
        {}, 5, names, 1, dt.timedelta(days=1), now=dt.datetime.now(dt.UTC)), Ed25519PrivateKey.generate())
    defs = collect_definitions([REPO / "cohort_definitions" / "lung"])
    store = ResultsStore.open(root / "results.sqlite3")
    store.add_manifest(manifest)
    for i, name in enumerate(names):
        res = generate_site(out=root / f"{name}.duckdb", persons=int(args.persons * (1 - 0.2 * i)), site=name,
                            profile="oncology", seed=10 + i)
        with connect_cdm(str(res.out)) as cdm:
            diag = run_diagnostics(cdm, defs, out=root / f"{name}.csv", min_cell_count=5, cdm_name=name,
                                   progress=lambda m: None)
        bundle = sign(ResultBundle(
            site=name, manifest_id=manifest.manifest_id, manifest_sha256=manifest_sha256(manifest),
            created_at=dt.datetime.now(dt.UTC), provenance=Provenance(cdm_name=name, package_version="bench"),
            suppression=SuppressionRecord(min_cell_count=5, site_floor=5, method="bench"),
            results_csv=(root / f"{name}.csv").read_text()), Ed25519PrivateKey.generate())
        store.add_bundle(bundle, render(bundle))
        print(f"{name}: {len(diag.result.data)} rows released")
    c0, w0 = time.process_time(), time.perf_counter()
    net = pooled_result(store, manifest.manifest_id)  # pooled once, kept in the store
    c1, w1 = time.process_time(), time.perf_counter()
    paths = write_report(store, manifest.manifest_id, root / "report")
    c2, w2 = time.process_time(), time.perf_counter()
    print(f"network result: {len(net.result.data)} rows; pooling {c1 - c0:.1f} s CPU ({w1 - w0:.1f} s wall)")
    print(f"write_report (the kept pooled result, plots, CSV): {c2 - c1:.1f} s CPU ({w2 - w1:.1f} s wall); "
          f"CSV {paths.csv.stat().st_size / 1e6:.1f} MB, HTML {paths.html.stat().st_size / 1e3:.0f} kB")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
