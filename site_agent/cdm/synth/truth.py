"""Ground-truth cohort counts, computed from the generator's own records (never from SQL).

The concept sets follow ``cohort_definitions/README.md``; descendants come from the Python
closure of ``vocab/hierarchy.csv`` (``Vocabulary.descendants``), and an excluded item removes
its descendants from the set (Circe semantics). Records with concept 0 never match.

Semantics replicated (Circe):

* disease cohorts: the person's earliest record of the set over *all* their records (even
  outside observation); the person enters only if that date lies in an observation period
  (and, where required, date - period start >= 365 days). One record per subject.
* age: year(index) - year_of_birth.
* "no history" rule: any record of the set dated <= index - 1 day, observation ignored.
* stage rule / metastasis rule: measurements (conditions) dated in the window and within the
  index's observation period.
* treatment cohorts: every event inside an observation period; end = start, era pad 0, so
  records = distinct (person, date) pairs.
* death: the death date lies inside an observation period.

Persons are independent, so counts are computed per chunk and summed.
"""

from __future__ import annotations

import numpy as np

from site_agent.cdm.synth.vocabulary import Vocabulary

COHORTS = (
    "lung_cancer_broad",
    "lung_cancer_narrow",
    "nsclc",
    "sclc",
    "sclc_stage_i_ii",
    "lung_surgery",
    "lung_chemotherapy",
    "lung_radiotherapy",
    "disease_progression",
    "death",
    "breast_cancer",
    "metastatic_breast_cancer",
)
ATTRITION_RULES = ("initial qualifying events", "Age >= 18", "No history of cancer except skin cancer", "Stage I or II recorded")
BIG = np.iinfo(np.int64).max
# stage group keys by stage: 7th clinical, 7th pathological, 8th clinical, 8th pathological
STAGE_KEYS = {s: (f"STAGE_{s}", f"P7_STAGE_{s}", f"C_STAGE_{s}", f"P_STAGE_{s}") for s in (1, 2, 3, 4)}


def concept_sets(v: Vocabulary) -> dict[str, np.ndarray]:
    d = v.descendants
    sets = {
        "broad": d("LUNG_MALIGNANT", "LUNG_PRIMARY_MALIGNANT"),
        "narrow": d("NSCLC", "SCLC"),
        "nsclc": d("NSCLC"),
        "sclc": d("SCLC"),
        "other_malignancy": d("MALIGNANT_NEOPLASM")
        - d("SKIN_MALIGNANT", "SKIN_PRIMARY_MALIGNANT", "SKIN_BCC", "SKIN_SCC")
        - d("LUNG_MALIGNANT", "LUNG_PRIMARY_MALIGNANT"),
        "stage_i_ii": d(*STAGE_KEYS[1], *STAGE_KEYS[2]),
        "surgery": d("LUNG_EXCISION", "LOBECTOMY", "SLEEVE_RESECTION", "PNEUMONECTOMY"),
        "chemo": d("CARBOPLATIN", "CISPLATIN", "ETOPOSIDE"),
        "radio": d("RADIOTHERAPY", "RT_STEREOTACTIC", "RT_CONFORMAL", "RT_IMRT"),
        "progression": d("PROGRESSION"),
        "breast": d("BREAST_MALIGNANT"),
        "secondary": d("SECONDARY_MALIGNANT", "LUNG_SECONDARY"),
    }
    for k in ("T1", "T2", "T3", "N0", "N1", "M0"):  # each category in all four editions/types
        sets[k] = d(k, f"P{k}", f"C7_{k}", f"P7_{k}")
    return {k: v.ids_of(s) for k, s in sets.items()}


class _Periods:
    """Observation periods of a chunk, for vectorised 'which period holds this date' look-ups."""

    def __init__(self, op: dict[str, np.ndarray]):
        order = np.lexsort((op["start"], op["pidx"]))
        self.pidx = op["pidx"][order]
        self.start = op["start"][order]
        self.end = op["end"][order]
        self.key = self.pidx * 1_000_000 + (self.start + 200_000)

    def find(self, pidx: np.ndarray, date: np.ndarray) -> np.ndarray:
        """Index of the period containing (pidx, date), or -1."""
        i = np.searchsorted(self.key, pidx * 1_000_000 + (date + 200_000), side="right") - 1
        j = np.maximum(i, 0)
        ok = (i >= 0) & (self.pidx[j] == pidx) & (date <= self.end[j]) & (date >= self.start[j])
        return np.where(ok, i, -1)


def _first(n: int, pidx: np.ndarray, date: np.ndarray) -> np.ndarray:
    out = np.full(n, BIG, dtype=np.int64)
    np.minimum.at(out, pidx, date.astype(np.int64))
    return out


