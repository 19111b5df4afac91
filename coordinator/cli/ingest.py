"""``coordinator ingest FILE...``: load sites' signed bundle files into the results store (offline mode).

The bundle is verified first (:func:`coordinator.trust.manifest.verify_bundle_file`: pinned site key
named like the site, signature, suppression record, and the exact signed manifest it answers);
only then is it stored and the site marked ``done``. The manifest must be in the store already
or be given (``--manifest FILE``): a given manifest must be signed by the coordinator's own
key (``--coordinator-key``, its public key; a site's signature over a manifest the coordinator
never issued vouches for nothing), and if the store knows that manifest id it must be the very
manifest stored. Every table of the bundle goes through the same disclosure audit the site ran.
A refusal stores nothing.

Several files are verified in parallel (``--workers`` processes; the disclosure re-check is the
coordinator's main cost per bundle), then stored one by one in the order given; if any file is
refused, none is stored.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

from coordinator.store import DEFAULT_STORE, ResultsStore, StoreError
from coordinator.store.packing import pack
from coordinator.store.site_tables import SiteTableRow, put_site_table
from coordinator.trust.manifest import verify_bundle_checked
from optima_common.bundle import (
    ResultBundle,
    StudyManifest,
    read_bundle,
    read_manifest,
)
from optima_common.errors import CoordinatorError


def ingest_bundle_file(path: str | Path, store: ResultsStore, trust_dir: str | Path, *,
                       manifest: StudyManifest | None = None, coordinator_key: str | Path | None = None
                       ) -> ResultBundle:
    """Verify the bundle at ``path``, store it with its raw bytes, mark its site done; return it."""
    return ingest_bundle_files([path], store, trust_dir, manifest=manifest, coordinator_key=coordinator_key)[0][0]


def check_own_manifest(manifest: StudyManifest, store: ResultsStore, coordinator_key: str | Path | None) -> None:
    """A manifest given on the command line: signed by the coordinator's pinned key; the stored one if known."""
    from optima_common.bundle import (
        BundleError,
        key_id,
        load_public_key,
        manifest_sha256,
        verify,
    )

    if coordinator_key is None:
        raise BundleError("--manifest needs --coordinator-key (the coordinator's own public key) to check "
                          "who signed the manifest")
    pub = load_public_key(coordinator_key)
    try:
        verify(manifest, {key_id(pub): ("coordinator", pub)})
    except BundleError as exc:
        raise BundleError(f"manifest {manifest.manifest_id} is not signed by this coordinator's key: "
                          f"{str(exc).splitlines()[0]}") from None
    if store.has_manifest(manifest.manifest_id) and \
            manifest_sha256(store.manifest(manifest.manifest_id)) != manifest_sha256(manifest):
        raise BundleError(f"manifest {manifest.manifest_id} differs from the one in the results store; refused")


def ingest_bundle_files(paths: list[str | Path], store: ResultsStore, trust_dir: str | Path, *,
                        manifest: StudyManifest | None = None, coordinator_key: str | Path | None = None,
                        workers: int | None = None) -> list[tuple[ResultBundle, bool]]:
    """Verify every file (``workers`` processes at once), then store them in order; all or nothing.

    Returns ``(bundle, added)`` per file. A verification refusal (the first in the order given) is
    raised before anything is stored; a refusal by the store itself (a site's second, different
    answer) stops at that file, the files before it staying stored."""
    paths = [Path(p) for p in paths]
    if manifest is not None:
        check_own_manifest(manifest, store, coordinator_key)
    manifests = [manifest or _stored_manifest(p, store) for p in paths]
    workers = max(1, min(len(paths), workers or os.cpu_count() or 1))
    if workers == 1:
        done = [_verify(p, trust_dir, m) for p, m in zip(paths, manifests)]
    else:  # spawn: the workers share nothing with this process (open store, threads)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_verify, p, trust_dir, m) for p, m in zip(paths, manifests)]
            done = [f.result() for f in futures]  # the first refusal in the order given is raised
    return [_store(p, v, m, store) for p, v, m in zip(paths, done, manifests, strict=True)]


class _Verified(NamedTuple):
    bundle: ResultBundle
    sha256: str  # of the verified bundle's signed bytes
    packed: bytes  # those bytes as the store keeps them
    kept: SiteTableRow | None  # the table the disclosure re-check read (coordinator.pooling.site_tables)


def _verify(path: Path, trust_dir: str | Path, manifest: StudyManifest) -> _Verified:
    """``verify_bundle_file``, and what storing the bundle needs, computed in the worker."""
    from coordinator.pooling.site_tables import encode

    bundle, raw, sha256, table = verify_bundle_checked(path, trust_dir, manifest=manifest)
    return _Verified(bundle, sha256, pack(raw), None if table is None else encode(bundle, table, sha256))


_MANIFEST_ID = re.compile(rb'"manifest_id"\s*:\s*"([A-Za-z0-9_.-]{1,80})"')


