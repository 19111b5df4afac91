"""A network of many sites at the coordinator: verify, store, pool and report (issue 18's 20-site target).

    python benchmarks/bench_network_scale.py --sites 20 --real 2 --persons 3000

``--real`` synthetic sites run the full lung diagnostics and the SCLC study and sign real
bundles; the rest of the ``--sites`` are clones of those bundles under their own site name
and key, with every count scaled by a per-site factor (so pooled sums differ per site but
each table keeps its size and layout). Every bundle is written to a file and goes through
the coordinator's own verification (``verify_bundle_file`` against a trust folder), then
the results store, pooling and the report. Prints, per step, wall and CPU seconds, peak RSS,
and the sizes of the store, the bundles, ``results.csv`` and ``report.html``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from coordinator.pooling.results import network_result
from coordinator.report import write_report
from coordinator.store import ResultsStore
from coordinator.trust.manifest import build_manifest, sign_manifest, verify_bundle_file
from optima_common.bundle import (
    Provenance,
    ResultBundle,
    SuppressionRecord,
    generate_keypair,
    load_private_key,
    manifest_sha256,
    sign,
    write_bundle,
)
from optima_common.results import SummarisedResult
from site_agent.cdm import connect_cdm
from site_agent.cdm.synth import generate_site
from site_agent.cohorts import collect_definitions
from site_agent.diagnostics.runner import run_diagnostics

REPO = Path(__file__).resolve().parents[1]
MIN_CELL = 5


class Step:
    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        self.c0, self.w0 = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        wall, cpu = time.perf_counter() - self.w0, time.process_time() - self.c0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{self.name:<34} {wall:8.1f} s wall {cpu:8.1f} s CPU   peak RSS {rss:6.0f} MB   "
              f"load {os.getloadavg()[0]:.1f}", flush=True)


def scaled(result: SummarisedResult, site: str, factor: float) -> str:
    """The result under another site name with counts scaled (suppressed cells and zeros kept)."""
    data = result.data.copy()
    data["cdm_name"] = site
    is_count = data["estimate_name"].str.contains("count") & data["estimate_value"].str.fullmatch(r"\d+", na=False)
    values = data.loc[is_count, "estimate_value"].astype(int)
    data.loc[is_count, "estimate_value"] = values.where(values == 0, (values * factor).round().clip(lower=MIN_CELL)
                                                        .astype(int)).astype(str)
    return SummarisedResult(data, result.settings).to_csv_text()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sites", type=int, default=20)
    ap.add_argument("--real", type=int, default=2, help="sites that really run the diagnostics")
    ap.add_argument("--persons", type=int, default=3000, help="persons at the first real site")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-net-scale-"))
    names = [f"site_{i:02d}" for i in range(args.sites)]
    trust, keys = root / "trust", root / "keys"
    coord_key, _ = generate_keypair(keys, "coordinator")
    trust.mkdir(parents=True)
    for name in names:
        _, pub = generate_keypair(keys, name)
        shutil.copy(pub, trust / f"{name}.pub")
    manifest = sign_manifest(build_manifest(
        "lung", "1", [{"cohort_definition_id": 1, "name": "x", "sha256": "a" * 64, "expression": {}}],
        ["diagnostics"], {}, MIN_CELL, names, 1, dt.timedelta(days=1), now=dt.datetime.now(dt.UTC)),
        load_private_key(coord_key))
    defs = collect_definitions([REPO / "cohort_definitions" / "lung"])
    real: list[SummarisedResult] = []
    with Step(f"{args.real} real sites (synth + diagnostics)"):
        for i in range(args.real):
            name = names[i]
            res = generate_site(out=root / f"{name}.duckdb", persons=int(args.persons * (1 - 0.2 * i)), site=name,
                                profile="oncology", seed=10 + i)
            with connect_cdm(str(res.out)) as cdm:
                real.append(run_diagnostics(cdm, defs, out=root / f"{name}.csv", min_cell_count=MIN_CELL,
                                            cdm_name=name, progress=lambda m: None).result)
    bundle_dir = root / "bundles"
    with Step(f"sign {args.sites} bundles"):
        for i, name in enumerate(names):
            text = scaled(real[i % len(real)], name, 1.0 + 0.15 * (i // len(real)))
            bundle = sign(ResultBundle(
                site=name, manifest_id=manifest.manifest_id, manifest_sha256=manifest_sha256(manifest),
                created_at=dt.datetime.now(dt.UTC), provenance=Provenance(cdm_name=name, package_version="bench"),
                suppression=SuppressionRecord(min_cell_count=MIN_CELL, site_floor=MIN_CELL, method="bench"),
                results_csv=text), load_private_key(keys / f"{name}.key"))
            write_bundle(bundle, bundle_dir / f"{name}.bundle")
    store = ResultsStore.open(root / "store.sqlite3")
    store.add_manifest(manifest)
    with Step("verify + store every bundle"):
        for name in names:
            path = bundle_dir / f"{name}.bundle"
            bundle = verify_bundle_file(path, trust, manifest=manifest)
            store.add_bundle(bundle, path.read_bytes())
    with Step("pool (network_result)"):
        net = network_result(store.bundles(manifest.manifest_id))
    with Step("report (pools again, plots, CSV)"):
        paths = write_report(store, manifest.manifest_id, root / "report")
    size = lambda p: p.stat().st_size / 1e6
    bundles_mb = sum(size(p) for p in bundle_dir.iterdir())
    print(f"rows: {sum(len(r.data) for r in real) // len(real)} per site, {len(net.result.data)} in the network result")
    print(f"sizes: bundles {bundles_mb:.1f} MB in all, store {size(root / 'store.sqlite3'):.1f} MB, "
          f"results.csv {size(paths.csv):.1f} MB, report.html {size(paths.html):.1f} MB")
    if args.keep:
        print(f"kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
