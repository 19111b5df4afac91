#!/usr/bin/env python3
"""How these ATLAS exports were produced (maintainer tool, not used at run time).

The network's 12 cohort definitions (spec: ``cohort_definitions/README.md``) are committed
as ATLAS/Circe ``CohortExpression`` JSON files -- byte-for-byte the artifacts sites approve
by sha256 via ``cohort_definitions/catalog.json``.  Rather than clicking them together in an
ATLAS instance, they are generated from the small Python description in ``cohort_declarations.py``:

* ``CONCEPT_SETS``: each concept set as a list of ``(key, flags)`` items, where ``key`` is a
  row key of ``site_agent/cdm/synth/vocab/concepts.csv`` and flags are ``desc``
  (includeDescendants), ``excl`` (isExcluded), ``mapped`` (includeMapped).  The full ATLAS
  concept object (CONCEPT_ID, CONCEPT_NAME, codes, domain, vocabulary, class, captions) is
  looked up in concepts.csv, so the JSONs always carry the ids recorded there.
* ``COHORTS``: id, catalog name, folder, description, and the criteria structure built with
  the helpers there (``condition``/``procedure``/``drug``/``measurement``/``death`` criteria,
  ``correlated`` criteria with ``window``/``occurrence``, nested ``group``\\s).

Running it writes

* ``cohort_definitions/{lung,breast}/<name>.json``   (ATLAS cohort expression export),
* ``cohort_definitions/concept_sets/<snake_name>.json`` (ATLAS concept set expression export,
  ``{"items": [...]}``),
* ``cohort_definitions/catalog.json`` (ids, names, paths, sha256 of the file bytes).

Output is deterministic (fixed key order, 2-space indent, trailing newline), so re-running
it without changes reproduces the same bytes and hashes.  When concepts.csv is corrected,
re-run it and commit the regenerated files together with the CSV (the catalog hashes change,
i.e. sites must re-approve).

Usage::

    python scripts/build_cohort_definitions.py            # (re)write all files
    python scripts/build_cohort_definitions.py --check    # exit 1 if any file is stale
    python scripts/build_cohort_definitions.py --strict   # also fail on placeholder ids

Warnings are printed for concept ids that are 0 or look like placeholders (>= 2,000,000,000,
the range concepts.csv uses for local rows only the synthetic generator needs), for ids with
no STRONG or MODERATE row in ``cohort_definitions/vocab_evidence.csv``, and for concepts whose
domain does not match the criterion they are used in.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONCEPTS_CSV = ROOT / "site_agent" / "cdm" / "synth" / "vocab" / "concepts.csv"
OUT_DIR = ROOT / "cohort_definitions"
EVIDENCE_CSV = OUT_DIR / "vocab_evidence.csv"  # every id a definition uses, with its public source
EVIDENCE_STRENGTHS = ("STRONG", "MODERATE")
CATALOG_VERSION = 1
PLACEHOLDER_MIN_ID = 2_000_000_000


sys.path.insert(0, str(Path(__file__).resolve().parent))
from cohort_declarations import (
    _DOMAIN_CRITERIA,
    COHORTS,
    CONCEPT_SETS,
    STUDY_CONCEPT_SETS,
    CohortDef,
    ConceptSetDef,
)

# --------------------------------------------------------------------------------------
# JSON generation
# --------------------------------------------------------------------------------------

_STANDARD_CAPTION = {"S": "Standard", "C": "Classification", "N": "Non-Standard"}


def load_concepts(path: Path = CONCEPTS_CSV) -> dict[str, dict]:
    with path.open(newline="", encoding="utf-8") as fh:
        return {row["key"]: row for row in csv.DictReader(fh)}


def load_evidence(path: Path = EVIDENCE_CSV) -> dict[int, dict]:
    """concept_id -> evidence row, for ids recorded as verified strongly enough to use."""
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as fh:
        return {int(r["concept_id"]): r for r in csv.DictReader(fh) if r["strength"] in EVIDENCE_STRENGTHS}


_EVIDENCE = load_evidence()


def concept_json(row: dict) -> dict:
    std = (row.get("standard_concept") or "").strip() or "N"
    return {
        "CONCEPT_ID": int(row["concept_id"]),
        "CONCEPT_NAME": row["concept_name"],
        "STANDARD_CONCEPT": std,
        "STANDARD_CONCEPT_CAPTION": _STANDARD_CAPTION.get(std, "Unknown"),
        "INVALID_REASON": "V",
        "INVALID_REASON_CAPTION": "Valid",
        "CONCEPT_CODE": row.get("concept_code") or "",
        "DOMAIN_ID": row["domain_id"],
        "VOCABULARY_ID": row["vocabulary_id"],
        "CONCEPT_CLASS_ID": row["concept_class_id"],
    }


def concept_set_expression(cs: ConceptSetDef, concepts: dict[str, dict], warn) -> dict:
    items = []
    for key, flags in cs.items:
        if key not in concepts:
            raise SystemExit(f"concept set {cs.name!r}: key {key!r} not in {CONCEPTS_CSV}")
        row = concepts[key]
        cid = int(row["concept_id"])
        if cid == 0:
            warn(f"concept set {cs.name!r}: {key} has concept_id 0")
        elif cid >= PLACEHOLDER_MIN_ID:
            warn(f"concept set {cs.name!r}: {key} has placeholder concept_id {cid}")
        elif cid not in _EVIDENCE:
            warn(f"concept set {cs.name!r}: {key} ({cid}) has no evidence row in {EVIDENCE_CSV.name}")
        items.append(
            {
                "concept": concept_json(row),
                "isExcluded": bool(flags.get("excl", False)),
                "includeDescendants": bool(flags.get("desc", False)),
                "includeMapped": bool(flags.get("mapped", False)),
            }
        )
    ids = [it["concept"]["CONCEPT_ID"] for it in items]
    if len(set(ids)) != len(ids):
        warn(f"concept set {cs.name!r}: duplicate concept ids {ids}")
    return {"items": items}


class _Builder:
    """Builds one cohort's Circe JSON; assigns CodesetIds 0.. in order of first use."""

    def __init__(self, concepts: dict[str, dict], warn):
        self.concepts = concepts
        self.warn = warn
        self.codeset_ids: dict[str, int] = {}

    def codeset(self, name: str, domain: str) -> int:
        if name not in CONCEPT_SETS:
            raise SystemExit(f"unknown concept set {name!r}")
        for key, flags in CONCEPT_SETS[name].items:
            row = self.concepts.get(key)
            if row and not flags.get("excl") and row["domain_id"] != domain:
                self.warn(f"concept set {name!r}: {key} has domain {row['domain_id']}, used as {domain}")
        return self.codeset_ids.setdefault(name, len(self.codeset_ids))

    def criterion(self, c: dict) -> dict:
        kind = c["kind"]
        if kind == "Death":
            return {"Death": {"DeathTypeExclude": False}}
        exclude_key, domain = _DOMAIN_CRITERIA[kind]
        body: dict = {"CodesetId": self.codeset(c["cs"], domain)}
        if c["first"]:
            body["First"] = True
        body[exclude_key] = False
        return {kind: body}

    @staticmethod
    def _bound(b: dict) -> dict:
        return {"Days": b["days"], "Coeff": b["coeff"]} if "days" in b else {"Coeff": b["coeff"]}

    def correlated(self, cc: dict) -> dict:
        occ_type, occ_count = cc["occurrence"]
        return {
            "Criteria": self.criterion(cc["criteria"]),
            "StartWindow": {
                "Start": self._bound(cc["window"]["start"]),
                "End": self._bound(cc["window"]["end"]),
                "UseIndexEnd": False,
                "UseEventEnd": False,
            },
            "RestrictVisit": False,
            "IgnoreObservationPeriod": cc["ignore_op"],
            "Occurrence": {"Type": occ_type, "Count": occ_count, "IsDistinct": False},
        }

    def group(self, g: dict) -> dict:
        return {
            "Type": g["type"],
            "CriteriaList": [self.correlated(c) for c in g["criteria"]],
            "DemographicCriteriaList": [dict(d) for d in g["demographics"]],
            "Groups": [self.group(sub) for sub in g["groups"]],
        }

    def cohort(self, cd: CohortDef) -> dict:
        primary = {
            "CriteriaList": [self.criterion(cd.entry)],
            "ObservationWindow": {"PriorDays": cd.prior_days, "PostDays": 0},
            "PrimaryCriteriaLimit": {"Type": "All" if cd.kind == "event" else "First"},
        }
        rules = [
            {"name": r.name, "description": r.description, "expression": self.group(r.expression)}
            for r in cd.rules
        ]
        limit = "All" if cd.kind == "event" else "First"
        out: dict = {
            "cdmVersionRange": ">=5.0.0",
            "PrimaryCriteria": primary,
            "ConceptSets": [
                {
                    "id": cid,
                    "name": name,
                    "expression": concept_set_expression(CONCEPT_SETS[name], self.concepts, self.warn),
                }
                for name, cid in sorted(self.codeset_ids.items(), key=lambda kv: kv[1])
            ],
            "QualifiedLimit": {"Type": limit},
            "ExpressionLimit": {"Type": limit},
            "InclusionRules": rules,
        }
        if cd.kind in ("event", "death"):
            out["EndStrategy"] = {"DateOffset": {"DateField": "StartDate", "Offset": 0}}
        out["CensoringCriteria"] = []
        out["CollapseSettings"] = {"CollapseType": "ERA", "EraPad": 0}
        out["CensorWindow"] = {}
        return out


