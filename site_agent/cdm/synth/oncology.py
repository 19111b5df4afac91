"""Cancer plan (who gets which cancer when, and cancer deaths) and the non-lung cancers.

Assumptions: incidence rises with age (lung: ~((age-35)/40)^2, 6x in smokers; breast ~logistic
around 50 and 99 % women; colon and prostate rising after 40/50; BCC/SCC with age and in white
persons). Survival medians (months from diagnosis, exponential): lung see ``lung.py``;
metastatic breast ~30 from metastasis, colon 35 % die (median 30), prostate 10 % (median 60).
In the oncology profile a share of cancer patients are referred and observed from shortly
before diagnosis, and lung cancer patients more often carry an earlier other cancer or skin
cancer (recorded possibly before their observation started: ``legacy`` records kept as-is,
which is what the "no history of cancer" rule, ignoring observation periods, must see).
Breast cancer: ~75 % ductal, tamoxifen in ~60 %, metastases (bone, liver, brain, lung) in ~20 %
(``ProfileRates.breast_met``),
some of them at diagnosis (a few just before the -30 day window).
"""

from __future__ import annotations

import numpy as np

from site_agent.cdm.synth.events import NO_DATE, YEAR, choice, expand, uniform_days
from site_agent.cdm.synth.population import Block, add_visits


def _incident(b: Block, rate: float, weight: np.ndarray, min_age: float, referral: float = 0.0):
    """Persons newly diagnosed during observation: (pidx, dx date)."""
    r, n = b.rng, b.n
    w = np.maximum(weight, 0)
    mean = w.mean() if w.mean() > 0 else 1.0
    has = r.random(n) < np.clip(rate * w / mean, 0, 0.95)
    lo = np.maximum(b.op_start, b.birth + int(min_age * YEAR))
    has &= lo <= b.planned_end
    pidx = np.flatnonzero(has)
    dx = uniform_days(r, lo[pidx], b.planned_end[pidx])
    ref = r.random(pidx.size) < referral
    dx[ref] = np.minimum(lo[pidx][ref] + r.integers(0, 500, ref.sum()), b.planned_end[pidx][ref])
    return pidx, dx


def _survival(r: np.random.Generator, median_months: np.ndarray, cured: np.ndarray) -> np.ndarray:
    t = r.exponential(np.asarray(median_months) / np.log(2) * 30.44)
    return np.where(cured, NO_DATE, t.astype(np.int64))


def set_death(b: Block, pidx: np.ndarray, date: np.ndarray) -> None:
    np.minimum.at(b.cancer_death, pidx, np.minimum(date, NO_DATE))


