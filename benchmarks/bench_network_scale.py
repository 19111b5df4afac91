"""A network of many sites at the coordinator: verify, store, pool and report (issue 18's 20-site target).

    python benchmarks/bench_network_scale.py --sites 20 --real 2 --persons 3000 --workers 2

``--real`` synthetic sites run the full lung diagnostics and sign real bundles; the rest of
the ``--sites`` are **clones of those bundles** under their own site name and key, with every
count scaled by a per-site factor (so pooled sums differ per site but each table keeps its
size and layout), each signed by its own key. Every bundle is written to a file and goes
through the coordinator's own ingest (``ingest_bundle_files``: ``verify_bundle_file`` against
a trust folder, including the disclosure re-check of every table, in ``--workers`` processes;
then the results store), pooling (once: the store keeps the pooled result), the report and the
viewer (``coordinator view``'s server: the study page and the network CSV over HTTP), both of
which read the kept pooled result. Prints, per step, wall and CPU seconds (this
process and its worker processes) and the step's own peak RSS (the high-water mark is reset
before each step; the workers' peak beside it), and the sizes of the store, the bundles,
``results.csv`` and ``report.html``.

``--keep`` keeps the work folder (under ``$TMPDIR``); ``--reuse FOLDER`` then runs the coordinator
side again over its signed bundles (every bundle fully verified, into a fresh store) without
generating and signing the sites again; ``--repeat N`` runs that N times and prints each step's
median (one run's figures vary by up to ~15% on a shared 2-core machine; the peak RSS of a run after
the first includes what the earlier runs left in this process).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import shutil
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from coordinator.cli.ingest import ingest_bundle_files
from coordinator.pooling.cache import pooled_result
from coordinator.report import write_report
from coordinator.store import ResultsStore
from coordinator.trust.manifest import build_manifest, sign_manifest, verify_bundle_file
from coordinator.viewer import make_server
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


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Step:
    """Wall and CPU seconds (with reaped worker processes) and this step's own peak RSS."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        try:  # reset the high-water mark of RSS, so each step reports its own peak (Linux >= 4.0)
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
        self.c0, self.w0 = _cpu(), time.perf_counter()
        self.kids0 = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        return self

    def __exit__(self, *exc):
        wall, cpu = time.perf_counter() - self.w0, _cpu() - self.c0
        kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        workers = f"   workers' peak {kids / 1024:5.0f} MB" if kids > self.kids0 else ""
        print(f"{self.name:<40} {wall:8.1f} s wall {cpu:8.1f} s CPU   peak RSS {_hwm_mb():6.0f} MB{workers}   "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
        RESULTS[self.name] = (wall, cpu)


RESULTS: dict[str, tuple[float, float]] = {}


def scaled(result: SummarisedResult, site: str, factor: float) -> str:
    """The result under another site name with counts scaled (suppressed cells and zeros kept)."""
    data = result.data.copy()
    data["cdm_name"] = site
    is_count = data["estimate_name"].str.contains("count") & data["estimate_value"].str.fullmatch(r"\d+", na=False)
    values = data.loc[is_count, "estimate_value"].astype(int)
    data.loc[is_count, "estimate_value"] = values.where(values == 0, (values * factor).round().clip(lower=MIN_CELL)
                                                        .astype(int)).astype(str)
    return SummarisedResult(data, result.settings).to_csv_text()


def reuse(root: Path, sample: int, workers: int) -> None:
    """Ingest, pool, report and viewer over the bundles of an earlier run, into a fresh store.

    Every bundle is verified in full (``coordinator ingest``'s own path, ``workers`` processes)
    unless ``sample`` is given: then only that many, one by one, and the rest stored after their
    signature check alone."""
    from optima_common.bundle import read_bundle, verify
    from optima_common.keys import load_trust_dir

    paths = sorted((root / "bundles").glob("*.bundle"))
    with ResultsStore.open(root / "store.sqlite3") as old:
        manifests = [old.manifest(m.manifest_id) for m in old.manifests()]
    (manifest,) = manifests
    store_path = root / "store-reuse.sqlite3"
    store_path.unlink(missing_ok=True)
    store = ResultsStore.open(store_path)  # a fresh store: nothing stored, nothing pooled yet
    store.add_manifest(manifest)
    trust = root / "trust"
    if not sample:
        with Step(f"verify + store {len(paths)} bundles ({workers} workers)"):
            ingest_bundle_files(paths, store, trust, workers=workers)
    else:
        for p in paths[:sample]:
            with Step(f"full verification of {p.name} (1 process)"):
                verify_bundle_file(p, trust, manifest=manifest)
        with Step(f"store {len(paths)} bundles (signature check only)"):
            trusted = load_trust_dir(trust)
            for p in paths:
                bundle = read_bundle(p)
                verify(bundle, trusted)
                store.add_bundle(bundle, p.read_bytes())
    finish(store, manifest, root / "report-reuse", store_path, root / "bundles", None)


def coordinator_total(results: dict[str, tuple[float, float]]) -> tuple[float, float]:
    """Wall and CPU seconds of ingest + pooling + report (the target's steps; not the viewer)."""
    steps = [v for k, v in results.items() if k.startswith(("verify", "store", "pool", "report"))]
    return sum(w for w, _ in steps), sum(c for _, c in steps)


def finish(store, manifest, out: Path, store_path: Path, bundle_dir: Path, real) -> None:
    with Step("pool (network_result, kept in the store)"):
        net = pooled_result(store, manifest.manifest_id)
    with Step("report (the kept pooled result)"):
        report = write_report(store, manifest.manifest_id, out)
    del net  # the viewer and the report above read the pooled result the store keeps
    server = make_server(store, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    with Step("viewer: study page (built on request)"):
        page = urllib.request.urlopen(f"{base}/m/{manifest.manifest_id}", timeout=3600).read()
    with Step("viewer: page again + results.csv.gz"):
        urllib.request.urlopen(f"{base}/m/{manifest.manifest_id}", timeout=3600).read()
        gz = urllib.request.urlopen(f"{base}/m/{manifest.manifest_id}/results.csv.gz", timeout=3600).read()
    server.shutdown()
    server.server_close()
    coordinator_s, coordinator_cpu = coordinator_total(RESULTS)
    print(f"ingest + pooling + report: {coordinator_s:.1f} s wall, {coordinator_cpu:.1f} s CPU (target <= 60 s)")
    size = lambda p: p.stat().st_size / 1e6
    bundles_mb = sum(size(p) for p in bundle_dir.iterdir())
    if real:
        print(f"rows: {sum(len(r.data) for r in real) // len(real)} per site")
    rows = len(pooled_result(store, manifest.manifest_id).result.data)
    print(f"rows in the network result: {rows}")
    print(f"sizes: bundles {bundles_mb:.1f} MB in all, store {size(store_path):.1f} MB, "
          f"results.csv {size(report.csv):.1f} MB, report.html {size(report.html):.1f} MB, "
          f"viewer page {len(page) / 1e6:.1f} MB, results.csv.gz {len(gz) / 1e6:.1f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sites", type=int, default=20)
    ap.add_argument("--real", type=int, default=2, help="sites that really run the diagnostics")
    ap.add_argument("--persons", type=int, default=3000, help="persons at the first real site")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="processes verifying bundles at once (coordinator ingest --workers)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--reuse", help="the folder a --keep run left: its signed bundles, trust folder and manifest")
    ap.add_argument("--repeat", type=int, default=1,
                    help="with --reuse: run it this many times (a fresh store each time) and print each step's "
                    "median; one run's figures vary by up to ~15%% on a shared 2-core machine")
    ap.add_argument("--verify-sample", type=int, default=0,
                    help="with --reuse: fully verify (disclosure re-check included) only this many bundles, timed "
                    "one by one, and store the rest after their signature check alone (the figure then says so); "
                    "default: every bundle through the coordinator's ingest, --workers processes")
    args = ap.parse_args()
    if args.reuse:
        if not Path(args.reuse, "bundles").is_dir() or args.workers < 1 or args.verify_sample < 0 or args.repeat < 1:
            raise SystemExit(f"--reuse {args.reuse}: not a folder a --keep run left (no bundles/), or a bad "
                             "--workers/--verify-sample/--repeat")
        runs = []
        for _ in range(args.repeat):
            RESULTS.clear()
            reuse(Path(args.reuse), args.verify_sample, args.workers)
            runs.append(dict(RESULTS))
        if args.repeat > 1:
            print(f"medians over {args.repeat} runs:")
            for name in runs[0]:
                wall, cpu = (statistics.median(r[name][k] for r in runs) for k in (0, 1))
                print(f"  {name:<40} {wall:8.1f} s wall {cpu:8.1f} s CPU")
            total = [coordinator_total(r)[0] for r in runs]
            print(f"  ingest + pooling + report: median {statistics.median(total):.1f} s wall "
                  f"(runs: {', '.join(f'{t:.1f}' for t in total)})")
        return None
    if not 1 <= args.real <= args.sites or args.persons < 500 or args.workers < 1:
        raise SystemExit("need 1 <= --real <= --sites, --persons >= 500 and --workers >= 1")
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
    paths = [bundle_dir / f"{name}.bundle" for name in names]
    with Step(f"verify + store {args.sites} bundles ({args.workers} workers)"):
        ingest_bundle_files(paths, store, trust, workers=args.workers)
    finish(store, manifest, root / "report", root / "store.sqlite3", bundle_dir, real)
    if args.keep:
        print(f"kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
