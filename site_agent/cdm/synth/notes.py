"""Synthetic radiology reports in ``note`` for the generator's breast cancer patients (opt-in).

``write_radiology_notes`` runs after ``generate_site`` (``cdm synth --notes``): it reads each breast
cancer patient's first diagnosis and metastasis records (secondary malignancy conditions) from the
generated CDM, writes 2-7 reports per patient and keeps the *ground truth of every report* (is it
relevant, is a metastasis stated, at which sites) in a CSV next to the CDM (``<cdm>.notes_truth.csv``),
never inside the CDM and never released.

What the reports contain: several modalities (CT, MRI, bone scan, PET-CT, ultrasound, chest X-ray,
mammography) and irrelevant ones (dental panoramic X-ray); a system header (exam date, modality,
reporter) the reader must strip; headings in varied case and delimiters, sometimes merged
("FINDINGS/IMPRESSION:"); abbreviations ("mets", "hep"), typos, negated sites in lists, hedges of
both kinds (counted: "in keeping with", "likely"; not counted: "cannot be excluded", "possibly"),
history ("known bony mets, stable"), benign lesions (cysts, haemangioma, bone island), other
cancers' metastases in the history, and a report dated before the breast cancer diagnosis.
A metastasis is stated as present only from its date on: one the patient has as a structured
secondary-malignancy record, or, for 3 % of the patients without one (``UNCODED``), one seen on
imaging that nobody coded (under-coding of metastatic status is what makes report NLP worth
having; the truth column ``uncoded`` marks these reports). The truth of a report is what the
generator chose to state.
"""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import duckdb
import numpy as np

SITE_NAMES = {"liver": "liver", "bone": "bone", "brain": "brain", "lung": "lung"}
ADJ = {"liver": ["liver", "hepatic", "hep", "lvier"], "bone": ["bone", "osseous", "bony", "skeletal"],
       "brain": ["brain", "cerebral", "intracranial"], "lung": ["lung", "pulmonary", "bilateral lung"]}
MET = ["metastases", "mets", "metastatic disease", "metastasis", "metastses", "secondaries"]
MODALITY_FOR = {"liver": ["CT CHEST ABDOMEN PELVIS", "US LIVER", "MRI LIVER", "PET-CT"],
                "bone": ["NM BONE SCAN", "CT CHEST ABDOMEN PELVIS", "MRI SPINE", "PET-CT"],
                "brain": ["MRI BRAIN", "CT HEAD"], "lung": ["CT CHEST", "CT CHEST ABDOMEN PELVIS", "XR CHEST"]}
STAGING = ["CT CHEST ABDOMEN PELVIS", "NM BONE SCAN", "PET-CT", "CT CHEST", "US LIVER", "MRI BRAIN"]
HEAD_IND = ["CLINICAL INDICATION:", "Clinical history:", "Indication -", "REASON FOR EXAM:", "History:", "clinical details:"]
HEAD_FIND = ["FINDINGS:", "Findings:", "findings -", "Report:", "FINDINGS"]
HEAD_IMP = ["IMPRESSION:", "Conclusion:", "CONCLUSION -", "Opinion:", "impression:"]
HEAD_MERGED = ["FINDINGS/IMPRESSION:", "Findings and conclusion:", "REPORT/CONCLUSION:"]
TRUTH_SUFFIX = ".notes_truth.csv"
UNCODED = 0.03  # share of breast cancer patients without a coded metastasis whose reports show one


def truth_path(cdm: str | Path) -> Path:
    p = Path(cdm)
    return p.with_name(p.name + TRUTH_SUFFIX)


def _pick(r: np.random.Generator, seq):
    return seq[int(r.integers(len(seq)))]


def _positive(r, site: str, first: bool) -> str:
    adj, met = _pick(r, ADJ[site]), _pick(r, MET)
    if first:
        forms = [f"Multiple new {adj} lesions in keeping with {met}.", f"New {adj} {met}.",
                 f"Findings are consistent with {adj} {met}.", f"{adj.capitalize()} lesions, likely {met}.",
                 f"Appearances are suspicious for {adj} {met}."]
    else:
        forms = [f"Known {adj} {met}, stable.", f"Previously seen {adj} {met}, slightly larger.",
                 f"Interval progression of {adj} {met}.", f"{adj.capitalize()} {met} again noted, unchanged.",
                 f"Stable appearance of the known {adj} {met}."]
    return _pick(r, forms)


