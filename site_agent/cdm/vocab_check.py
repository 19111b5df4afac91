"""What this site's vocabulary will miss: the network's concept sets against the local CDM.

For every concept set of the definitions (the ``ConceptSets`` of each ATLAS cohort JSON, and the
standalone ``concept_sets/*.json`` files next to them):

* which concept ids are **missing** from the site's ``concept`` table, which are **non-standard**
  (``standard_concept`` not 'S') and which are **invalid** (``invalid_reason`` set);
* how many concepts the set **resolves** to there (items, plus descendants where the item says
  so, minus excluded items and their descendants: what Circe's codeset query selects);
* which of the site's own **unmapped** source codes (records with concept id 0) look relevant:
  their source concept has a "Maps to" into the set (an ETL that skipped the map), or its name
  (else the source value) shares at least two words with a concept of the set, covering at least
  60 % of that concept's words (carcinoma/cancer/tumour/neoplasm count as one word), and both
  agree on qualifiers such as non-, secondary, benign.

Read-only; runs on DuckDB and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from pathlib import Path

from pydantic import BaseModel, Field

from optima_common.errors import CdmValidationError
from site_agent.cdm.connection import CdmConnection

# clinical tables: (table, concept column, source value column, source concept column)
SOURCE_TABLES = (
    ("condition_occurrence", "condition_concept_id", "condition_source_value", "condition_source_concept_id"),
    ("procedure_occurrence", "procedure_concept_id", "procedure_source_value", "procedure_source_concept_id"),
    ("drug_exposure", "drug_concept_id", "drug_source_value", "drug_source_concept_id"),
    ("measurement", "measurement_concept_id", "measurement_source_value", "measurement_source_concept_id"),
    ("observation", "observation_concept_id", "observation_source_value", "observation_source_concept_id"),
)
_STOP = {"of", "and", "or", "the", "nos", "with", "without", "unspecified", "other", "code", "hospital", "local",
         "site", "part", "disease", "primary", "category", "ajcc", "uicc", "mapped", "unmapped"}
_SAME = {"carcinoma": "cancer", "neoplasm": "cancer", "neoplastic": "cancer", "tumor": "cancer", "tumour": "cancer",
         "malignancy": "cancer", "malignant": "cancer", "carcinomas": "cancer", "cancers": "cancer"}


def words(text: str) -> set[str]:
    out = set()
    for w in re.findall(r"[a-z0-9]+", (text or "").lower()):
        w = _SAME.get(w, w)
        if len(w) >= 3 and w not in _STOP:
            out.add(w)
    return out


_QUALIFIERS = {"non", "secondary", "benign", "metastatic", "history", "uncertain"}


def looks_relevant(source_text: str, concept_names: list[str]) -> bool:
    src = words(source_text)
    for name in concept_names:
        target = words(name)
        if src & _QUALIFIERS != target & _QUALIFIERS:  # "non-small cell" is not "small cell"
            continue
        shared = src & target
        if len(shared) >= 2 and len(shared) >= math.ceil(0.6 * len(target)):
            return True
    return False


class ItemStatus(BaseModel):
    concept_id: int
    concept_name: str
    include_descendants: bool
    excluded: bool
    status: str = Field(description="ok | missing | non-standard | invalid:<reason>")
    descendants: int = Field(0, description="descendants in the site's concept_ancestor (self excluded)")
    domain_id: str | None = None


class UnmappedCode(BaseModel):
    table: str
    source_value: str | None
    source_concept_id: int | None
    source_concept_name: str | None
    records: int
    persons: int
    why: str = Field(description="maps-to (the vocabulary maps it into the set) | name")


class ConceptSetCheck(BaseModel):
    name: str
    used_by: list[str]
    items: list[ItemStatus]
    resolved: int = Field(description="concepts the set resolves to in this vocabulary")
    unmapped: list[UnmappedCode] = []

    @property
    def missing(self) -> list[ItemStatus]:
        return [i for i in self.items if i.status == "missing"]

    @property
    def non_standard(self) -> list[ItemStatus]:
        return [i for i in self.items if i.status == "non-standard"]

    @property
    def invalid(self) -> list[ItemStatus]:
        return [i for i in self.items if i.status.startswith("invalid")]


class VocabCheckReport(BaseModel):
    cdm: str
    vocab_schema: str
    vocabulary_version: str | None
    checked_at: str = ""
    concept_sets: list[ConceptSetCheck]

    def summary(self) -> str:
        miss = {i.concept_id for s in self.concept_sets for i in s.missing}
        nonstd = {i.concept_id for s in self.concept_sets for i in s.non_standard}
        inval = {i.concept_id for s in self.concept_sets for i in s.invalid}
        codes = {(u.table, u.source_value, u.source_concept_id) for s in self.concept_sets for u in s.unmapped}
        return (f"{len(self.concept_sets)} concept sets: {len(miss)} concept ids missing, {len(nonstd)} non-standard, "
                f"{len(inval)} invalid; {len(codes)} unmapped source codes look relevant")


def default_definitions_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "cohort_definitions"


def read_concept_sets(paths: list[str | Path]) -> list[tuple[str, list[str], list[dict]]]:
    """(name, used_by, items) for every concept set in the cohort JSONs and concept_sets/*.json."""
    from site_agent.cohorts import collect_definitions

    sets: dict[str, tuple[list[str], list[dict]]] = {}
    for d in collect_definitions(paths):
        for cs in d.expression.get("ConceptSets") or []:
            name = cs.get("name") or f"{d.cohort_name} #{cs.get('id')}"
            used, _ = sets.setdefault(name, ([], (cs.get("expression") or {}).get("items") or []))
            used.append(d.cohort_name)
    for p in paths:
        folder = Path(p).expanduser().resolve()
        folder = folder if folder.is_dir() else folder.parent
        for base in (folder, folder.parent):
            catalog = base / "catalog.json"
            if not catalog.is_file():
                continue
            for entry in json.loads(catalog.read_text(encoding="utf-8")).get("concept_sets") or []:
                if entry.get("name") in sets:
                    continue
                f = base / entry["path"]
                if f.is_file():
                    sets[entry["name"]] = (["(study spec)"], json.loads(f.read_text(encoding="utf-8")).get("items") or [])
            break
    return [(name, used, items) for name, (used, items) in sets.items()]


def _ids_sql(ids) -> str:
    return ",".join(str(int(i)) for i in sorted(ids)) or "NULL"


def check_vocabulary(cdm: CdmConnection, definitions: list[str | Path] | None = None) -> VocabCheckReport:
    v = cdm.vocab_schema
    sets = read_concept_sets(definitions or [default_definitions_dir()])
    all_ids = {int(it["concept"]["CONCEPT_ID"]) for _, _, items in sets for it in items}
    tables = cdm.table_columns(v)
    lacking = [t for t in ("concept", "concept_ancestor", "concept_relationship") if t not in tables]
    if lacking:
        raise CdmValidationError(f"the vocabulary schema '{v}' has no {', '.join(lacking)} table",
                                 hint="pass --vocab-schema, or load a vocabulary with site-agent cdm vocab load")
    rows = cdm.query_df(f"SELECT concept_id, concept_name, standard_concept, invalid_reason, domain_id "
                        f"FROM {v}.concept WHERE concept_id IN ({_ids_sql(all_ids)})")
    present = {int(r.concept_id): r for r in rows.itertuples()}
    anc = cdm.query_df(f"SELECT ancestor_concept_id AS a, descendant_concept_id AS d FROM {v}.concept_ancestor "
                       f"WHERE ancestor_concept_id IN ({_ids_sql(all_ids)})")
    desc: dict[int, set[int]] = {}
    for a, d in zip(anc["a"], anc["d"]):
        desc.setdefault(int(a), set()).add(int(d))
    unmapped = _unmapped_codes(cdm)
    version = None
    try:
        version = cdm.scalar(f"SELECT vocabulary_version FROM {v}.vocabulary WHERE vocabulary_id = 'None'")
    except Exception:  # noqa: BLE001 - a vocabulary table without the 'None' row is still checkable
        version = None
    out = []
    for name, used_by, items in sets:
        statuses, include, exclude = [], set(), set()
        for it in items:
            cid = int(it["concept"]["CONCEPT_ID"])
            row = present.get(cid)
            if row is None:
                status = "missing"
            elif row.invalid_reason not in (None, "") and not _isnan(row.invalid_reason):
                status = f"invalid:{row.invalid_reason}"
            elif row.standard_concept != "S":
                status = "non-standard"
            else:
                status = "ok"
            with_desc = bool(it.get("includeDescendants"))
            reach = ({cid} if row is not None else set()) | (desc.get(cid, set()) if with_desc else set())
            (exclude if it.get("isExcluded") else include).update(reach)
            statuses.append(ItemStatus(concept_id=cid, concept_name=it["concept"].get("CONCEPT_NAME", ""),
                                       include_descendants=with_desc, excluded=bool(it.get("isExcluded")), status=status,
                                       descendants=len(desc.get(cid, set()) - {cid}),
                                       domain_id=None if row is None else row.domain_id))
        resolved = include - exclude
        names = [s.concept_name for s in statuses if not s.excluded]
        hits = []
        for u in unmapped:
            if u["maps_to"] & resolved:
                hits.append(UnmappedCode(**_public(u), why="maps-to"))
            elif looks_relevant(u["source_concept_name"] or u["source_value"] or "", names):
                hits.append(UnmappedCode(**_public(u), why="name"))
        out.append(ConceptSetCheck(name=name, used_by=used_by, items=statuses, resolved=len(resolved), unmapped=hits))
    return VocabCheckReport(cdm=cdm.display_url, vocab_schema=v, vocabulary_version=version,
                            checked_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), concept_sets=out)


REPORT_FILE = "vocab_check.json"  # in the site's state folder: `review show` prints its summary


def saved_summary(state_dir: str | Path) -> str | None:
    """One line about the last saved check in ``state_dir`` (None when there is none)."""
    path = Path(state_dir) / REPORT_FILE
    if not path.is_file():
        return None
    try:
        report = VocabCheckReport.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"vocabulary check: {path} is unreadable; run site-agent vocab check --out {path} again"
    missing = sorted({i.concept_id for s in report.concept_sets for i in s.missing})
    named = f" (missing: {', '.join(map(str, missing[:8]))}{' …' if len(missing) > 8 else ''})" if missing else ""
    return f"vocabulary check of {report.checked_at or '?'}: {report.summary()}{named}"


def _isnan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)


def _public(u: dict) -> dict:
    return {k: u[k] for k in ("table", "source_value", "source_concept_id", "source_concept_name", "records", "persons")}


def _unmapped_codes(cdm: CdmConnection) -> list[dict]:
    v, c = cdm.vocab_schema, cdm.cdm_schema
    tables = cdm.table_columns(c)
    found: list[dict] = []
    for table, col, sv, sc in SOURCE_TABLES:
        cols = tables.get(table, set())
        if not {col, sv, sc, "person_id"} <= cols:
            continue
        df = cdm.query_df(
            f"SELECT x.{sv} AS source_value, x.{sc} AS source_concept_id, count(*) AS records, "
            f"count(DISTINCT x.person_id) AS persons FROM {c}.{table} x WHERE x.{col} = 0 GROUP BY x.{sv}, x.{sc}")
        for r in df.itertuples():
            sid = None if r.source_concept_id is None or _isnan(r.source_concept_id) else int(r.source_concept_id)
            found.append({"table": table, "source_value": r.source_value, "source_concept_id": sid,
                          "records": int(r.records), "persons": int(r.persons)})
    src_ids = {u["source_concept_id"] for u in found if u["source_concept_id"]}
    names, maps = {}, {}
    if src_ids:
        for r in cdm.query_df(f"SELECT concept_id, concept_name FROM {v}.concept WHERE concept_id IN ({_ids_sql(src_ids)})").itertuples():
            names[int(r.concept_id)] = r.concept_name
        for r in cdm.query_df(f"SELECT concept_id_1 AS a, concept_id_2 AS b FROM {v}.concept_relationship "
                              f"WHERE relationship_id = 'Maps to' AND invalid_reason IS NULL "
                              f"AND concept_id_1 IN ({_ids_sql(src_ids)})").itertuples():
            maps.setdefault(int(r.a), set()).add(int(r.b))
    for u in found:
        u["source_concept_name"] = names.get(u["source_concept_id"])
        u["maps_to"] = maps.get(u["source_concept_id"], set())
    return found


def format_report(report: VocabCheckReport) -> str:
    """One table: what this site will miss, a line per concept set; then the names."""
    head = f"{'concept set':<36} {'items':>5} {'missing':>7} {'non-std':>7} {'invalid':>7} {'resolved':>8} {'unmapped codes':>14}"
    lines = [f"vocabulary check of {report.cdm} (schema {report.vocab_schema}, version {report.vocabulary_version or '?'})",
             head, "-" * len(head)]
    for s in report.concept_sets:
        recs = sum(u.records for u in s.unmapped)
        lines.append(f"{s.name[:36]:<36} {len(s.items):>5} {len(s.missing):>7} {len(s.non_standard):>7} "
                     f"{len(s.invalid):>7} {s.resolved:>8} {f'{len(s.unmapped)} ({recs} rec)' if s.unmapped else '0':>14}")
    detail = []
    for s in report.concept_sets:
        for i in s.missing + s.non_standard + s.invalid:
            detail.append(f"  {i.status:<13} {i.concept_id:>10} {i.concept_name}  [{s.name}]")
        for u in s.unmapped:
            detail.append(f"  unmapped      {u.table}: source value {u.source_value!r} (source concept "
                          f"{u.source_concept_id}, {u.source_concept_name or 'no name'}): {u.records} records, "
                          f"{u.persons} persons, by {u.why}  [{s.name}]")
    if detail:
        lines += ["", "what this site will miss:"] + detail
    lines += ["", report.summary()]
    return "\n".join(lines)
