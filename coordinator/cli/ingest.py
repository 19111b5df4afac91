"""``coordinator ingest FILE``: load a site's signed bundle file into the results store (offline mode).

The bundle is verified first (:func:`coordinator.trust.manifest.verify_bundle_file`: pinned site key
named like the site, signature, suppression record, and the exact signed manifest it answers);
only then is it stored and the site marked ``done``. The manifest must be in the store already
or be given (``--manifest FILE``): a given manifest must be signed by the coordinator's own
key (``--coordinator-key``, its public key; a site's signature over a manifest the coordinator
never issued vouches for nothing), and if the store knows that manifest id it must be the very
manifest stored. Every table of the bundle goes through the same disclosure audit the site ran.
A refusal stores nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from coordinator.store import DEFAULT_STORE, ResultsStore, StoreError
from coordinator.trust.manifest import verify_bundle_file
from optima_common.bundle import (
    ResultBundle,
    StudyManifest,
    read_bundle,
    read_manifest,
    render,
)


def ingest_bundle_file(path: str | Path, store: ResultsStore, trust_dir: str | Path, *,
                       manifest: StudyManifest | None = None, coordinator_key: str | Path | None = None
                       ) -> ResultBundle:
    """Verify the bundle at ``path``, store it with its raw bytes, mark its site done; return it."""
    return _ingest(path, store, trust_dir, manifest, coordinator_key)[0]


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


def _ingest(path: str | Path, store: ResultsStore, trust_dir: str | Path,
            manifest: StudyManifest | None, coordinator_key: str | Path | None = None) -> tuple[ResultBundle, bool]:
    path = Path(path)
    if manifest is not None:
        check_own_manifest(manifest, store, coordinator_key)
    if manifest is None:
        manifest_id = read_bundle(path).manifest_id  # parsing only, to find the manifest
        if not store.has_manifest(manifest_id):
            raise StoreError(f"{path}: manifest {manifest_id} is not in the results store; give the manifest "
                             "file with --manifest")
        manifest = store.manifest(manifest_id)
    bundle = verify_bundle_file(path, trust_dir, manifest=manifest)
    raw = path.read_bytes()
    if render(bundle) != raw:  # verify_bundle_file read the same bytes; a file swapped in between is refused
        raise StoreError(f"{path} changed while it was being ingested; try again")
    store.add_manifest(manifest)
    added = store.add_bundle(bundle, raw)
    if added:
        store.set_site_status(bundle.manifest_id, bundle.site, "done", "ingested from a bundle file")
    return bundle, added


def cmd_ingest(args) -> int:
    manifest = read_manifest(args.manifest) if args.manifest else None
    with ResultsStore.open(args.store) as store:
        bundle, added = _ingest(args.bundle, store, args.trust, manifest, args.coordinator_key)
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


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """``coordinator ingest`` and ``coordinator report`` (called from ``coordinator.cli.main.build_parser``)."""
    p = sub.add_parser("ingest", help="verify a site's bundle file and load it into the results store")
    p.add_argument("bundle", help="a .bundle file written by the site (site-agent run-study)")
    p.add_argument("--store", default=DEFAULT_STORE, help="results store: SQLite file or SQLAlchemy URL "
                   f"(default: ./{DEFAULT_STORE})")
    p.add_argument("--trust", default="trust", help="folder of pinned site public keys <site>.pub (default: ./trust)")
    p.add_argument("--manifest", help="the signed manifest file the bundle answers, if not in the store yet")
    p.add_argument("--coordinator-key", help="the coordinator's own public key; a --manifest must be signed by it")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("report", help="write the offline HTML report and the network summarised_result CSV")
    p.add_argument("target", help="a manifest id, or a study id (its newest manifest)")
    p.add_argument("--store", default=DEFAULT_STORE, help=f"results store (default: ./{DEFAULT_STORE})")
    p.add_argument("--out", required=True, help="folder for report.html and results.csv")
    p.set_defaults(func=cmd_report)
