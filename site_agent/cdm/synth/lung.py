"""Lung cancer journeys: work-up, diagnosis coding, staging, treatment, progression, death.

Assumptions (orders of magnitude from SEER/NCCN-style pathways, not estimates):

* histology: SCLC 15 %, adenocarcinoma 45 %, squamous 25 %, NSCLC NOS 15 %.
* stage at diagnosis: SCLC I/II/III/IV = 3/2/30/65 % (I-II ~5 % as in the seed study);
  NSCLC 25/10/20/45 %.
* survival medians (months): SCLC I-II 20 (20 % cured), III 12, IV 7; NSCLC I 80 (55 % cured),
  II 45 (35 % cured), III 20, IV 10. Progression at 30-80 % of the time to death.
* treatment: early NSCLC surgery (lobectomy 75 %, sleeve 8 %, pneumonectomy 7 %, excision NOS
  10 %) or SBRT (3-5 fractions); early SCLC surgery in half, then 4 cycles platinum-etoposide;
  limited-stage SCLC/stage III NSCLC concurrent chemoradiation (30 daily weekday fractions,
  3D-conformal or IMRT); stage IV 4-6 cycles every ~21 days (carboplatin or cisplatin day 1,
  etoposide days 1-3) and palliative RT in ~30 %.
* coding per site (see ``params.py``): a generic lung code before the histology, histology in
  SNOMED, ICD-O-3 or a local code (mapped or not), ICD10CM billing codes at follow-ups.
* staging: a site's style (combined stage, clinical, pathological, clinical T/N/M or
  pathological-only pT/pN/pM; see ``staging``), missing for
  10-35 %, recorded mostly within [-25, +55] days of diagnosis but some outside [-30, +60].
"""

from __future__ import annotations

import numpy as np

from site_agent.cdm.synth.events import NO_DATE, choice, expand
from site_agent.cdm.synth.oncology import (
    _coded_keys,
    _follow_ups,
    _incident,
    _survival,
    records,
    set_death,
)
from site_agent.cdm.synth.population import Block, add_visits

HIST = np.array(["SCLC", "LUNG_ADENOCARCINOMA", "LUNG_SQUAMOUS", "NSCLC"])
NSCLC_STAGE = [0.25, 0.10, 0.20, 0.45]
MEDIAN = {True: [20, 20, 12, 7], False: [80, 45, 20, 10]}  # by is-SCLC, stage 1..4
CURED = {True: [0.2, 0.2, 0.0, 0.0], False: [0.55, 0.35, 0.05, 0.0]}


def plan(b: Block, age: np.ndarray) -> None:
    r, R = b.rng, b.p.rates
    weight = ((age - 35).clip(0) / 40) ** 2 * np.where(b.smoker, 6.0, 1.0)
    pidx, dx = _incident(b, R.lung, weight, 30, R.referral)
    if R.lung_followup_days:  # a registry with complete follow-up: no diagnosis near the end of observation
        keep = dx <= b.planned_end[pidx] - R.lung_followup_days
        pidx, dx = pidx[keep], dx[keep]
    n = pidx.size
    hist = r.choice(4, size=n, p=list(R.histology))  # profile's histology mix (default SEER-like)
    sclc = hist == 0
    stage = np.where(sclc, r.choice(4, size=n, p=list(R.sclc_stage)), r.choice(4, size=n, p=NSCLC_STAGE)) + 1
    med = np.where(sclc, np.array(MEDIAN[True])[stage - 1], np.array(MEDIAN[False])[stage - 1])
    cure_p = np.where(sclc, np.array(CURED[True])[stage - 1], np.array(CURED[False])[stage - 1])
    surv = _survival(r, med, r.random(n) < cure_p)
    death = np.where(surv == NO_DATE, NO_DATE, dx + np.maximum(surv, 20))
    set_death(b, pidx, death)
    prog = np.where(
        surv == NO_DATE,
        np.where(r.random(n) < 0.1, dx + r.integers(365, 5 * 365, n), NO_DATE),
        np.where(r.random(n) < 0.75, dx + (np.maximum(surv, 20) * r.uniform(0.3, 0.8, n)).astype(np.int64), NO_DATE),
    )
    b.onc["lung"] = {"pidx": pidx, "dx": dx, "hist": hist, "stage": stage, "prog": prog}


