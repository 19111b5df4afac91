"""``coordinator``: the command line of the network's coordinating centre."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from coordinator import __version__


def cmd_demo(args) -> int:
    from coordinator.demo import DemoError, default_sites, run_demo

    if args.persons < 100:
        print("coordinator: error: --persons must be at least 100", file=sys.stderr)
        return 2
    try:
        run_demo(Path(args.out), default_sites(args.persons, args.seed), [Path(d) for d in args.definitions],
                 min_cell_count=args.min_cell_count)
    except DemoError as exc:
        print(f"coordinator: error: {exc}", file=sys.stderr)
        return 1
    print(f"\ncohort counts of every site written to {Path(args.out) / 'cohort_counts.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coordinator", description="optima-federated coordinator")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="run the lung study cohorts on a local three-site synthetic network")
    p.add_argument("--out", default="demo-network", help="folder for the sites' DuckDB CDMs and the counts")
    p.add_argument("--persons", type=int, default=20000, help="persons at the first site (others scale from it)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--definitions", nargs="+", default=["cohort_definitions/lung"],
                   help="cohort definition files or folders")
    p.add_argument("--min-cell-count", type=int, default=5, help="sites suppress counts between 1 and N-1")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("coordinator: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