def _negatives(r, sites: list[str]) -> str:
    if not sites:
        return ""
    names = [_pick(r, ADJ[s][:2]) for s in sites]
    lst = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    return _pick(r, [f"No {lst} {_pick(r, MET)}.", f"No evidence of {lst} metastatic disease.",
                     f"no {lst} mets."])


def _distractor(r) -> tuple[str, str]:
    """A sentence that must not count: (text, kind)."""
    return _pick(r, [
        ("Simple hepatic cyst in segment 6.", "benign"), ("Small liver haemangioma, unchanged.", "benign"),
        ("Bone island in the right iliac bone.", "benign"), ("Degenerative changes of the lumbar spine.", "benign"),
        ("4 mm pulmonary nodule; a metastasis cannot be excluded, follow-up advised.", "weak"),
        ("Indeterminate 8 mm liver lesion, possibly a metastasis; MRI suggested.", "weak"),
        ("History of melanoma 2009 with lung metastases from melanoma, treated.", "other_primary"),
        ("The lungs are clear.", "normal"), ("Liver normal in size and echotexture.", "normal"),
    ])


def _report(r, title: str, body: list[str], indication: str, date: dt.date) -> str:
    header = [f"Exam date: {date.isoformat()} {int(r.integers(7, 19)):02d}:{int(r.integers(60)):02d}",
              f"Modality: {title.split()[0]}", title]
    footer = [f"Reported by: Dr {_pick(r, ['A. Smith', 'B. Jones', 'C. Patel', 'D. Garcia'])}"]
    if r.random() < 0.25:
        text = [_pick(r, HEAD_IND) + " " + indication, _pick(r, HEAD_MERGED) + " " + " ".join(body)]
    else:
        imp = body[-1] if body else "Normal study."
        text = [_pick(r, HEAD_IND) + " " + indication, _pick(r, HEAD_FIND) + "\n" + " ".join(body[:-1] or body),
                _pick(r, HEAD_IMP) + " " + imp]
    return "\n".join(header + text + footer)


def _patient_reports(r, dx: dt.date, end: dt.date, mets: dict[str, dt.date]):
    """Reports of one patient: [(date, title, text, relevant, metastatic, sites)]."""
    out = []
    pre = dx - dt.timedelta(days=int(r.integers(10, 60)))
    out.append((pre, "MAMMOGRAPHY BILATERAL", _report(
        r, "MAMMOGRAPHY BILATERAL", ["Irregular spiculated mass in the left breast.", "BI-RADS 5, suspicious for malignancy."],
        "breast lump.", pre), False, False, ()))
    if r.random() < 0.3:
        d = dx + dt.timedelta(days=int(r.integers(30, 900)))
        if d <= end:
            out.append((d, "DENTAL PANORAMIC XR", _report(r, "DENTAL PANORAMIC XR", [
                "No periapical lesions.", "Caries of tooth 36; no suspicious bone lesion."], "toothache.", d), False, False, ()))
    n = int(r.integers(1, 6))
    span = max((end - dx).days, 1)
    days = sorted(int(x) for x in r.integers(0, span, n))
    said: set[str] = set()
    for k in days:
        d = dx + dt.timedelta(days=k)
        present = sorted(s for s, md in mets.items() if md <= d)
        target = present[0] if present else None
        title = _pick(r, MODALITY_FOR[target]) if target else _pick(r, STAGING)
        body: list[str] = []
        stated: list[str] = []
        for s in present:
            if r.random() < 0.85:  # a known metastasis is usually mentioned
                body.append(_positive(r, s, first=s not in said))
                stated.append(s)
        absent = [s for s in ("liver", "bone", "lung", "brain") if s not in present and r.random() < 0.6]
        neg = _negatives(r, absent)
        if neg:
            body.append(neg)
        if r.random() < 0.5:
            body.insert(int(r.integers(len(body) + 1)), _distractor(r)[0])
        if not body:
            body.append("No focal abnormality. No evidence of metastatic disease.")
        said |= set(stated)
        indication = _pick(r, ["breast cancer, staging.", "breast ca - assess for mets.", "? liver mets.",
                               "restaging of breast carcinoma.", "known breast cancer, follow-up."])
        out.append((d, title, _report(r, title, body, indication, d), True, bool(stated), tuple(sorted(stated))))
    return out


