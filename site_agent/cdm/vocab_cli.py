"""``site-agent vocab check`` and ``site-agent cdm vocab load`` (registered by ``site_agent.cli``)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from optima_common.errors import ConfigError


def cmd_vocab_check(args) -> int:
    from site_agent.cdm import connect_cdm
    from site_agent.cdm.vocab_check import check_vocabulary, format_report

    with connect_cdm(args.cdm, cdm_schema=args.cdm_schema, vocab_schema=args.vocab_schema) as cdm:
        report = check_vocabulary(cdm, args.definitions)
    if args.out:
        from optima_common.fileio import write_atomic

        out = Path(args.out)
        if out.is_dir() or not out.parent.is_dir():
            raise ConfigError(f"cannot write {out}", hint="--out must be a file path in an existing folder")
        write_atomic(out, report.model_dump_json(indent=2).encode("utf-8"))
    print(report.model_dump_json(indent=2) if args.json else format_report(report))
    return 0


def cmd_vocab_load(args) -> int:
    from sqlalchemy.engine import make_url

    from site_agent.cdm import connect_cdm
    from site_agent.cdm.connection import resolve_cdm_url
    from site_agent.cdm.vocab_load import inspect_download, load_vocabulary

    inspect_download(args.folder)  # a wrong folder fails here, before any database is touched
    url = resolve_cdm_url(args.cdm)
    created = None
    if make_url(url).get_backend_name() == "duckdb":
        path = Path(make_url(url).database or "")
        if not path.name or str(path) == ":memory:":
            raise ConfigError("--cdm needs a DuckDB file path", hint="e.g. duckdb:///vocab.duckdb")
        if not path.parent.is_dir():
            raise ConfigError(f"folder {path.parent} does not exist")
        created = None if path.exists() else path
    t0 = time.perf_counter()
    try:
        with connect_cdm(url, cdm_schema=args.cdm_schema, vocab_schema=args.vocab_schema, must_exist=False) as cdm:
            counts = load_vocabulary(cdm, args.folder, progress=(lambda m: print(m, file=sys.stderr)) if args.verbose else (lambda m: None))
            schema = cdm.vocab_schema
    except BaseException:
        if created is not None:
            for p in (created, created.with_name(created.name + ".wal")):
                p.unlink(missing_ok=True)
        raise
    print(f"loaded {sum(counts.values())} rows into {len(counts)} vocabulary tables of schema {schema} "
          f"in {time.perf_counter() - t0:.1f}s (concept: {counts['concept']}, concept_ancestor: {counts['concept_ancestor']})")
    return 0


def add_parsers(sub, cdm_sub, add_cdm_options) -> None:
    p = sub.add_parser("vocab", help="the site's vocabulary against the network's concept sets")
    vsub = p.add_subparsers(dest="vocab_command", required=True)
    p = vsub.add_parser("check", help="what this site's vocabulary and mapping will miss, per concept set")
    add_cdm_options(p, write=False)
    p.add_argument("--definitions", nargs="+", help="cohort JSON files or folders (default: the network's "
                   "cohort_definitions/)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--out", help="also save the JSON report here; saved as STATE_DIR/vocab_check.json, "
                   "`site-agent review show` prints its summary")
    p.set_defaults(func=cmd_vocab_check)

    p = cdm_sub.add_parser("vocab", help="the CDM's vocabulary tables")
    lsub = p.add_subparsers(dest="cdm_vocab_command", required=True)
    p = lsub.add_parser("load", help="load an Athena vocabulary download (all or nothing)",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="unzipped Athena download (CONCEPT.csv, CONCEPT_ANCESTOR.csv, …)")
    p.add_argument("--cdm", required=True, help="SQLAlchemy URL or .duckdb path (a new DuckDB file is created)")
    p.add_argument("--cdm-schema", help="CDM schema (default: main for DuckDB, public for PostgreSQL)")
    p.add_argument("--vocab-schema", help="schema to load into (default: the CDM schema; created if absent)")
    p.add_argument("-v", "--verbose", action="store_true", help="a progress line per table")
    p.set_defaults(func=cmd_vocab_load)