def plan(b: Block) -> None:
    """Draw every cancer but lung (``lung.plan`` runs first); set cancer deaths (before
    observation periods are finalised)."""
    r, R = b.rng, b.p.rates
    age = b.age_at(b.planned_end)
    white = b.race == b.V["RACE_WHITE"]
    b.onc["uncertain"] = _incident(b, R.lung_uncertain, ((age - 35).clip(0) / 40) ** 2, 30)
    bp, bdx = _incident(b, R.breast_f * 0.5, np.where(b.female, 1.0, 0.01) / (1 + np.exp(-(age - 50) / 8)), 25, R.referral)
    met = r.random(bp.size) < R.breast_met
    met_date = bdx + np.where(r.random(bp.size) < 0.4, r.integers(-45, 30, bp.size), r.integers(180, 2000, bp.size))
    set_death(b, bp[met], met_date[met] + _survival(r, np.full(met.sum(), 30.0), np.zeros(met.sum(), bool)))
    b.onc["breast"] = (bp, bdx, met, met_date)
    cp, cdx = _incident(b, R.colon, ((age - 40).clip(0) / 30) ** 2, 30, R.referral)
    dies = r.random(cp.size) < 0.35
    set_death(b, cp, cdx + _survival(r, np.full(cp.size, 30.0), ~dies))
    b.onc["colon"] = (cp, cdx)
    pp, pdx = _incident(b, R.prostate_m * 0.5, np.where(b.female, 0.0, ((age - 50).clip(0) / 20) ** 2), 40, R.referral)
    dies = r.random(pp.size) < 0.1
    set_death(b, pp, pdx + _survival(r, np.full(pp.size, 60.0), ~dies))
    b.onc["prostate"] = (pp, pdx)
    b.onc["skin"] = _incident(b, R.skin, (age - 30).clip(0) * np.where(white, 1.0, 0.2), 30)
    # earlier cancers of lung cancer patients (kept even when before observation started)
    lp, ldx = b.onc["lung"]["pidx"], b.onc["lung"]["dx"]
    prior = r.random(lp.size) < R.prior_cancer_in_lung
    kind = np.where(b.female[lp], np.where(r.random(lp.size) < 0.7, 0, 1), np.where(r.random(lp.size) < 0.5, 2, 1))
    b.onc["prior"] = (lp[prior], ldx[prior] - r.integers(365, 8 * 365, prior.sum()), kind[prior])
    skin = r.random(lp.size) < R.prior_skin_in_lung
    b.onc["prior_skin"] = (lp[skin], ldx[skin] - r.integers(30, 6 * 365, skin.sum()))


def records(b: Block, pidx, date, concept, source, legacy=False, visit=None) -> None:
    """Condition records, each on its own outpatient visit unless ``visit`` is given."""
    if visit is None:
        visit = add_visits(b, pidx, date, b.V["VISIT_OP"])
    b.buf["condition"].add(pidx=pidx, date=date, concept=concept, source=source, visit=visit, legacy=legacy)


def _follow_ups(b: Block, pidx, dx, lo: int, hi: int, gap=(60, 200)):
    """Repeated records after diagnosis: (owner index, pidx, date)."""
    r = b.rng
    k = r.integers(lo, hi + 1, pidx.size)
    owner, seq = expand(k)
    step = r.integers(gap[0], gap[1], owner.size)
    # cumulative spacing within each owner
    cum = np.cumsum(step)
    starts = np.repeat(np.cumsum(k) - k, k)
    base = np.where(starts > 0, cum[np.maximum(starts - 1, 0)], 0)
    return owner, pidx[owner], dx[owner] + (cum - base)


