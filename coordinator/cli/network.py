"""Coordinator commands that drive a Flower network: ``demo``, ``certs``, ``study send|collect``."""

from __future__ import annotations

import argparse
import datetime as dt
import os
from pathlib import Path

from coordinator.cli.common import report_outcome, study_job
from coordinator.cli.operations import add_study_parsers
from coordinator.store import DEFAULT_STORE
from optima_common.definitions import definitions_dir
from optima_common.errors import CoordinatorError


def cmd_demo(args) -> int:
    from coordinator.demo.run import default_sites, run_demo

    if args.persons < 100:
        raise CoordinatorError("--persons must be at least 100")
    sites = default_sites(args.sites, args.persons, args.seed)
    definitions = Path(args.definitions) if args.definitions else definitions_dir()
    run_demo(Path(args.out), sites, definitions, min_cell_count=args.min_cell_count,
             reply_timeout=args.timeout, train=args.train, train_epochs=args.train_epochs)
    return 0


def cmd_certs(args) -> int:
    from coordinator.trust.pki import create_pki

    pki = create_pki(args.out, args.site, hosts=args.host, days=args.days, force=args.force)
    print(f"wrote the network CA ({pki.ca_cert}), the SuperLink certificate for "
          f"{', '.join(['localhost', '127.0.0.1', *args.host])} ({pki.server_cert}) and "
          f"{len(args.site)} SuperNode key pair(s) in {pki.folder / 'supernodes'}; give each site ca.crt and its "
          f"key, and register each .pub with: flwr supernode register <site>.pub <federation>")
    return 0


def cmd_study_send(args) -> int:
    from coordinator.flower.network import flwr_run
    from coordinator.flower.study import manifest_from_spec
    from coordinator.trust.manifest import sign_manifest
    from optima_common.bundle import load_private_key, write_manifest

    sites = [s.strip() for s in args.sites.split(",") if s.strip()]
    manifest = manifest_from_spec(args.spec, target_sites=sites, min_sites=args.min_sites or len(sites),
                                  analyses=args.analyses, extra_cohorts=args.extra_cohorts,
                                  min_cell_count=args.min_cell_count, valid_for=dt.timedelta(hours=args.valid_hours))
    out = Path(args.out)
    path = write_manifest(sign_manifest(manifest, load_private_key(args.key)), out / "manifest.json")
    print(f"signed manifest {manifest.manifest_id} for {len(sites)} site(s) -> {path}")
    outcome = flwr_run("study", study_job(args, path, out, args.timeout), workdir=out / "run", env=dict(os.environ),
                       federation=args.federation, timeout=args.timeout + 120)
    return report_outcome(outcome)


def cmd_study_collect(args) -> int:
    from coordinator.flower.network import flwr_run

    path = Path(args.manifest)
    if not path.is_file():
        raise CoordinatorError(f"{path}: manifest file not found")
    outcome = flwr_run("collect", study_job(args, path, Path(args.out), args.timeout), workdir=Path(args.out) / "run", env=dict(os.environ),
                       federation=args.federation, timeout=args.timeout + 120)
    return report_outcome(outcome)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust", default="trust", help="folder of pinned site public keys <site>.pub")
    p.add_argument("--store", default=DEFAULT_STORE, help=f"results store (file or SQLAlchemy URL; default {DEFAULT_STORE})")
    p.add_argument("--out", required=True, help="folder for report.html, results.csv, bundles/")
    p.add_argument("--federation", default="optima", help="SuperLink connection name in $FLWR_HOME/config.toml")
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the sites' answers")
    p.add_argument("--node-wait", type=float, default=60, help="seconds to wait for SuperNodes to connect")


def add_parsers(sub) -> None:
    p = sub.add_parser("demo", help="run the lung study over a local Flower network of synthetic sites")
    p.add_argument("--out", default="demo-network", help="folder for the sites, report, bundles, keys and store")
    p.add_argument("--sites", type=int, default=4,
                   help="number of synthetic sites (1-6): two lung registries, primary care, a breast cancer unit "
                        "with radiology reports, ...")
    p.add_argument("--persons", type=int, default=3000, help="persons at the first site (others scale from it)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--definitions", help="the network's cohort definitions folder (default: the packaged copy)")
    p.add_argument("--min-cell-count", type=int, default=5, help="sites suppress counts between 1 and N-1")
    p.add_argument("--timeout", type=float, default=900, help="seconds to wait for the sites' answers")
    p.add_argument("--train", choices=["pathology", "mammography"], help="also run a short federated training")
    p.add_argument("--train-epochs", type=int, default=1, help="local epochs per round of --train")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("certs", help="create the network CA, the SuperLink certificate and SuperNode keys")
    p.add_argument("--out", required=True, help="folder for the certificates and keys")
    p.add_argument("--site", action="append", default=[], help="a site that gets a SuperNode key (repeat)")
    p.add_argument("--host", action="append", default=[], help="SuperLink host name or address (repeat)")
    p.add_argument("--days", type=int, default=825)
    p.add_argument("--force", action="store_true", help="replace existing files")
    p.set_defaults(func=cmd_certs)

    study = sub.add_parser("study", help="send a study to the network's sites, or collect answers again")
    ssub = study.add_subparsers(dest="study_command", required=True)
    p = ssub.add_parser("send", help="sign a manifest for a study spec and send it over Flower")
    p.add_argument("spec", help="study spec JSON, e.g. cohort_definitions/studies/sclc_stage_i_ii.json")
    p.add_argument("--sites", required=True, help="comma-separated target sites")
    p.add_argument("--min-sites", type=int, help="sites that must answer (default: all)")
    p.add_argument("--analyses", nargs="+", default=["cohort_counts", "sclc_study"],
                   choices=["cohort_counts", "diagnostics", "sclc_study", "nlp_metastasis"])
    p.add_argument("--extra-cohorts", nargs="*", default=[], help="more catalog cohorts (e.g. for diagnostics)")
    p.add_argument("--min-cell-count", type=int, help="default: the spec's")
    p.add_argument("--valid-hours", type=float, default=48, help="manifest validity window")
    p.add_argument("--key", required=True, help="the coordinator's Ed25519 private key")
    _add_run_options(p)
    p.set_defaults(func=cmd_study_send)
    p = ssub.add_parser("collect", help="ask the sites again for a sent manifest (reviews, lost replies)")
    p.add_argument("manifest", help="the signed manifest file that was sent")
    _add_run_options(p)
    p.set_defaults(func=cmd_study_collect)
    add_study_parsers(ssub)  # resend, cancel