def _disease(n, periods, cond, ids, prior_days: int | None = None):
    """(persons mask, index date, period index) of a first-record disease cohort."""
    m = np.isin(cond["concept"], ids)
    first = _first(n, cond["pidx"][m], cond["date"][m])
    has = first != BIG
    idx = np.full(n, -1)
    pp = np.flatnonzero(has)
    idx[pp] = periods.find(pp, first[pp])
    ok = idx >= 0
    if prior_days is not None:
        ok &= (first - periods.start[np.maximum(idx, 0)]) >= prior_days
    return ok, first, idx


def _any_in_window(n, periods, rows, ids, index, idx, lo: int, hi: int | None) -> np.ndarray:
    """Persons with a row of ``ids`` in [index+lo, index+hi] inside the index period."""
    m = np.isin(rows["concept"], ids)
    p, d = rows["pidx"][m], rows["date"][m].astype(np.int64)
    cand = idx[p] >= 0
    p, d = p[cand], d[cand]
    per = idx[p]
    ok = (d >= index[p] + lo) & (d >= periods.start[per]) & (d <= periods.end[per])
    if hi is not None:
        ok &= d <= index[p] + hi
    out = np.zeros(n, dtype=bool)
    out[p[ok]] = True
    return out


def _treatment(periods, rows, ids) -> tuple[int, int]:
    m = np.isin(rows["concept"], ids)
    p, d = rows["pidx"][m], rows["date"][m].astype(np.int64)
    inside = periods.find(p, d) >= 0
    pairs = np.unique(p[inside] * 1_000_000 + (d[inside] + 200_000))
    return int(pairs.size), int(np.unique(p[inside]).size)


def compute(chunk: dict[str, dict[str, np.ndarray]], sets: dict[str, np.ndarray]) -> tuple[dict, list[int]]:
    """Cohort counts {name: {records, subjects}} and the sclc_stage_i_ii attrition of one chunk."""
    n = chunk["person"]["yob"].size
    periods = _Periods(chunk["observation_period"])
    cond = chunk["condition"]
    meas = chunk["measurement"]
    drug = {"pidx": chunk["drug"]["pidx"], "date": chunk["drug"]["start"], "concept": chunk["drug"]["concept"]}
    out: dict[str, dict[str, int]] = {}

    def disease(name, key, prior=None):
        ok, first, idx = _disease(n, periods, cond, sets[key], prior)
        out[name] = {"records": int(ok.sum()), "subjects": int(ok.sum())}
        return ok, first, idx

    disease("lung_cancer_broad", "broad")
    disease("lung_cancer_narrow", "narrow", 365)
    disease("nsclc", "nsclc")
    disease("sclc", "sclc")
    # sclc_stage_i_ii with its attrition
    ok, index, idx = _disease(n, periods, cond, sets["sclc"], 365)
    idx = np.where(ok, idx, -1)
    steps = [int(ok.sum())]
    year = np.where(ok, index, 0).astype("datetime64[D]").astype("datetime64[Y]").astype(np.int64) + 1970
    ok &= np.where(ok, year - chunk["person"]["yob"], 0) >= 18
    steps.append(int(ok.sum()))
    om = np.isin(cond["concept"], sets["other_malignancy"])
    first_other = _first(n, cond["pidx"][om], cond["date"][om])
    ok &= ~(first_other <= index - 1)
    steps.append(int(ok.sum()))
    idx = np.where(ok, idx, -1)
    w = {k: _any_in_window(n, periods, meas, sets[k], index, idx, -30, 60) for k in ("stage_i_ii", "T1", "T2", "T3", "N0", "N1", "M0")}
    tnm = w["M0"] & ((w["N0"] & (w["T1"] | w["T2"] | w["T3"])) | (w["N1"] & (w["T1"] | w["T2"])))
    ok &= w["stage_i_ii"] | tnm
    steps.append(int(ok.sum()))
    out["sclc_stage_i_ii"] = {"records": steps[-1], "subjects": steps[-1]}
    for name, key, rows in (
        ("lung_surgery", "surgery", chunk["procedure"]),
        ("lung_chemotherapy", "chemo", drug),
        ("lung_radiotherapy", "radio", chunk["procedure"]),
    ):
        rec, subj = _treatment(periods, rows, sets[key])
        out[name] = {"records": rec, "subjects": subj}
    disease("disease_progression", "progression")
    death = chunk["death"]
    dead = int((periods.find(death["pidx"], death["date"].astype(np.int64)) >= 0).sum())
    out["death"] = {"records": dead, "subjects": dead}
    ok, index, idx = disease("breast_cancer", "breast")
    idx = np.where(ok, idx, -1)
    met = ok & _any_in_window(n, periods, cond, sets["secondary"], index, idx, -30, None)
    out["metastatic_breast_cancer"] = {"records": int(met.sum()), "subjects": int(met.sum())}
    return {k: out[k] for k in COHORTS}, steps
