"""Find and load ATLAS/Circe cohort definitions from files, folders and the catalog."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from optima_common.errors import CohortDefinitionError
from optima_common.fileio import read_document

CATALOG_FILE = "catalog.json"
#: ids of cohorts not in any catalog start here, above every network catalog id, so a user's
#: own definitions never overwrite a catalog cohort's rows in the shared write schema
USER_COHORT_ID_BASE = 1000


@dataclass(frozen=True)
class CohortDefinition:
    cohort_definition_id: int
    cohort_name: str
    path: Path
    sha256: str
    json_text: str

    @property
    def expression(self) -> dict:
        return json.loads(self.json_text)

    @property
    def inclusion_rule_names(self) -> list[str]:
        return [r.get("name") or f"Rule {i + 1}" for i, r in enumerate(self.expression.get("InclusionRules") or [])]


@dataclass(frozen=True)
class CatalogEntry:
    cohort_definition_id: int
    name: str
    path: Path
    sha256: str


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


MAX_JSON_DEPTH = 200  # ATLAS definitions nest a few dozen levels; deeper is a mistake or an attack


def _json_depth(doc) -> int:
    """Nesting depth of a parsed JSON document, without recursion."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return deepest


def _read_json(path: Path):
    doc = read_document(path, fmt="json", what="cohort definition", error=CohortDefinitionError)
    depth = _json_depth(doc)
    if depth > MAX_JSON_DEPTH:
        raise CohortDefinitionError(f"{path}: JSON nested {depth} levels deep; at most {MAX_JSON_DEPTH} are accepted")
    return doc


def is_cohort_definition(doc) -> bool:
    """An ATLAS cohort expression has PrimaryCriteria (possibly wrapped in 'expression')."""
    if not isinstance(doc, dict):
        return False
    if "PrimaryCriteria" in doc:
        return True
    inner = doc.get("expression")
    return isinstance(inner, dict) and "PrimaryCriteria" in inner


def load_catalog(catalog_path: Path) -> list[CatalogEntry]:
    doc = _read_json(catalog_path)
    if not isinstance(doc, dict) or not isinstance(doc.get("cohorts"), list):
        raise CohortDefinitionError(f"{catalog_path}: not a cohort catalog (expected a 'cohorts' list)")
    entries = []
    for item in doc["cohorts"]:
        try:
            entries.append(CatalogEntry(int(item["cohort_definition_id"]), str(item["name"]),
                                        (catalog_path.parent / item["path"]).resolve(), str(item["sha256"])))
        except (KeyError, TypeError, ValueError):
            raise CohortDefinitionError(f"{catalog_path}: catalog entry {item!r} lacks id, name, path or sha256") from None
    return entries


def _find_catalog(start: Path) -> Path | None:
    for folder in [start, *start.parents]:
        candidate = folder / CATALOG_FILE
        if candidate.is_file():
            return candidate
    return None


def _catalog_index(paths: list[Path]) -> dict[Path, CatalogEntry]:
    index: dict[Path, CatalogEntry] = {}
    seen: set[Path] = set()
    for p in paths:
        cat = _find_catalog(p if p.is_dir() else p.parent)
        if cat is not None and cat not in seen:
            seen.add(cat)
            for e in load_catalog(cat):
                index.setdefault(e.path, e)
    return index


def _refuse_network_id_reuse(catalog: dict[Path, CatalogEntry]) -> None:
    """A catalog id that is the network catalog's must name the network's definition (same sha256)."""
    from optima_common.definitions import definitions_dir

    try:
        network = {e.cohort_definition_id: e for e in load_catalog(definitions_dir() / CATALOG_FILE)}
    except (OSError, ValueError):  # no packaged catalog (a stripped install): nothing to protect
        return
    for entry in catalog.values():
        net = network.get(entry.cohort_definition_id)
        if net is not None and net.sha256 != entry.sha256:
            raise CohortDefinitionError(
                f"{entry.path}: cohort id {entry.cohort_definition_id} is the network catalog's "
                f"'{net.name}'; give this definition another id",
                hint=f"ids of your own cohorts should be {USER_COHORT_ID_BASE} or more")


def collect_definitions(paths: list[str | Path]) -> list[CohortDefinition]:
    """Definitions from files and folders, in the order given; a folder in catalog order.

    Concept-set files, catalogs and study specs inside folders are recognised and skipped;
    a file named explicitly must be a cohort definition. Names and ids come from the
    catalog when the file is listed there, else the file name and the next free id from
    ``USER_COHORT_ID_BASE``. A user catalog that gives a network catalog id to another
    definition is refused (the two would share one cohort id in the write schema).
    """
    resolved = [Path(p).expanduser().resolve() for p in paths]
    for p in resolved:
        if not p.exists():
            raise CohortDefinitionError(f"{p}: no such file or folder")
    catalog = _catalog_index(resolved)
    _refuse_network_id_reuse(catalog)
    ordered: list[tuple[Path, dict]] = []
    for p in resolved:
        if p.is_file():
            doc = _read_json(p)
            if not is_cohort_definition(doc):
                raise CohortDefinitionError(f"{p}: not an ATLAS cohort definition (no PrimaryCriteria)")
            ordered.append((p, doc))
            continue
        found = []
        for f in sorted(p.rglob("*.json")):
            if f.name == CATALOG_FILE:
                continue
            doc = _read_json(f)
            if is_cohort_definition(doc):
                found.append((f, doc))
        rank = {e.path: e.cohort_definition_id for e in catalog.values()}
        found.sort(key=lambda fd: (fd[0] not in rank, rank.get(fd[0], 0), str(fd[0])))
        ordered.extend(found)
    if not ordered:
        raise CohortDefinitionError(f"no cohort definitions found in {', '.join(map(str, resolved))}")
    seen_paths: set[Path] = set()
    used_ids = {catalog[f].cohort_definition_id for f, _ in ordered if f in catalog}
    next_id = USER_COHORT_ID_BASE
    out: list[CohortDefinition] = []
    for f, doc in ordered:
        if f in seen_paths:
            continue
        seen_paths.add(f)
        text = json.dumps(doc["expression"] if "PrimaryCriteria" not in doc else doc)
        sha = file_sha256(f)
        entry = catalog.get(f)
        if entry is not None:
            if entry.sha256 != sha:
                raise CohortDefinitionError(
                    f"{f}: sha256 {sha[:12]}… differs from the catalog's {entry.sha256[:12]}…",
                    hint="the file was changed after cataloguing; restore it or update the catalog",
                )
            cid, name = entry.cohort_definition_id, entry.name
        else:
            while next_id in used_ids:
                next_id += 1
            cid, name = next_id, f.stem
            used_ids.add(cid)
        out.append(CohortDefinition(cid, name, f, sha, text))
    return out