def _coded_keys(b: Block, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uniq, inv = np.unique(keys, return_inverse=True)
    pairs = np.array([b.code(str(k)) for k in uniq], dtype=np.int64).reshape(-1, 2)
    return pairs[inv, 0], pairs[inv, 1]


def _simple_cancer(b: Block, pidx, dx, key_options, weights, legacy=False, fu=(1, 4)) -> None:
    r = b.rng
    keys = choice(r, np.array(key_options), weights, pidx.size)
    c, s = _coded_keys(b, keys)
    records(b, pidx, dx, c, s, legacy)
    owner, fp, fd = _follow_ups(b, pidx, dx, *fu)
    records(b, fp, fd, c[owner], s[owner], legacy)


def _breast_keys(b: Block, n: int, ductal: np.ndarray) -> np.ndarray:
    r, site = b.rng, b.p.cond_vocab
    keys = np.where(ductal, "BREAST_DUCTAL", "BREAST_MALIGNANT").astype(object)
    if site in ("ICD10CM", "ICD10"):
        icd = r.random(n) < 0.6
        keys[icd] = "ICD10CM_C50_919" if site == "ICD10CM" else "ICD10_C50_9"
    o3 = ductal & (r.random(n) < b.p.icdo3)
    keys[o3] = "ICDO3_8500_3_C50_9"
    return keys


def breast(b: Block) -> None:
    r, V = b.rng, b.V
    bp, bdx, met, met_date = b.onc["breast"]
    ductal = r.random(bp.size) < 0.75
    c, s = _coded_keys(b, _breast_keys(b, bp.size, ductal))
    mam = bdx - r.integers(10, 60, bp.size)
    vis = add_visits(b, bp, mam, V["VISIT_OP"])
    b.buf["procedure"].add(pidx=bp, date=mam, concept=V["MAMMOGRAPHY"], source=V["MAMMOGRAPHY"], visit=vis)
    records(b, bp, bdx, c, s)
    owner, fp, fd = _follow_ups(b, bp, bdx, 1, 6)
    records(b, fp, fd, c[owner], s[owner])
    # tamoxifen every ~90 days
    tam = np.flatnonzero(r.random(bp.size) < 0.6)
    k = r.integers(4, 21, tam.size)
    owner, seq = expand(k)
    start = bdx[tam][owner] + r.integers(30, 120, tam.size)[owner] + seq * 90 + r.integers(0, 10, owner.size)
    tp = bp[tam][owner]
    vis = add_visits(b, tp, start, V["VISIT_OP"])
    b.buf["drug"].add(pidx=tp, start=start, end=start + 89, concept=V["TAMOXIFEN"], source=V["TAMOXIFEN"], days_supply=90, visit=vis)
    # metastases
    mi = np.flatnonzero(met)
    site = choice(r, np.array(["SEC_BONE", "SEC_LIVER", "SEC_BRAIN", "LUNG_SECONDARY"]), [0.5, 0.2, 0.1, 0.2], mi.size).astype(object)
    if b.p.cond_vocab == "ICD10CM":
        icd = r.random(mi.size) < 0.6
        site[icd & (site == "SEC_BONE")] = "ICD10CM_C79_51"
        site[icd & (site == "LUNG_SECONDARY")] = "ICD10CM_C78_00"
    c, s = _coded_keys(b, site)
    records(b, bp[mi], met_date[mi], c, s)
    owner, fp, fd = _follow_ups(b, bp[mi], met_date[mi], 0, 3)
    records(b, fp, fd, c[owner], s[owner])


def others(b: Block) -> None:
    V = b.V
    cp, cdx = b.onc["colon"]
    _simple_cancer(b, cp, cdx, ["COLON_MALIGNANT"], [1.0])
    pp, pdx = b.onc["prostate"]
    _simple_cancer(b, pp, pdx, ["PROSTATE_MALIGNANT"], [1.0])
    sp, sdx = b.onc["skin"]
    _simple_cancer(b, sp, sdx, ["SKIN_BCC", "SKIN_SCC", "SKIN_MALIGNANT"], [0.7, 0.2, 0.1], fu=(0, 1))
    # prior cancers of lung patients: legacy records, even before observation
    pp, pdx, kind = b.onc["prior"]
    keys = np.array(["BREAST_MALIGNANT", "COLON_MALIGNANT", "PROSTATE_MALIGNANT"])
    for k in range(3):
        sel = kind == k
        _simple_cancer(b, pp[sel], pdx[sel], [keys[k]], [1.0], legacy=True, fu=(0, 2))
    sp, sdx = b.onc["prior_skin"]
    _simple_cancer(b, sp, sdx, ["SKIN_BCC", "SKIN_SCC"], [0.8, 0.2], legacy=True, fu=(0, 0))
    # neoplasm of uncertain behaviour of lung
    up, udx = b.onc["uncertain"]
    vis = add_visits(b, up, udx - 7, V["VISIT_OP"])
    b.buf["procedure"].add(pidx=up, date=udx - 7, concept=V["CT_CHEST"], source=V["CT_CHEST"], visit=vis)
    cid = V["LUNG_NEOPLASM_UNCERTAIN"]
    records(b, up, udx, cid, cid)
    owner, fp, fd = _follow_ups(b, up, udx, 0, 2)
    records(b, fp, fd, cid, cid)


def generate(b: Block) -> None:
    """Records of the non-lung cancers (``lung.generate`` runs first)."""
    breast(b)
    others(b)
