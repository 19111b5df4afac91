"""Background (non-cancer) care attached to the block's visits.

Realism assumptions (rough prevalences over an observation span, not estimates):
T2DM ~2-17 % rising with age, hypertension ~3-43 %, COPD mostly in smokers (~20 % of older
smokers), asthma ~7 %, obesity ~15 %, osteoarthritis up to ~30 % in the elderly, depression
~8 % (more in women). Chronic conditions are re-recorded at ~45 % of later visits and bring
their usual drugs (metformin, lisinopril/amlodipine, atorvastatin, albuterol) as 30/90-day
prescriptions. ~12 % of outpatient and most ER/inpatient visits carry an acute reason
(bronchitis, pharyngitis, pneumonia, GI bleed, MI) with antibiotics/analgesics/aspirin/PPI and
chest X-rays. Vitals at ~35 % of outpatient visits, labs at ~15 % (most inpatient stays),
mammography for women 50-74.
"""

from __future__ import annotations

import numpy as np

from site_agent.cdm.synth.events import choice
from site_agent.cdm.synth.population import Block


def _sig(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _prescribe(b: Block, v: dict, rows: np.ndarray, drug: str, p: float, supplies: list[int]) -> None:
    r = b.rng
    rows = rows[r.random(rows.size) < p]
    ds = np.asarray(supplies)[r.integers(0, len(supplies), rows.size)]
    start = v["start"][rows]
    cid = b.V[drug]
    b.buf["drug"].add(pidx=v["pidx"][rows], start=start, end=start + ds - 1, concept=cid, source=cid, days_supply=ds, visit=rows)


def _condition(b: Block, v: dict, rows: np.ndarray, key: str, source_key: str | None = None) -> None:
    cid = b.V[key]
    src = b.V[source_key] if source_key else cid
    b.buf["condition"].add(pidx=v["pidx"][rows], date=v["start"][rows], concept=cid, source=src, visit=rows)


def chronic(b: Block, v: dict) -> None:
    r, n = b.rng, b.n
    age = np.clip(b.age_at(b.op_end), 0, 110)
    icd = b.p.cond_vocab == "ICD10CM"
    conds = [
        ("T2DM", 0.02 + 0.15 * _sig((age - 55) / 10), "ICD10CM_E11_9" if icd else None, [("METFORMIN", 0.7), ("ATORVASTATIN", 0.4)]),
        ("HYPERTENSION", 0.03 + 0.4 * _sig((age - 55) / 10), "ICD10CM_I10" if icd else None, [("LISINOPRIL", 0.5), ("AMLODIPINE", 0.3)]),
        ("COPD", np.where(b.smoker, 0.22, 0.02) * _sig((age - 55) / 8), None, [("ALBUTEROL", 0.6)]),
        ("ASTHMA", np.full(n, 0.07), None, [("ALBUTEROL", 0.6)]),
        ("OBESITY", np.where(age > 18, 0.15, 0.05), None, []),
        ("OSTEOARTHRITIS", 0.3 * _sig((age - 60) / 10), None, [("ACETAMINOPHEN", 0.3)]),
        ("DEPRESSION", np.where(b.female, 0.1, 0.06), None, []),
    ]
    outpatient = np.flatnonzero(v["concept"] == b.V["VISIT_OP"])
    vp = v["pidx"][outpatient]
    vd = v["start"][outpatient]
    for key, prev, source, drugs in conds:
        has = r.random(n) < prev
        onset = np.where(has, b.op_start - 5 * 365 + np.floor(r.random(n) * (b.op_end - b.op_start + 5 * 365)), np.inf)
        rows = outpatient[(vd >= onset[vp]) & (r.random(vp.size) < 0.45)]
        _condition(b, v, rows, key, source)
        for drug, p in drugs:
            _prescribe(b, v, rows, drug, p, [30, 90])
        if key == "COPD":
            _procedure(b, v, rows[r.random(rows.size) < 0.05], "CT_CHEST")
        if key == "OBESITY":
            b.obese = has


def _procedure(b: Block, v: dict, rows: np.ndarray, key: str) -> None:
    cid = b.V[key]
    b.buf["procedure"].add(pidx=v["pidx"][rows], date=v["start"][rows], concept=cid, source=cid, visit=rows)


def acute(b: Block, v: dict) -> None:
    r, V = b.rng, b.V
    plans = {
        "VISIT_OP": (0.12, ["ACUTE_BRONCHITIS", "VIRAL_PHARYNGITIS", "PNEUMONIA", "GI_BLEED"], [0.4, 0.45, 0.12, 0.03]),
        "VISIT_ER": (0.7, ["PNEUMONIA", "MI", "GI_BLEED", "ACUTE_BRONCHITIS", "VIRAL_PHARYNGITIS"], [0.3, 0.1, 0.15, 0.25, 0.2]),
        "VISIT_IP": (0.8, ["PNEUMONIA", "MI", "GI_BLEED", "COPD"], [0.35, 0.25, 0.2, 0.2]),
    }
    for visit_key, (p, keys, w) in plans.items():
        rows = np.flatnonzero((v["concept"] == V[visit_key]) & (r.random(v["pidx"].size) < p))
        what = choice(r, np.arange(len(keys)), w, rows.size)
        for i, key in enumerate(keys):
            sel = rows[what == i]
            _condition(b, v, sel, key)
            if key in ("ACUTE_BRONCHITIS", "PNEUMONIA", "VIRAL_PHARYNGITIS"):
                _prescribe(b, v, sel, "AMOXICILLIN", 0.5 if key != "VIRAL_PHARYNGITIS" else 0.25, [7, 10])
                _prescribe(b, v, sel, "ACETAMINOPHEN", 0.2, [5])
                if key != "VIRAL_PHARYNGITIS":
                    _procedure(b, v, sel[r.random(sel.size) < 0.5], "CHEST_XRAY")
            elif key == "MI":
                _prescribe(b, v, sel, "ASPIRIN", 0.9, [90])
                _prescribe(b, v, sel, "ATORVASTATIN", 0.8, [90])
            elif key == "GI_BLEED":
                _prescribe(b, v, sel, "OMEPRAZOLE", 0.8, [30])


def measurements(b: Block, v: dict) -> None:
    r, V = b.rng, b.V
    n = b.n
    male = ~b.female
    adult_h = np.where(male, r.normal(176, 7, n), r.normal(163, 6.5, n))
    bmi0 = np.where(b.obese if b.obese is not None else np.zeros(n, bool), r.normal(34, 3, n), r.normal(26, 3.5, n))
    op = v["concept"] == V["VISIT_OP"]
    nv = v["pidx"].size
    vit = np.flatnonzero(op & (r.random(nv) < 0.35))
    pid = v["pidx"][vit]
    age = np.clip(b.age_at(v["start"][vit], pid), 0, 110)
    grow = np.minimum(age / 18, 1) ** 0.8
    height = 50 + (adult_h[pid] - 50) * grow
    bmi = np.where(age >= 18, bmi0[pid], 15 + 3 * grow) + r.normal(0, 0.8, vit.size)
    weight = np.round(bmi * (height / 100) ** 2, 1)
    sbp = np.round(r.normal(105 + 0.45 * age, 12)).clip(80, 220)
    dbp = np.round(sbp * 0.62 + r.normal(0, 6, vit.size)).clip(45, 130)
    m = b.buf["measurement"]

    def put(rows: np.ndarray, key: str, value: np.ndarray, unit: str) -> None:
        cid = V[key]
        m.add(pidx=v["pidx"][rows], date=v["start"][rows], concept=cid, source=cid, value=value, unit=V[unit], visit=rows)

    put(vit, "WEIGHT", weight, "UNIT_KG")
    put(vit, "SBP", sbp, "UNIT_MMHG")
    put(vit, "DBP", dbp, "UNIT_MMHG")
    hb = r.random(vit.size) < 0.3
    put(vit[hb], "HEIGHT", np.round(height[hb], 1), "UNIT_CM")
    put(vit[hb], "BMI", np.round(bmi[hb], 1), "UNIT_KG_M2")
    labs = np.flatnonzero((op & (r.random(nv) < 0.15)) | (~op & (r.random(nv) < 0.8)))
    lp = v["pidx"][labs]
    put(labs, "HEMOGLOBIN", np.round(np.where(b.female[lp], 13.2, 14.8) + r.normal(0, 1.2, labs.size), 1), "UNIT_G_DL")
    put(labs, "CREATININE", np.round(np.where(b.female[lp], 0.75, 0.95) * r.lognormal(0, 0.2, labs.size), 2), "UNIT_MG_DL")
    # screening mammography, women 50-74
    age_all = b.age_at(v["start"], v["pidx"])
    mammo = np.flatnonzero(op & b.female[v["pidx"]] & (age_all >= 50) & (age_all < 75) & (r.random(nv) < 0.08))
    _procedure(b, v, mammo, "MAMMOGRAPHY")


def generate(b: Block) -> None:
    v = b.buf["visit"].finish()
    chronic(b, v)
    acute(b, v)
    measurements(b, v)
