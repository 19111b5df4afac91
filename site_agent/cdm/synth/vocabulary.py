"""The synthetic vocabulary subset: CSV loading, hierarchy closure and the CDM vocabulary tables.

Everything refers to concepts by *key* (the first column of ``vocab/concepts.csv``); ids come
from the CSV at run time, so correcting an id there never needs a code change.

* ``concepts.csv``  key -> concept row (real OMOP ids where verified, see its ``source`` column)
* ``hierarchy.csv`` child_key,parent_key: direct "Is a" edges between standard concepts
* ``maps_to.csv``   source_key -> standard_key: "Maps to" from source (ICD10CM, ICD10, ICDO3)
  concepts to standard ones

A few *local* source concepts (vocabulary ``OPTIMA_LOCAL``, ids >= 2,000,000,000, never
standard) are created here in code: hospital codes, some mapped to lung-cancer concepts and
some deliberately unmapped (records using them get ``condition_concept_id = 0``).
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources

import numpy as np
import pandas as pd

VOCAB_VERSION = "v5.0 31-AUG-26 (synthetic subset)"
VALID_START = dt.date(1970, 1, 1)
VALID_END = dt.date(2099, 12, 31)
LOCAL_VOCAB = "OPTIMA_LOCAL"
LOCAL_ID_BASE = 2_000_900_000  # local ids live above the CSV's placeholder ids (2,000,000,0xx)

# key, code, name, standard key it maps to (None = unmapped on purpose)
LOCAL_CONCEPTS: list[tuple[str, str, str, str | None]] = [
    ("LOCAL_LUNG_CA", "LCA01", "lung carcinoma, hospital code", "LUNG_PRIMARY_MALIGNANT"),
    ("LOCAL_SCLC", "LCA-SC", "small cell lung cancer, hospital code (mapped)", "SCLC"),
    ("LOCAL_ADENO", "LCA-AD", "lung adenocarcinoma, hospital code", "LUNG_ADENOCARCINOMA"),
    ("LOCAL_SCLC_UNMAPPED", "LCA-SC-H", "small cell lung carcinoma, hospital code", None),
    ("LOCAL_LUNG_UNMAPPED", "LCA-X", "lung tumour NOS, hospital code", None),
    ("LOCAL_NSCLC_UNMAPPED", "LCA-NS-H", "non-small cell lung carcinoma, hospital code", None),
]

SYNONYMS: list[tuple[str, str]] = [
    ("SCLC", "Small cell lung cancer"),
    ("SCLC", "Oat cell carcinoma of lung"),
    ("LUNG_MALIGNANT", "Lung cancer"),
    ("LUNG_PRIMARY_MALIGNANT", "Primary lung cancer"),
    ("NSCLC", "NSCLC"),
    ("BREAST_MALIGNANT", "Breast cancer"),
]

RELATIONSHIPS = [  # id, name, hierarchical, defines ancestry, reverse, concept id
    ("Is a", "Is a", "1", "1", "Subsumes", 44818821),
    ("Subsumes", "Subsumes", "1", "1", "Is a", 44818723),
    ("Maps to", "Non-standard to Standard map (OMOP)", "0", "0", "Mapped from", 44818977),
    ("Mapped from", "Standard to Non-standard map (OMOP)", "0", "0", "Maps to", 44818976),
]


def _read_csv(name: str) -> pd.DataFrame:
    path = resources.files("site_agent.cdm.synth") / "vocab" / name
    with path.open("r", encoding="utf-8") as fh:
        return pd.read_csv(fh, dtype=str, keep_default_na=False)


@dataclass
class Vocabulary:
    concepts: pd.DataFrame  # one row per key, incl. local concepts
    edges: list[tuple[str, str]]  # (child_key, parent_key)
    maps: dict[str, str]  # source_key -> standard_key
    id: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls) -> Vocabulary:
        c = _read_csv("concepts.csv")
        c["concept_id"] = c["concept_id"].astype(np.int64)
        c["concept_code"] = np.where(c["concept_code"].str.strip() == "", c["key"], c["concept_code"])
        c["standard_concept"] = c["standard_concept"].str.strip().replace("", None)
        base = max(LOCAL_ID_BASE, int(c["concept_id"].max()) + 1)
        local = pd.DataFrame(
            {
                "key": [k for k, *_ in LOCAL_CONCEPTS],
                "concept_id": [base + i + 1 for i in range(len(LOCAL_CONCEPTS))],
                "concept_name": [n for _, _, n, _ in LOCAL_CONCEPTS],
                "domain_id": "Condition",
                "vocabulary_id": LOCAL_VOCAB,
                "concept_class_id": "Local code",
                "standard_concept": None,
                "concept_code": [code for _, code, _, _ in LOCAL_CONCEPTS],
            }
        )
        concepts = pd.concat([c.drop(columns=["source"], errors="ignore"), local], ignore_index=True)
        h = _read_csv("hierarchy.csv")
        m = _read_csv("maps_to.csv")
        maps = dict(zip(m["source_key"], m["standard_key"]))
        maps.update({k: s for k, _, _, s in LOCAL_CONCEPTS if s is not None})
        v = cls(concepts=concepts, edges=list(zip(h["child_key"], h["parent_key"])), maps=maps)
        v.id = dict(zip(concepts["key"], concepts["concept_id"].astype(int)))
        unknown = {k for e in v.edges for k in e} | set(maps) | set(maps.values())
        missing = unknown - set(v.id)
        if missing:
            raise ValueError(f"vocab CSVs refer to unknown keys: {sorted(missing)}")
        return v

    @cached_property
    def standard_keys(self) -> set[str]:
        return set(self.concepts.loc[self.concepts["standard_concept"] == "S", "key"])

    # ---- hierarchy -------------------------------------------------------------------------
    @cached_property
    def closure(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(ancestor_key, descendant_key) -> (min_levels, max_levels), self pairs included."""
        children: dict[str, list[str]] = {}
        for child, parent in self.edges:
            children.setdefault(parent, []).append(child)
        std = self.concepts.loc[self.concepts["standard_concept"].notna(), "key"]
        out: dict[tuple[str, str], tuple[int, int]] = {}
        for anc in std:
            # min levels by BFS; max levels by longest-path DFS (the graph is a small DAG)
            dist = {anc: 0}
            q = deque([anc])
            while q:
                node = q.popleft()
                for ch in children.get(node, []):
                    if ch not in dist:
                        dist[ch] = dist[node] + 1
                        q.append(ch)
            longest: dict[str, int] = {}

            def walk(node: str, depth: int) -> None:
                if longest.get(node, -1) >= depth:
                    return
                longest[node] = depth
                for ch in children.get(node, []):
                    walk(ch, depth + 1)

            walk(anc, 0)
            for desc, d in dist.items():
                out[(anc, desc)] = (d, longest[desc])
        return out

    def descendants(self, *keys: str) -> set[str]:
        keys_set = set(keys)
        return {d for (a, d) in self.closure if a in keys_set}

    def ids_of(self, keys: set[str] | list[str]) -> np.ndarray:
        return np.array(sorted({self.id[k] for k in keys}), dtype=np.int64)

    # ---- source values ---------------------------------------------------------------------
    @cached_property
    def code_lookup(self) -> tuple[np.ndarray, list[str]]:
        """Sorted unique concept ids and the concept_code of each (for *_source_value)."""
        d = self.concepts.drop_duplicates("concept_id").sort_values("concept_id")
        return d["concept_id"].to_numpy(np.int64), d["concept_code"].tolist()

    # ---- CDM vocabulary tables -------------------------------------------------------------
    def tables(self) -> dict[str, pd.DataFrame]:
        c = self.concepts.drop_duplicates("concept_id")
        concept = pd.DataFrame(
            {
                "concept_id": c["concept_id"].astype(np.int64),
                "concept_name": c["concept_name"].str.slice(0, 255),
                "domain_id": c["domain_id"],
                "vocabulary_id": c["vocabulary_id"],
                "concept_class_id": c["concept_class_id"],
                "standard_concept": c["standard_concept"],
                "concept_code": c["concept_code"],
                "valid_start_date": VALID_START,
                "valid_end_date": VALID_END,
                "invalid_reason": None,
            }
        )
        rel: list[tuple[int, int, str]] = []
        for child, parent in self.edges:
            rel.append((self.id[child], self.id[parent], "Is a"))
            rel.append((self.id[parent], self.id[child], "Subsumes"))
        for src, std in self.maps.items():
            rel.append((self.id[src], self.id[std], "Maps to"))
            rel.append((self.id[std], self.id[src], "Mapped from"))
        for cid in c.loc[c["standard_concept"] == "S", "concept_id"]:
            rel.append((int(cid), int(cid), "Maps to"))
        concept_relationship = pd.DataFrame(rel, columns=["concept_id_1", "concept_id_2", "relationship_id"])
        concept_relationship = concept_relationship.drop_duplicates().assign(
            valid_start_date=VALID_START, valid_end_date=VALID_END, invalid_reason=None
        )
        anc: dict[tuple[int, int], tuple[int, int]] = {}
        for (a, d), (lo, hi) in self.closure.items():
            key = (self.id[a], self.id[d])
            old = anc.get(key)
            anc[key] = (lo, hi) if old is None else (min(lo, old[0]), max(hi, old[1]))
        concept_ancestor = pd.DataFrame(
            [(a, d, lo, hi) for (a, d), (lo, hi) in sorted(anc.items())],
            columns=["ancestor_concept_id", "descendant_concept_id", "min_levels_of_separation", "max_levels_of_separation"],
        )
        vocab_ids = sorted(set(c["vocabulary_id"]) | {"None"})
        vocabulary = pd.DataFrame(
            {
                "vocabulary_id": vocab_ids,
                "vocabulary_name": [
                    "OMOP Standardized Vocabularies" if v == "None" else f"{v} (synthetic subset)" for v in vocab_ids
                ],
                "vocabulary_reference": "site_agent/cdm/synth/vocab",
                "vocabulary_version": [getattr(self, "version", VOCAB_VERSION) if v == "None" else "synthetic"
                                       for v in vocab_ids],
                "vocabulary_concept_id": 0,
            }
        )
        domain = pd.DataFrame({"domain_id": sorted(set(c["domain_id"]))}).assign(
            domain_name=lambda d: d["domain_id"], domain_concept_id=0
        )
        concept_class = pd.DataFrame({"concept_class_id": sorted(set(c["concept_class_id"]))}).assign(
            concept_class_name=lambda d: d["concept_class_id"], concept_class_concept_id=0
        )
        relationship = pd.DataFrame(
            RELATIONSHIPS,
            columns=[
                "relationship_id",
                "relationship_name",
                "is_hierarchical",
                "defines_ancestry",
                "reverse_relationship_id",
                "relationship_concept_id",
            ],
        )
        concept_synonym = pd.DataFrame(
            [(self.id[k], name, 4180186) for k, name in SYNONYMS if k in self.id],
            columns=["concept_id", "concept_synonym_name", "language_concept_id"],
        )
        return {
            "concept": concept,
            "concept_relationship": concept_relationship,
            "concept_ancestor": concept_ancestor,
            "vocabulary": vocabulary,
            "domain": domain,
            "concept_class": concept_class,
            "relationship": relationship,
            "concept_synonym": concept_synonym,
        }