def _manifest_id_of(path: Path) -> str:
    """The manifest id a bundle file names, read from its first bytes (a 30 MB bundle is not parsed for it).

    Only a hint: the verification refuses a bundle that answers another manifest than the one
    looked up here, so a wrong guess can only refuse, never admit."""
    with open(path, "rb") as f:
        m = _MANIFEST_ID.search(f.read(1 << 16))
    return m.group(1).decode("ascii") if m else read_bundle(path).manifest_id


def _stored_manifest(path: Path, store: ResultsStore) -> StudyManifest:
    manifest_id = _manifest_id_of(path)  # to find the manifest; the bundle is verified against it later
    if not store.has_manifest(manifest_id):
        raise StoreError(f"{path}: manifest {manifest_id} is not in the results store; give the manifest "
                         "file with --manifest")
    return store.manifest(manifest_id)


def _store(path: Path, v: _Verified, manifest: StudyManifest, store: ResultsStore) -> tuple[ResultBundle, bool]:
    """Store a bundle verified from ``path`` against ``manifest`` and the table its re-check read (bound to
    the bundle's sha256); mark the site done."""
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != v.sha256:  # verified from the same bytes; a file swapped in between: refused
        raise StoreError(f"{path} changed while it was being ingested; try again")
    store.add_manifest(manifest)
    bundle = v.bundle
    added = store.add_bundle(bundle, raw, packed=v.packed, verified_sha256=v.sha256)  # parsed and packed by the worker
    if v.kept is not None:
        put_site_table(store, bundle.manifest_id, bundle.site, v.kept)
    if added:
        store.set_site_status(bundle.manifest_id, bundle.site, "done", "ingested from a bundle file")
    return bundle, added


def cmd_ingest(args) -> int:
    if args.workers is not None and args.workers < 1:
        raise CoordinatorError(f"--workers must be at least 1, got {args.workers}")
    manifest = read_manifest(args.manifest) if args.manifest else None
    with ResultsStore.open(args.store) as store:
        done = ingest_bundle_files(args.bundle, store, args.trust, manifest=manifest,
                                   coordinator_key=args.coordinator_key, workers=args.workers)
    for bundle, added in done:
        again = "" if added else " (already stored: unchanged)"
        print(f"stored bundle from site {bundle.site} for manifest {bundle.manifest_id} in {args.store}{again}")
    return 0


def cmd_report(args) -> int:
    from coordinator.report import write_report
    from coordinator.store.ops import resolve_study

    with ResultsStore.open(args.store) as store:
        manifest_id = resolve_study(store, args.target)
        try:
            paths = write_report(store, manifest_id, Path(args.out))
        except OSError as exc:
            raise StoreError(f"cannot write the report to {args.out}: {exc.strerror or exc}") from None
    print(f"wrote {paths.html} and {paths.csv}")
    return 0


def cmd_view(args) -> int:
    from coordinator.viewer import make_server, open_store

    store = open_store(args.store)
    server = make_server(store, args.host, args.port)
    host, port = server.server_address[:2]
    print(f"serving the results in {args.store} at http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        store.close()
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """``coordinator ingest`` and ``coordinator report`` (called from ``coordinator.cli.main.build_parser``)."""
    p = sub.add_parser("ingest", help="verify sites' bundle files and load them into the results store")
    p.add_argument("bundle", nargs="+", help=".bundle files written by the sites (site-agent run-manifest or "
                   "release); several are verified in parallel, and stored only if all pass")
    p.add_argument("--store", default=DEFAULT_STORE, help="results store: SQLite file or SQLAlchemy URL "
                   f"(default: ./{DEFAULT_STORE})")
    p.add_argument("--trust", default="trust", help="folder of pinned site public keys <site>.pub (default: ./trust)")
    p.add_argument("--manifest", help="the signed manifest file the bundle answers, if not in the store yet")
    p.add_argument("--coordinator-key", help="the coordinator's own public key; a --manifest must be signed by it")
    p.add_argument("--workers", type=int, help="processes verifying bundles at once (default: one per CPU, "
                   "at most one per file)")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("report", help="write the offline HTML report and the network summarised_result CSV")
    p.add_argument("target", help="a manifest file, a manifest id, or a study id (its newest original send)")
    p.add_argument("--store", default=DEFAULT_STORE, help=f"results store (default: ./{DEFAULT_STORE})")
    p.add_argument("--out", required=True, help="folder for report.html and results.csv")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("view", help="serve the network results from the store in a browser (read-only)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       epilog="example: coordinator view --store demo-network/store.sqlite3 --port 8050")
    p.add_argument("--store", default=DEFAULT_STORE, help="results store: SQLite file or SQLAlchemy URL")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (keep it local; no authentication)")
    p.add_argument("--port", type=int, default=8050, help="port to listen on (0: any free port)")
    p.set_defaults(func=cmd_view)
