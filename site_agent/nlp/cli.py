"""``site-agent nlp extract`` and ``site-agent nlp metastasis`` (registered by ``site_agent.cli``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from optima_common.errors import ConfigError
from site_agent.nlp.deps import require_nlp as _require_nlp


def read_reports(path: str | Path) -> list[tuple[str, str]]:
    """(id, text) pairs of a JSONL file; one clear error naming the line for anything malformed."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"reports file {p} does not exist", hint="give a JSONL file: one {\"id\":…, \"text\":…} per line") from None
    except IsADirectoryError:
        raise ConfigError(f"{p} is a folder, not a JSONL file", hint="give a JSONL file: one {\"id\":…, \"text\":…} per line") from None
    except OSError as e:
        raise ConfigError(f"cannot read reports file {p}: {e.strerror}", hint="check the path and its permissions") from None
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p} is not UTF-8 text (byte {e.start})", hint="save the reports as UTF-8 JSONL") from None
    out, seen = [], set()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p} line {n}: not valid JSON ({e.msg} at column {e.colno})",
                              hint="each line must be one JSON object such as {\"id\": \"r1\", \"text\": \"…\"}") from None
        if not isinstance(obj, dict):
            raise ConfigError(f"{p} line {n}: expected a JSON object, got {type(obj).__name__}",
                              hint="each line must be one JSON object such as {\"id\": \"r1\", \"text\": \"…\"}")
        rid, text = obj.get("id"), obj.get("text")
        if rid is None or (isinstance(rid, str) and not rid.strip()) or not isinstance(rid, (str, int)) or isinstance(rid, bool):
            raise ConfigError(f"{p} line {n}: missing or empty \"id\" (a string or integer)", hint="give every report an id")
        if not isinstance(text, str):
            raise ConfigError(f"{p} line {n}: missing \"text\" (a string) for report {rid!r}",
                              hint="give every report its text as a JSON string")
        if str(rid) in seen:
            raise ConfigError(f"{p} line {n}: report id {rid!r} appears twice", hint="ids must be unique")
        seen.add(str(rid))
        out.append((str(rid), text))
    if not out:
        raise ConfigError(f"{p} holds no reports", hint="one JSON object per line: {\"id\": \"r1\", \"text\": \"…\"}")
    return out


def cmd_extract(args) -> int:
    reports = read_reports(args.reports)
    _require_nlp()
    from site_agent.nlp.pipeline import extract_many, strip_system_lines

    results = list(extract_many((rid, strip_system_lines(text)) for rid, text in reports))
    if args.json:
        json.dump([r.to_json() for r in results], sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        for r in results:
            print(f"{r.id}\t{'metastatic' if r.metastatic else 'no metastasis'}\t{','.join(r.sites) or '-'}")
            for ev in r.evidence:
                print(f"    [{ev['modifiers']}] {ev['snippet']}")
        n = sum(r.metastatic for r in results)
        print(f"{len(results)} reports, {n} with metastasis", file=sys.stderr)
    return 0


def cmd_metastasis(args) -> int:
    _require_nlp()
    from site_agent.nlp.cdm_run import run_metastasis

    summary = run_metastasis(args)
    print(summary)
    return 0


def add_parsers(sub, add_cdm_options) -> None:
    nlp = sub.add_parser("nlp", help="radiology-report NLP: metastasis and its sites").add_subparsers(
        dest="nlp_command", required=True)
    p = nlp.add_parser("extract", help="metastasis and sites of each report of a JSONL file (the site's own sample)")
    p.add_argument("reports", help="JSONL file: one {\"id\": …, \"text\": …} object per line")
    p.add_argument("--json", action="store_true", help="print a JSON list (id, metastatic, sites, evidence)")
    p.set_defaults(func=cmd_extract)

    p = nlp.add_parser("metastasis", help="run the extractor over the CDM's note table; release aggregates only")
    add_cdm_options(p)
    p.add_argument("--out", required=True, help="folder for results.csv (suppressed summarised_result)")
    p.add_argument("--write-note-nlp", action="store_true", help="also write note_nlp rows into the write schema")
    p.add_argument("--min-cell-count", type=int, default=5, help="counts 1..N-1 are suppressed (default 5)")
    p.add_argument("--cdm-name", help="name of this database in the results (default: cdm_source abbreviation)")
    p.set_defaults(func=cmd_metastasis)
