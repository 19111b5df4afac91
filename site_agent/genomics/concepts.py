"""OMOP concept ids the ``genomics profile --cdm`` path reads; each has a row in
cohort_definitions/vocab_evidence.csv (strength and source there; WEAK rows are named in
docs/genomics.md). No concept name is matched anywhere: a site whose vocabulary records receptor
status under other ids gets "unknown", and the profile says so in a ``note:`` line.
"""

from __future__ import annotations

# person: gender, race, ethnicity (OMOP Gender/Race/Ethnicity vocabularies)
SEX = {8532: "female", 8507: "male"}
RACE = {8527: "white", 8516: "black or african american", 8515: "asian",
        8657: "american indian or alaska native"}
ETHNICITY = {38003563: "hispanic or latino", 38003564: "not hispanic or latino"}

# measurement_concept_id per receptor (LOINC, domain Measurement)
RECEPTORS: dict[str, tuple[int, ...]] = {
    "er_status": (3004390,    # Estrogen receptor [Interpretation] in Tissue, LOINC 16112-5
                  3041343),   # Estrogen receptor Ag [Presence] in Tissue by Immune stain, LOINC 40556-3
    "pr_status": (3003289,    # Progesterone receptor [Interpretation] in Tissue, LOINC 16113-3
                  3041608),   # Progesterone receptor Ag [Presence] in Tissue by Immune stain, LOINC 40557-1
    "her2_status": (43055014,),  # HER2 Ag [Presence] in Tissue by Immunoassay
}

# value_as_concept_id (domain Meas Value)
POSITIVE = (45884084,  # Positive, LOINC answer LA6576-8
            9191)      # Positive, SNOMED 10828004
NEGATIVE = (45878583,  # Negative, LOINC answer LA6577-6
            9189)      # Negative, SNOMED 260385009


def all_ids() -> set[int]:
    ids = set(SEX) | set(RACE) | set(ETHNICITY) | set(POSITIVE) | set(NEGATIVE)
    return ids.union(*RECEPTORS.values())


def sql_case(column: str, labels: dict[int, str]) -> str:
    """``CASE column WHEN id THEN 'label' ... ELSE 'unknown' END`` from an id -> label table."""
    whens = " ".join(f"WHEN {int(k)} THEN '{v}'" for k, v in labels.items())
    return f"CASE {column} {whens} ELSE 'unknown' END"


def sql_ids(ids) -> str:
    return ", ".join(str(int(i)) for i in ids)