def _uncoded(r: np.random.Generator, dx: dt.date, end: dt.date) -> dict[str, dt.date]:
    """A metastasis seen on imaging that nobody coded (no secondary-malignancy record): for a share
    ``UNCODED`` of the patients without a structured metastasis; its own random stream, so the other
    patients' reports do not change."""
    if r.random() >= UNCODED or (end - dx).days < 60:
        return {}
    site = str(r.choice(["bone", "liver", "lung", "brain"], p=[0.5, 0.2, 0.2, 0.1]))
    return {site: dx + dt.timedelta(days=int(r.integers(30, max((end - dx).days // 2, 31))))}


def write_radiology_notes(cdm_path: str | Path, seed: int, breast_ids: list[int], secondary_sites: dict[str, list[int]],
                          note_type_concept_id: int, truth_out: str | Path | None = None) -> dict[str, int]:
    """Append reports to ``note`` of the DuckDB CDM and write the truth CSV; returns counts."""
    import pandas as pd

    path = Path(cdm_path)
    con = duckdb.connect(str(path))
    try:
        con.execute("CREATE TEMP TABLE _b(concept_id BIGINT)")
        con.executemany("INSERT INTO _b VALUES (?)", [(int(c),) for c in breast_ids])
        con.execute("CREATE TEMP TABLE _s(concept_id BIGINT, site VARCHAR)")
        con.executemany("INSERT INTO _s VALUES (?, ?)", [(int(c), s) for s, ids in secondary_sites.items() for c in ids])
        pts = con.execute("""
            WITH dx AS (SELECT person_id, min(condition_start_date) AS dx FROM main.condition_occurrence
                        WHERE condition_concept_id IN (SELECT concept_id FROM _b) GROUP BY person_id),
                 op AS (SELECT person_id, observation_period_start_date AS s, observation_period_end_date AS e
                        FROM main.observation_period)
            -- the breast_cancer cohort's persons: first diagnosis inside an observation period
            SELECT dx.person_id, dx.dx, op.e FROM dx JOIN op ON op.person_id = dx.person_id AND dx.dx BETWEEN op.s AND op.e
            WHERE op.e > dx.dx ORDER BY dx.person_id
        """).fetchall()
        mets = con.execute("""
            SELECT c.person_id, s.site, min(c.condition_start_date) FROM main.condition_occurrence c
            JOIN _s s ON s.concept_id = c.condition_concept_id GROUP BY c.person_id, s.site
        """).fetchall()
        by_person: dict[int, dict[str, dt.date]] = {}
        for pid, site, d in mets:
            by_person.setdefault(pid, {})[site] = d
        rows, truth = [], []
        nid = int(con.execute("SELECT coalesce(max(note_id), 0) FROM main.note").fetchone()[0])
        for pid, dx, end in pts:
            r = np.random.default_rng([seed, int(pid), 19])
            coded = by_person.get(pid, {})
            mets = coded or _uncoded(np.random.default_rng([seed, int(pid), 23]), dx, end)
            for d, title, text, relevant, metastatic, sites in _patient_reports(r, dx, end, mets):
                nid += 1
                rows.append((nid, pid, d, note_type_concept_id, 0, title, text, 0, 0, f"RIS-{nid}"))
                truth.append((nid, pid, d.isoformat(), title, int(relevant), int(metastatic), ";".join(sites),
                              int(bool(metastatic) and not coded)))
        cols = ["note_id", "person_id", "note_date", "note_type_concept_id", "note_class_concept_id", "note_title",
                "note_text", "encoding_concept_id", "language_concept_id", "note_source_value"]
        frame = pd.DataFrame(rows, columns=cols)
        con.register("_notes", frame)
        con.execute(f"INSERT INTO main.note ({', '.join(cols)}) SELECT {', '.join(cols)} FROM _notes")
        con.unregister("_notes")
    finally:
        con.close()
    tp = Path(truth_out) if truth_out else truth_path(path)
    with open(tp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["note_id", "person_id", "note_date", "note_title", "relevant", "metastatic", "sites", "uncoded"])
        w.writerows(truth)
    return {"notes": len(rows), "patients": len(pts), "metastatic_reports": sum(t[5] for t in truth)}
