"""``coordinator``: the command line of the network's coordinating centre."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from coordinator import __version__
from coordinator.cli import ingest as ingest_cli
from coordinator.cli import network as network_cli
from coordinator.cli import operations as operations_cli
from coordinator.cli import training as training_cli
from optima_common.cli import configure, conventions, run_main


def cmd_keys_generate(args) -> int:
    from optima_common.bundle import generate_keypair, key_id, load_public_key

    private, public = generate_keypair(args.out, args.name, force=args.force)
    print(f"wrote {private} (keep secret) and {public}; key id {key_id(load_public_key(public))}")
    return 0


def cmd_verify(args) -> int:
    from coordinator.trust.manifest import verify_bundle_file

    trust = args.trust or "trust"
    bundle = verify_bundle_file(args.bundle, trust)
    print(f"OK: bundle from site {bundle.site} for manifest {bundle.manifest_id}, signed by a pinned key in "
          f"{trust}; min cell count {bundle.suppression.min_cell_count} (site floor {bundle.suppression.site_floor})")
    return 0


EXAMPLES = {  # one example per command, shown under its --help
    "demo": "demo --out demo-network",
    "certs": "certs --out pki --site north --site east --host coordinator.example.org",
    "study send": ("study send cohort_definitions/studies/sclc_stage_i_ii.json --sites north,east "
                   "--key keys/coordinator.key --out run1"),
    "study collect": "study collect run1/manifest.json --out run1",
    "study resend": "study resend 9629a26e23ee48b9 --site east --key keys/coordinator.key --out run1",
    "study cancel": "study cancel 9629a26e23ee48b9 --reason 'wrong spec'",
    "train": "train pathology --rounds 2 --out training/",
    "status": "status sclc_stage_i_ii --json",
    "sites add": "sites add north --key north.pub --min-cell-count 5",
    "sites remove": "sites remove north",
    "sites list": "sites list --json",
    "serve": "serve --schedule schedule.toml --once --key keys/coordinator.key --out runs/",
    "keys generate": "keys generate --out keys/ --name coordinator",
    "verify": "verify bundles/north.bundle --trust trust/",
    "ingest": "ingest north.bundle --manifest manifest.json",
    "report": "report sclc_stage_i_ii --out report/",
    "view": "view --store demo-network/store.sqlite3 --port 8050",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coordinator", description="optima-federated coordinator")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    network_cli.add_parsers(sub)  # demo, certs, study send|collect
    training_cli.add_train_parser(sub)  # train pathology|mammography
    operations_cli.add_parsers(sub)  # status, sites, serve

    keys = sub.add_parser("keys", help="signing keys").add_subparsers(dest="keys_command", required=True)
    p = keys.add_parser("generate", help="create an Ed25519 key pair (<name>.key, <name>.pub)")
    p.add_argument("--out", required=True, help="folder for the key files")
    p.add_argument("--name", default="coordinator")
    p.add_argument("--force", action="store_true", help="replace an existing key pair")
    p.set_defaults(func=cmd_keys_generate)

    p = sub.add_parser("verify", help="check a site's result bundle against the pinned site keys")
    p.add_argument("bundle", help="a .bundle file")
    p.add_argument("--trust", help="folder of pinned site public keys named <site>.pub (default: ./trust)")
    p.set_defaults(func=cmd_verify)
    ingest_cli.add_parsers(sub)  # ingest, report, view
    conventions(parser, EXAMPLES, prog="coordinator")  # defaults and an example in --help; -v/-q after the command
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(lambda: _main(argv))


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    configure(args)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("coordinator: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our output stopped (`--json | head`): not an error
        raise
    except Exception as exc:  # every failure is one line; our errors carry their exit code
        code = getattr(exc, "exit_code", None)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"coordinator: error: {first}" if code else f"coordinator: unexpected error: {type(exc).__name__}: "
              f"{first}", file=sys.stderr)
        return code or 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
