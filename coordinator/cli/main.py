"""``coordinator``: the command line of the network's coordinating centre."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from coordinator import __version__
from coordinator.cli import ingest as ingest_cli
from coordinator.cli import network as network_cli
from coordinator.cli import operations as operations_cli
from coordinator.flower import training


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coordinator", description="optima-federated coordinator")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    network_cli.add_parsers(sub)  # demo, certs, study send|collect
    training.add_train_parser(sub)  # train pathology|mammography
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
    ingest_cli.add_parsers(sub)  # ingest, report
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("coordinator: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # every failure is one line; our errors carry their exit code
        code = getattr(exc, "exit_code", None)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"coordinator: error: {first}" if code else f"coordinator: unexpected error: {type(exc).__name__}: "
              f"{first}", file=sys.stderr)
        return code or 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
