"""OMOP concepts of secondary malignancy by site, for ``note_nlp.note_nlp_concept_id``.

Only ids with public evidence (cohort_definitions/vocab_evidence.csv) are used; a site without a
verified id is written with the generic "Secondary malignant neoplastic disease" (432851).
"""

from __future__ import annotations

GENERIC = 432851  # Secondary malignant neoplastic disease, SNOMED 128462008 (STRONG)
SITE_CONCEPTS: dict[str, int] = {
    "lung": 254591,   # Secondary malignant neoplasm of lung, SNOMED 94391008 (STRONG)
    "liver": 198700,  # Secondary malignant neoplasm of liver, SNOMED 94381002 (evidence row)
}


def concept_for(site: str | None) -> int:
    return SITE_CONCEPTS.get(site or "", GENERIC)
