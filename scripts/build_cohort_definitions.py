#!/usr/bin/env python3
"""How these ATLAS exports were produced (maintainer tool, not used at run time).

The network's 12 cohort definitions (spec: ``cohort_definitions/README.md``) are committed
as ATLAS/Circe ``CohortExpression`` JSON files -- byte-for-byte the artifacts sites approve
by sha256 via ``cohort_definitions/catalog.json``.  Rather than clicking them together in an
ATLAS instance, they are generated from the small Python description below:

* ``CONCEPT_SETS``: each concept set as a list of ``(key, flags)`` items, where ``key`` is a
  row key of ``site_agent/cdm/synth/vocab/concepts.csv`` and flags are ``desc``
  (includeDescendants), ``excl`` (isExcluded), ``mapped`` (includeMapped).  The full ATLAS
  concept object (CONCEPT_ID, CONCEPT_NAME, codes, domain, vocabulary, class, captions) is
  looked up in concepts.csv, so the JSONs always carry the ids recorded there.
* ``COHORTS``: id, catalog name, folder, description, and the criteria structure built with
  the helpers below (``condition``/``procedure``/``drug``/``measurement``/``death`` criteria,
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
the range concepts.csv uses for ids not yet verified against a public source), and for
concepts whose domain does not match the criterion they are used in.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONCEPTS_CSV = ROOT / "site_agent" / "cdm" / "synth" / "vocab" / "concepts.csv"
OUT_DIR = ROOT / "cohort_definitions"
CATALOG_VERSION = 1
PLACEHOLDER_MIN_ID = 2_000_000_000

# --------------------------------------------------------------------------------------
# Concept sets: name -> (standalone file stem, items).  Item = (concepts.csv key, flags).
# --------------------------------------------------------------------------------------

D = {"desc": True}  # include descendants
X = {"desc": True, "excl": True}  # exclude, with descendants
N = {}  # the concept alone


@dataclass(frozen=True)
class ConceptSetDef:
    name: str
    file_stem: str
    items: tuple[tuple[str, dict], ...]


CONCEPT_SETS: dict[str, ConceptSetDef] = {
    cs.name: cs
    for cs in [
        ConceptSetDef(
            "Lung cancer, broad",
            "lung_cancer_broad",
            (("LUNG_MALIGNANT", D), ("LUNG_PRIMARY_MALIGNANT", D), ("LUNG_NEOPLASM_UNCERTAIN", D)),
        ),
        ConceptSetDef("Primary lung cancer", "primary_lung_cancer", (("NSCLC", D), ("SCLC", D))),
        ConceptSetDef("NSCLC", "nsclc", (("NSCLC", D),)),
        ConceptSetDef("SCLC", "sclc", (("SCLC", D),)),
        ConceptSetDef(
            "Malignancy other than skin or lung",
            "malignancy_other_than_skin_or_lung",
            (("MALIGNANT_NEOPLASM", D), ("SKIN_MALIGNANT", X), ("LUNG_MALIGNANT", X), ("LUNG_PRIMARY_MALIGNANT", X)),
        ),
        ConceptSetDef(
            "Stage I-II",
            "stage_i_ii",
            (
                ("STAGE_1", D),
                ("STAGE_2", D),
                ("C_STAGE_1", D),
                ("C_STAGE_2", D),
                ("P_STAGE_1", D),
                ("P_STAGE_2", D),
            ),
        ),
        ConceptSetDef("TNM T1-T3", "tnm_t1_t3", (("T1", D), ("T2", D), ("T3", D))),
        ConceptSetDef("TNM T1-T2", "tnm_t1_t2", (("T1", D), ("T2", D))),
        ConceptSetDef("TNM T3", "tnm_t3", (("T3", D),)),
        ConceptSetDef("TNM N0", "tnm_n0", (("N0", D),)),
        ConceptSetDef("TNM N1", "tnm_n1", (("N1", D),)),
        ConceptSetDef("TNM M0", "tnm_m0", (("M0", D),)),
        ConceptSetDef(
            "Lung resection",
            "lung_resection",
            (("LUNG_EXCISION", D), ("LOBECTOMY", D), ("SLEEVE_RESECTION", D), ("PNEUMONECTOMY", D)),
        ),
        ConceptSetDef(
            "Lung chemotherapy",
            "lung_chemotherapy",
            (("CARBOPLATIN", D), ("CISPLATIN", D), ("ETOPOSIDE", D)),
        ),
        ConceptSetDef(
            "Lung radiotherapy",
            "lung_radiotherapy",
            (("RADIOTHERAPY", D), ("RT_STEREOTACTIC", D), ("RT_CONFORMAL", D), ("RT_IMRT", D)),
        ),
        ConceptSetDef("Disease progression", "disease_progression", (("PROGRESSION", D),)),
        # stage split and treatment events of the SCLC study (used by the study spec)
        ConceptSetDef("Stage I", "stage_i", (("STAGE_1", D), ("C_STAGE_1", D), ("P_STAGE_1", D))),
        ConceptSetDef("Stage II", "stage_ii", (("STAGE_2", D), ("C_STAGE_2", D), ("P_STAGE_2", D))),
        ConceptSetDef("Lobectomy", "lobectomy", (("LOBECTOMY", D),)),
        ConceptSetDef("Sleeve resection", "sleeve_resection", (("SLEEVE_RESECTION", D),)),
        ConceptSetDef("Pneumonectomy", "pneumonectomy", (("PNEUMONECTOMY", D),)),
        ConceptSetDef("Lung excision, other", "lung_excision_other", (("LUNG_EXCISION", N),)),
        ConceptSetDef("Carboplatin", "carboplatin", (("CARBOPLATIN", D),)),
        ConceptSetDef("Cisplatin", "cisplatin", (("CISPLATIN", D),)),
        ConceptSetDef("Etoposide", "etoposide", (("ETOPOSIDE", D),)),
        ConceptSetDef("Stereotactic radiotherapy", "stereotactic_radiotherapy", (("RT_STEREOTACTIC", D),)),
        ConceptSetDef("Conformal radiotherapy", "conformal_radiotherapy", (("RT_CONFORMAL", D),)),
        ConceptSetDef("Intensity modulated radiotherapy", "imrt", (("RT_IMRT", D),)),
        ConceptSetDef("Breast cancer", "breast_cancer", (("BREAST_MALIGNANT", D),)),
        ConceptSetDef(
            "Secondary malignancy",
            "secondary_malignancy",
            (("SECONDARY_MALIGNANT", D), ("LUNG_SECONDARY", D)),
        ),
    ]
}

# Concept sets that no cohort uses but a study spec does (treatment events, stage split).
STUDY_CONCEPT_SETS = ["Stage I", "Stage II", "TNM T3", "Lobectomy", "Sleeve resection", "Pneumonectomy", "Lung excision, other", "Carboplatin",
                      "Cisplatin", "Etoposide", "Stereotactic radiotherapy", "Conformal radiotherapy",
                      "Intensity modulated radiotherapy"]

# --------------------------------------------------------------------------------------
# Criteria helpers.  They return small marker dicts; ``_Builder`` turns them into Circe JSON
# (assigning per-cohort CodesetIds in order of first use, as ATLAS does).
# --------------------------------------------------------------------------------------

# Circe criterion name -> (type-exclude flag key, expected concept domain)
_DOMAIN_CRITERIA = {
    "ConditionOccurrence": ("ConditionTypeExclude", "Condition"),
    "ProcedureOccurrence": ("ProcedureTypeExclude", "Procedure"),
    "DrugExposure": ("DrugTypeExclude", "Drug"),
    "Measurement": ("MeasurementTypeExclude", "Measurement"),
}


def _crit(kind: str, concept_set: str | None, first: bool = False) -> dict:
    return {"kind": kind, "cs": concept_set, "first": first}


def condition(cs: str, first: bool = False) -> dict:
    return _crit("ConditionOccurrence", cs, first)


def procedure(cs: str) -> dict:
    return _crit("ProcedureOccurrence", cs)


def drug(cs: str) -> dict:
    return _crit("DrugExposure", cs)


def measurement(cs: str) -> dict:
    return _crit("Measurement", cs)


def death() -> dict:
    return _crit("Death", None)


def bound(days: int | None, coeff: int) -> dict:
    """Window end point: ``days`` before (coeff -1) / after (coeff 1) index; None = unbounded."""
    return {"coeff": coeff} if days is None else {"days": days, "coeff": coeff}


def window(start: dict, end: dict) -> dict:
    return {"start": start, "end": end}


EXACTLY, AT_MOST, AT_LEAST = 0, 1, 2  # Circe Occurrence.Type


def correlated(criteria: dict, start_window: dict, occurrence: tuple[int, int], *,
               ignore_observation_period: bool = False) -> dict:
    return {
        "criteria": criteria,
        "window": start_window,
        "occurrence": occurrence,
        "ignore_op": ignore_observation_period,
    }


def group(type_: str, criteria: list[dict] = (), groups: list[dict] = (), demographics: list[dict] = ()) -> dict:
    return {"type": type_, "criteria": list(criteria), "groups": list(groups), "demographics": list(demographics)}


def age_at_least(years: int) -> dict:
    return {"Age": {"Value": years, "Op": "gte"}}


@dataclass
class Rule:
    name: str
    description: str
    expression: dict


@dataclass
class CohortDef:
    cohort_id: int
    name: str
    folder: str
    description: str
    entry: dict
    kind: str  # "disease" (first event, end = op end) | "event" (all events, end = start) | "death"
    prior_days: int = 0
    rules: list[Rule] = field(default_factory=list)


# --------------------------------------------------------------------------------------
# The 12 cohorts (README.md table)
# --------------------------------------------------------------------------------------

# Stage window: 30 days before to 60 days after index, within the index observation period
_STAGE_WINDOW = window(bound(30, -1), bound(60, 1))


def _stage_meas(cs: str) -> dict:
    return correlated(measurement(cs), _STAGE_WINDOW, (AT_LEAST, 1))


SCLC_STAGE_RULES = [
    Rule(
        "Age >= 18",
        "Age at index (year of index minus year of birth) is 18 or more.",
        group("ALL", demographics=[age_at_least(18)]),
    ),
    Rule(
        "No history of cancer except skin cancer",
        "Exactly 0 conditions in 'Malignancy other than skin or lung' starting from all days "
        "before to 1 day before index, ignoring observation period limits.",
        group(
            "ALL",
            criteria=[
                correlated(
                    condition("Malignancy other than skin or lung"),
                    window(bound(None, -1), bound(1, -1)),
                    (EXACTLY, 0),
                    ignore_observation_period=True,
                )
            ],
        ),
    ),
    Rule(
        "Stage I or II recorded",
        "Between 30 days before and 60 days after index (within the index observation period): "
        "at least one measurement in 'Stage I-II', or the TNM group M0 AND ((N0 AND T1-T3) OR "
        "(N1 AND T1-T2)), each category a measurement in that window.",
        group(
            "ANY",
            criteria=[_stage_meas("Stage I-II")],
            groups=[
                group(
                    "ALL",
                    criteria=[_stage_meas("TNM M0")],
                    groups=[
                        group(
                            "ANY",
                            groups=[
                                group("ALL", criteria=[_stage_meas("TNM N0"), _stage_meas("TNM T1-T3")]),
                                group("ALL", criteria=[_stage_meas("TNM N1"), _stage_meas("TNM T1-T2")]),
                            ],
                        )
                    ],
                )
            ],
        ),
    ),
]

METASTASIS_RULE = Rule(
    "Metastasis recorded",
    "At least one condition in 'Secondary malignancy' starting from 30 days before index to any "
    "time after, within the index observation period.",
    group(
        "ALL",
        criteria=[
            correlated(
                condition("Secondary malignancy"),
                window(bound(30, -1), bound(None, 1)),
                (AT_LEAST, 1),
            )
        ],
    ),
)

COHORTS: list[CohortDef] = [
    CohortDef(1, "lung_cancer_broad", "lung",
              "First lung cancer diagnosis, broad (malignant tumor of lung or neoplasm of uncertain "
              "behavior of lung); ends at the end of the observation period.",
              condition("Lung cancer, broad", first=True), "disease"),
    CohortDef(2, "lung_cancer_narrow", "lung",
              "First primary malignant neoplasm of lung with at least 365 days of prior observation; "
              "ends at the end of the observation period.",
              condition("Primary lung cancer", first=True), "disease", prior_days=365),
    CohortDef(3, "nsclc", "lung",
              "First non-small cell lung cancer diagnosis; ends at the end of the observation period.",
              condition("NSCLC", first=True), "disease"),
    CohortDef(4, "sclc", "lung",
              "First small cell lung cancer diagnosis; ends at the end of the observation period.",
              condition("SCLC", first=True), "disease"),
    CohortDef(5, "sclc_stage_i_ii", "lung",
              "First small cell lung cancer diagnosis with 365 days prior observation, age >= 18, no "
              "prior cancer other than skin cancer, and stage I or II recorded around diagnosis; ends "
              "at the end of the observation period.",
              condition("SCLC", first=True), "disease", prior_days=365, rules=SCLC_STAGE_RULES),
    CohortDef(6, "lung_surgery", "lung",
              "Every lung resection procedure (lobectomy, sleeve resection, pneumonectomy); one-day "
              "events, era pad 0.",
              procedure("Lung resection"), "event"),
    CohortDef(7, "lung_chemotherapy", "lung",
              "Every exposure to carboplatin, cisplatin or etoposide; one-day events, era pad 0.",
              drug("Lung chemotherapy"), "event"),
    CohortDef(8, "lung_radiotherapy", "lung",
              "Every radiotherapy procedure (stereotactic, conformal, IMRT); one-day events, era pad 0.",
              procedure("Lung radiotherapy"), "event"),
    CohortDef(9, "disease_progression", "lung",
              "First recorded disease progression; ends at the end of the observation period.",
              condition("Disease progression", first=True), "disease"),
    CohortDef(10, "death", "lung",
              "Death record; starts and ends on the death date.",
              death(), "death"),
    CohortDef(11, "breast_cancer", "breast",
              "First malignant tumor of breast diagnosis; ends at the end of the observation period.",
              condition("Breast cancer", first=True), "disease"),
    CohortDef(12, "metastatic_breast_cancer", "breast",
              "First breast cancer diagnosis with a secondary malignancy recorded from 30 days before "
              "onwards in the same observation period; ends at the end of the observation period.",
              condition("Breast cancer", first=True), "disease", rules=[METASTASIS_RULE]),
]

# --------------------------------------------------------------------------------------
# JSON generation
# --------------------------------------------------------------------------------------

_STANDARD_CAPTION = {"S": "Standard", "C": "Classification", "N": "Non-Standard"}


def load_concepts(path: Path = CONCEPTS_CSV) -> dict[str, dict]:
    with path.open(newline="", encoding="utf-8") as fh:
        return {row["key"]: row for row in csv.DictReader(fh)}


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
