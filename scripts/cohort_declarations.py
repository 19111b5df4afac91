"""The network's cohort and concept-set declarations, from which
``build_cohort_definitions.py`` writes the ATLAS JSON (the maintainer edits this file).

Concept sets name rows of ``site_agent/cdm/synth/vocab/concepts.csv`` by key; cohorts are
built from small criteria helpers that mirror Circe's JSON structure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# --------------------------------------------------------------------------------------
# Concept sets: name -> (standalone file stem, items).  Item = (concepts.csv key, flags).
# --------------------------------------------------------------------------------------

D = {"desc": True}  # include descendants
X = {"desc": True, "excl": True}  # exclude, with descendants
N = {}  # the concept alone


# Stage groups and TNM categories (concepts.csv keys): AJCC/UICC 7th and 8th edition, clinical
# and pathological. STAGE_n = 7th clinical, P7_STAGE_n = 7th pathological, C_STAGE_n = 8th clinical,
# P_STAGE_n = 8th pathological; T1/N0/M0 = 8th clinical, PT1 = 8th pathological, C7_T1 = 7th
# clinical, P7_T1 = 7th pathological.
STAGE_1 = ("STAGE_1", "P7_STAGE_1", "C_STAGE_1", "P_STAGE_1")
STAGE_2 = ("STAGE_2", "P7_STAGE_2", "C_STAGE_2", "P_STAGE_2")


def tnm(category: str) -> tuple[str, ...]:
    """The four keys of one T/N/M category: 8th clinical, 8th pathological, 7th clinical, 7th pathological."""
    return (category, f"P{category}", f"C7_{category}", f"P7_{category}")


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
            (("LUNG_MALIGNANT", D), ("LUNG_PRIMARY_MALIGNANT", D)),
        ),
        ConceptSetDef("Primary lung cancer", "primary_lung_cancer", (("NSCLC", D), ("SCLC", D))),
        ConceptSetDef("NSCLC", "nsclc", (("NSCLC", D),)),
        ConceptSetDef("SCLC", "sclc", (("SCLC", D),)),
        ConceptSetDef(
            "Malignancy other than skin or lung",
            "malignancy_other_than_skin_or_lung",
            (
                ("MALIGNANT_NEOPLASM", D),
                # skin cancer the way a real vocabulary holds it: the ancestor, and the two
                # common leaves named too, in case a site's hierarchy does not link them
                ("SKIN_MALIGNANT", X),
                ("SKIN_PRIMARY_MALIGNANT", X),
                ("SKIN_BCC", X),
                ("SKIN_SCC", X),
                ("LUNG_MALIGNANT", X),
                ("LUNG_PRIMARY_MALIGNANT", X),
            ),
        ),
        # stage group as sites record it: 7th and 8th edition, clinical and pathological;
        # sub-stages (1A, 1B, ...) come in through descendants
        ConceptSetDef("Stage I-II", "stage_i_ii", tuple((k, D) for k in STAGE_1 + STAGE_2)),
        ConceptSetDef("TNM T1-T3", "tnm_t1_t3", tuple((k, D) for k in tnm("T1") + tnm("T2") + tnm("T3"))),
        ConceptSetDef("TNM T1-T2", "tnm_t1_t2", tuple((k, D) for k in tnm("T1") + tnm("T2"))),
        ConceptSetDef("TNM T3", "tnm_t3", tuple((k, D) for k in tnm("T3"))),
        ConceptSetDef("TNM N0", "tnm_n0", tuple((k, D) for k in tnm("N0"))),
        ConceptSetDef("TNM N1", "tnm_n1", tuple((k, D) for k in tnm("N1"))),
        ConceptSetDef("TNM M0", "tnm_m0", tuple((k, D) for k in tnm("M0"))),
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
        ConceptSetDef("Stage I", "stage_i", tuple((k, D) for k in STAGE_1)),
        ConceptSetDef("Stage II", "stage_ii", tuple((k, D) for k in STAGE_2)),
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
              "First lung cancer diagnosis, broad (malignant tumor of lung or primary malignant neoplasm "
              "of respiratory tract); ends at the end of the observation period.",
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