def _diagnosis_codes(b: Block, hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Histology-specific record coding per patient (a habit kept for follow-ups)."""
    r, p = b.rng, b.p
    n = hist.size
    u = r.random(n)
    keys = HIST[hist].astype(object)
    o3 = {0: "ICDO3_8041_3_C34_9", 1: "ICDO3_8140_3_C34_9", 2: "ICDO3_8070_3_C34_9"}
    use_o3 = (u >= p.local_unmapped + p.local_mapped) & (r.random(n) < p.icdo3)
    for h, key in o3.items():
        keys[use_o3 & (hist == h)] = key
    mapped = (u >= p.local_unmapped) & (u < p.local_unmapped + p.local_mapped)
    keys[mapped] = np.array(["LOCAL_SCLC", "LOCAL_ADENO", "LOCAL_LUNG_CA", "LOCAL_LUNG_CA"], dtype=object)[hist[mapped]]
    unmapped = u < p.local_unmapped
    keys[unmapped] = np.where(hist[unmapped] == 0, "LOCAL_SCLC_UNMAPPED", "LOCAL_NSCLC_UNMAPPED")
    return _coded_keys(b, keys)


def _generic_codes(b: Block, n: int) -> tuple[np.ndarray, np.ndarray]:
    r, site = b.rng, b.p.cond_vocab
    if site == "ICD10CM":
        keys = choice(r, np.array(["ICD10CM_C34_90", "ICD10CM_C34_10"]), [0.7, 0.3], n)
    elif site == "ICD10":
        keys = np.full(n, "ICD10_C34_9")
    else:
        keys = choice(r, np.array(["LUNG_PRIMARY_MALIGNANT", "LUNG_MALIGNANT"]), [0.7, 0.3], n)
    keys = keys.astype(object)
    keys[r.random(n) < b.p.local_unmapped] = "LOCAL_LUNG_UNMAPPED"
    return _coded_keys(b, keys)


def _stage_offsets(b: Block, n: int) -> np.ndarray:
    r = b.rng
    out = r.random(n) < b.p.staging_out_window
    early = r.random(n) < 0.5
    inside = r.integers(-25, 56, n)
    outside = np.where(early, r.integers(-150, -30, n), r.integers(61, 200, n))
    return np.where(out, outside, inside)


def _measure(b: Block, pidx, date, concept) -> None:
    vis = add_visits(b, pidx, date, b.V["VISIT_OP"])
    b.buf["measurement"].add(pidx=pidx, date=date, concept=concept, source=concept, value_concept=concept, visit=vis)


def _tnm(b: Block, sel: np.ndarray, stage: np.ndarray, when: np.ndarray, dx: np.ndarray, pidx: np.ndarray,
         keys: tuple[str, str, str]) -> None:
    """T/N/M categories consistent with the stage group; ``keys`` = key prefixes for T, N and M."""
    r, V = b.rng, b.V
    st = stage[sel]
    m = sel.size
    t = r.integers(1, 3, m)  # T1/T2
    nn = np.zeros(m, dtype=np.int64)
    two = st == 2
    t3n0 = two & (r.random(m) < 0.5)
    nn[two & ~t3n0] = 1
    t[t3n0] = 3
    three = st == 3
    kind = r.integers(0, 3, m)
    t[three & (kind == 0)] = 4
    nn[three & (kind == 0)] = r.integers(0, 4, m)[three & (kind == 0)]
    t[three & (kind == 1)] = r.integers(1, 4, m)[three & (kind == 1)]
    nn[three & (kind == 1)] = r.integers(2, 4, m)[three & (kind == 1)]
    t[three & (kind == 2)] = 3
    nn[three & (kind == 2)] = 1
    four = st == 4
    t[four] = r.integers(1, 5, four.sum())
    nn[four] = r.integers(0, 4, four.sum())
    mm = (st == 4).astype(np.int64)
    tp, np_, mp = keys
    t_ids = np.array([0] + [V[f"{tp}T{i}"] for i in range(1, 5)])
    n_ids = np.array([V[f"{np_}N{i}"] for i in range(4)])
    m_ids = np.array([V[f"{mp}M0"], V[f"{mp}M1"]])
    same = r.random(m) < 0.85
    drop = r.integers(0, 3, m)
    drop[r.random(m) >= 0.07] = -1  # ~7 % lack one of T/N/M
    for j, ids in enumerate((t_ids[t], n_ids[nn], m_ids[mm])):
        d = np.where(same, when[sel], dx[sel] + _stage_offsets(b, m))
        keep = drop != j
        _measure(b, pidx[sel][keep], d[keep], ids[keep])


def staging(b: Block, L: dict) -> None:
    """Stage as the site records it (``params.STAGING_STYLES``).

    combined: 7th-edition clinical stage group (sub-stages 1A/1B/2A/2B as its descendants);
    clinical: 8th-edition clinical stage group; pathological: pathological stage group (8th
    edition, a quarter 7th); tnm: 8th clinical T/N/M categories; ptnm: pathological pT/pN with
    pM or (as pathologists often leave M clinical) cM, no stage group at all.
    """
    r, V, p = b.rng, b.V, b.p
    pidx, dx, stage = L["pidx"], L["dx"], L["stage"]
    n = pidx.size
    recorded = r.random(n) >= p.staging_missing
    style = np.where(r.random(n) < p.staging_alt_p, p.staging_alt, p.staging)
    when = dx + _stage_offsets(b, n)
    for name, table in (
        ("combined", [["STAGE_1", "STAGE_1A", "STAGE_1B"], ["STAGE_2", "STAGE_2A", "STAGE_2B"], ["STAGE_3"], ["STAGE_4"]]),
        ("clinical", [["C_STAGE_1"], ["C_STAGE_2"], ["C_STAGE_3"], ["C_STAGE_4"]]),
        ("pathological", [[f"P_STAGE_{s}"] * 3 + [f"P7_STAGE_{s}"] for s in range(1, 5)]),
    ):
        for s in range(1, 5):
            sel = np.flatnonzero(recorded & (style == name) & (stage == s))
            ids = np.array([V[k] for k in table[s - 1]])
            _measure(b, pidx[sel], when[sel], ids[r.integers(0, ids.size, sel.size)])
    _tnm(b, np.flatnonzero(recorded & (style == "tnm")), stage, when, dx, pidx, ("", "", ""))
    sel = np.flatnonzero(recorded & (style == "ptnm"))
    clinical_m = r.random(sel.size) < 0.4
    _tnm(b, sel[~clinical_m], stage, when, dx, pidx, ("P", "P", "P"))
    _tnm(b, sel[clinical_m], stage, when, dx, pidx, ("P", "P", ""))
    # re-staging as stage 4 at progression (combined/clinical sites)
    prog = np.flatnonzero(recorded & (L["prog"] != NO_DATE) & np.isin(style, ["combined", "clinical"]) & (r.random(n) < 0.4))
    _measure(b, pidx[prog], L["prog"][prog], np.where(style[prog] == "combined", V["STAGE_4"], V["C_STAGE_4"]))


def _chemo(b: Block, pidx, start, cycles, cis, etoposide) -> None:
    r, V = b.rng, b.V
    owner, seq = expand(cycles)
    d1 = start[owner] + seq * 21 + r.integers(0, 4, owner.size)
    p = pidx[owner]
    vis = add_visits(b, p, d1, V["VISIT_OP"])
    ingr = r.random(owner.size) < b.p.chemo_ingredient
    plat = np.where(cis[owner], np.where(ingr, V["CISPLATIN"], V["CISPLATIN_INJ"]), np.where(ingr, V["CARBOPLATIN"], V["CARBOPLATIN_INJ"]))
    b.buf["drug"].add(pidx=p, start=d1, end=d1, concept=plat, source=plat, days_supply=1, visit=vis)
    hb = np.round(r.normal(11.3, 1.3, owner.size), 1)
    b.buf["measurement"].add(pidx=p, date=d1, concept=V["HEMOGLOBIN"], source=V["HEMOGLOBIN"], value=hb, unit=V["UNIT_G_DL"], visit=vis)
    eto = np.flatnonzero(etoposide[owner])
    for day in range(3):
        dd = d1[eto] + day
        v = vis[eto] if day == 0 else add_visits(b, p[eto], dd, V["VISIT_OP"])
        cid = np.where(r.random(eto.size) < b.p.chemo_ingredient, V["ETOPOSIDE"], V["ETOPOSIDE_INJ"])
        b.buf["drug"].add(pidx=p[eto], start=dd, end=dd, concept=cid, source=cid, days_supply=1, visit=v)


def _radiotherapy(b: Block, pidx, start, fractions, concept, sbrt) -> None:
    owner, k = expand(fractions)
    date = start[owner] + np.where(sbrt[owner], 2 * k, (k // 5) * 7 + k % 5)
    keep = sbrt[owner] | ~np.bool_(b.p.rt_weekly) | (k % 5 == 0)
    owner, date = owner[keep], date[keep]
    p = pidx[owner]
    vis = add_visits(b, p, date, b.V["VISIT_OP"])
    b.buf["procedure"].add(pidx=p, date=date, concept=concept[owner], source=concept[owner], visit=vis)


def treatment(b: Block, L: dict) -> None:
    r, V = b.rng, b.V
    pidx, dx, stage, sclc = L["pidx"], L["dx"], L["stage"], L["hist"] == 0
    n = pidx.size
    early = stage <= 2
    surg = early & (r.random(n) < np.where(sclc, 0.5, np.where(stage == 1, 0.7, 0.65)))
    sdate = dx + r.integers(14, 46, n)
    kind = choice(r, np.array([V["LOBECTOMY"], V["SLEEVE_RESECTION"], V["PNEUMONECTOMY"], V["LUNG_EXCISION"]]), [0.75, 0.08, 0.07, 0.10], n)
    s = np.flatnonzero(surg)
    vis = add_visits(b, pidx[s], sdate[s], V["VISIT_IP"], r.integers(3, 11, s.size))
    b.buf["procedure"].add(pidx=pidx[s], date=sdate[s], concept=kind[s], source=kind[s], visit=vis)
    # chemotherapy
    chemo = np.where(
        sclc,
        np.where(early, True, r.random(n) < np.where(stage == 3, 0.9, 0.85)),
        np.where(stage == 1, False, np.where(stage == 2, surg & (r.random(n) < 0.6) | ~surg, r.random(n) < np.where(stage == 3, 0.7, 0.7))),
    )
    cycles = np.where(chemo, np.where(early, 4, r.integers(4, 7, n)), 0)
    cstart = np.where(surg, sdate + r.integers(30, 50, n), dx + r.integers(10, 31, n))
    cis = r.random(n) < 0.3
    etoposide = sclc | (r.random(n) < 0.3)
    _chemo(b, pidx, cstart, cycles, cis, etoposide)
    # radiotherapy
    sbrt = (~sclc) & (stage == 1) & ~surg & (r.random(n) < 0.6)
    concurrent = ~surg & chemo & (stage <= 3) & (r.random(n) < np.where(sclc, 0.8, 0.7))
    palliative = (stage == 4) & (r.random(n) < 0.3)
    fractions = np.where(sbrt, r.integers(3, 6, n), np.where(concurrent, 30, np.where(palliative, 10, 0)))
    rstart = np.where(concurrent, cstart + r.integers(0, 22, n), dx + r.integers(20, 121, n))
    conc = np.where(sbrt, V["RT_STEREOTACTIC"], np.where(r.random(n) < 0.5, V["RT_CONFORMAL"], V["RT_IMRT"]))
    _radiotherapy(b, pidx, rstart, fractions, conc, sbrt)


def generate(b: Block) -> None:
    r, V, p = b.rng, b.V, b.p
    L = b.onc["lung"]
    pidx, dx, hist, stage = L["pidx"], L["dx"], L["hist"], L["stage"]
    n = pidx.size
    # work-up imaging
    ct = dx - r.integers(7, 41, n)
    vis = add_visits(b, pidx, ct, V["VISIT_OP"])
    b.buf["procedure"].add(pidx=pidx, date=ct, concept=V["CT_CHEST"], source=V["CT_CHEST"], visit=vis)
    xr = np.flatnonzero(r.random(n) < 0.6)
    xd = dx[xr] - r.integers(20, 71, xr.size)
    vis = add_visits(b, pidx[xr], xd, V["VISIT_OP"])
    b.buf["procedure"].add(pidx=pidx[xr], date=xd, concept=V["CHEST_XRAY"], source=V["CHEST_XRAY"], visit=vis)
    # a generic lung code before the histology
    g = np.flatnonzero(r.random(n) < p.generic_first)
    c, s = _generic_codes(b, g.size)
    records(b, pidx[g], dx[g] - r.integers(3, 46, g.size), c, s)
    # the histology-specific diagnosis (+ an ICD10CM billing record at ICD10CM sites)
    hc, hs = _diagnosis_codes(b, hist)
    dvis = add_visits(b, pidx, dx, V["VISIT_OP"])
    records(b, pidx, dx, hc, hs, visit=dvis)
    if p.cond_vocab == "ICD10CM":
        bill = np.flatnonzero(r.random(n) < 0.6)
        c, s = _generic_codes(b, bill.size)
        records(b, pidx[bill], dx[bill], c, s, visit=dvis[bill])
    copd = np.flatnonzero(b.smoker[pidx] & (r.random(n) < 0.4))
    records(b, pidx[copd], dx[copd], V["COPD"], V["COPD"], visit=dvis[copd])
    # a few patients with an earlier (pre-observation) histology record
    leg = np.flatnonzero((r.random(n) < 0.03) & (b.op_start[pidx] - b.birth[pidx] > 20 * 365))
    ld = b.op_start[pidx[leg]] - r.integers(30, 3 * 365, leg.size)
    records(b, pidx[leg], ld, hc[leg], hs[leg], legacy=True)
    # follow-ups: the site's histology coding or its generic code
    owner, fp, fd = _follow_ups(b, pidx, dx, 2, 8, gap=(30, 120))
    gc, gs = _generic_codes(b, owner.size)
    same = r.random(owner.size) < 0.65
    records(b, fp, fd, np.where(same, hc[owner], gc), np.where(same, hs[owner], gs))
    staging(b, L)
    treatment(b, L)
    # progression and metastases
    pr = np.flatnonzero(L["prog"] != NO_DATE)
    records(b, pidx[pr], L["prog"][pr], V["PROGRESSION"], V["PROGRESSION"])
    mets = np.flatnonzero((stage == 4) & (r.random(n) < 0.4))
    site = choice(r, np.array([V["SEC_BRAIN"], V["SEC_BONE"], V["SEC_LIVER"]]), [0.4, 0.35, 0.25], mets.size)
    md = dx[mets] + r.integers(-10, 61, mets.size)
    records(b, pidx[mets], md, site, site)