def dumps(obj) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def build(concepts: dict[str, dict] | None = None, warn=None) -> dict[str, bytes]:
    """All generated files: path relative to cohort_definitions/ -> bytes."""
    concepts = load_concepts() if concepts is None else concepts
    warnings: list[str] = []
    warn = warn or (lambda msg: warnings.append(msg) if msg not in warnings else None)
    files: dict[str, bytes] = {}
    cohort_entries = []
    used_sets: list[str] = []
    for cd in sorted(COHORTS, key=lambda c: c.cohort_id):
        b = _Builder(concepts, warn)
        data = dumps(b.cohort(cd))
        path = f"{cd.folder}/{cd.name}.json"
        files[path] = data
        cohort_entries.append(
            {
                "cohort_definition_id": cd.cohort_id,
                "name": cd.name,
                "path": path,
                "sha256": hashlib.sha256(data).hexdigest(),
                "description": cd.description,
            }
        )
        used_sets += [n for n in b.codeset_ids if n not in used_sets]
    used_sets += [n for n in STUDY_CONCEPT_SETS if n not in used_sets]
    set_entries = []
    for name in used_sets:
        cs = CONCEPT_SETS[name]
        data = dumps(concept_set_expression(cs, concepts, warn))
        path = f"concept_sets/{cs.file_stem}.json"
        files[path] = data
        set_entries.append({"name": name, "path": path, "sha256": hashlib.sha256(data).hexdigest()})
    catalog = {"catalog_version": CATALOG_VERSION, "cohorts": cohort_entries, "concept_sets": set_entries}
    files["catalog.json"] = dumps(catalog)
    build.warnings = warnings  # type: ignore[attr-defined]
    return files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 if files differ")
    ap.add_argument("--strict", action="store_true", help="exit 1 on placeholder/zero concept ids")
    args = ap.parse_args(argv)
    warnings: list[str] = []
    files = build(warn=lambda m: warnings.append(m) if m not in warnings else None)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    stale = [p for p, data in files.items() if not (OUT_DIR / p).is_file() or (OUT_DIR / p).read_bytes() != data]
    # generated folders must hold nothing else (tests compare them with the catalog)
    extra = sorted(
        p.relative_to(OUT_DIR).as_posix()
        for d in ("lung", "breast", "concept_sets")
        for p in (OUT_DIR / d).glob("*.json")
        if p.relative_to(OUT_DIR).as_posix() not in files
    )
    if args.check:
        for p in stale:
            print(f"stale: cohort_definitions/{p}", file=sys.stderr)
        for p in extra:
            print(f"not generated: cohort_definitions/{p}", file=sys.stderr)
    else:
        for p in stale:
            target = OUT_DIR / p
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(files[p])
            print(f"wrote cohort_definitions/{p}")
        for p in extra:
            (OUT_DIR / p).unlink()
            print(f"removed cohort_definitions/{p}")
        print(f"{len(files)} files, {len(stale)} (re)written")
    if args.check and (stale or extra):
        return 1
    if args.strict and warnings:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
