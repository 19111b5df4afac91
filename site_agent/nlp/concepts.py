"""OMOP concepts of metastasis by site, for ``note_nlp.note_nlp_concept_id``.

Only ids with STRONG public evidence (rows in cohort_definitions/vocab_evidence.csv, all from
OHDSI/PhenotypeLibrary ATLAS exports) are used: SNOMED secondary-malignancy conditions where one
was found, else the OMOP Cancer Modifier "Metastasis to X". Sites without a verified id (brain:
4300544 has only weak and contradicted evidence; lymph node: no public OHDSI file pairs an id with
the name; other) get the generic "Secondary malignant neoplastic disease" (432851); the searches
are in cohort_definitions/SOURCES.md.
"""

from __future__ import annotations

GENERIC = 432851          # Secondary malignant neoplastic disease, SNOMED 128462008
METASTASIS_MODIFIER = 36769180  # Metastasis, Cancer Modifier OMOP4998856 (structured labels in measurement)
SITE_CONCEPTS: dict[str, int] = {
    "liver": 198700,       # Secondary malignant neoplasm of liver, SNOMED 94381002
    "lung": 254591,        # Secondary malignant neoplasm of lung, SNOMED 94391008
    "peritoneum": 4315805,  # Secondary malignant neoplasm of peritoneum, SNOMED 94627008
    "bone": 36769301,      # Metastasis to bone, Cancer Modifier OMOP4998978
    "adrenal": 35225568,   # Metastasis to adrenal gland, Cancer Modifier OMOP5031479
    "pleura": 35226258,    # Metastasis to pleura, Cancer Modifier OMOP5031810
    "skin": 35225673,      # Metastasis to skin, Cancer Modifier OMOP5031865
}


def concept_for(site: str | None) -> int:
    return SITE_CONCEPTS.get(site or "", GENERIC)
