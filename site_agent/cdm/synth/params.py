"""Site and profile parameters.

Site parameters are drawn deterministically from a hash of the site name, so two sites with
the same profile still differ in age structure, ethnicity mix, visit intensity and, above all,
*coding habits* (which source vocabulary they code diagnoses in, how often a generic lung-cancer
code precedes the histology, how cancer stage is recorded, how many local codes stay unmapped).

Profile rates are rough orders of magnitude, not estimates:

* primary-care: general population; lung cancer in ~0.5-1 % of persons (lifetime risk ~6 %,
  but observation covers ~10 years), breast ~1.5 % of women, prostate ~1 % of men,
  colon ~0.5 %, skin (BCC/SCC) ~3 %.
* oncology: a cancer-centre population, ~15-25 % of persons have some non-skin cancer,
  lung cancer ~7-8 % (incident during observation); a share of cancer patients are referred shortly before diagnosis
  (short prior observation).
* histology (SEER-like): SCLC ~15 % of lung cancers, adenocarcinoma ~45 %, squamous ~25 %,
  NSCLC NOS ~15 %. Stage at diagnosis: SCLC I-II ~5 % (the seed study), NSCLC I ~25 %.
* lung-registry: a thoracic-oncology registry (as several of the seed network's partners):
  ~35 % of persons have an incident lung cancer during observation, SCLC-enriched (60 % of
  lung cancers) and with early stages over-represented (SCLC I/II/III/IV = 50/30/10/10 %),
  so that a few thousand persons hold a stage I-II SCLC cohort that the study can describe;
  registry follow-up for vital status is complete for 5 years after diagnosis (no one is
  diagnosed in the last 5 years of observation, one observation period per person), so early
  survival is not censored.
* breast-centre: a breast cancer unit (the seed's metastasis-NLP workflow ran at one): ~85 % of
  persons are women, ~25-30 % of persons have an incident breast cancer during observation, many
  referred shortly before diagnosis, ~30 % of them with metastases; little lung cancer. It gives a
  few thousand persons enough breast cancer patients for the NLP analysis (``cdm synth --notes``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

PROFILES = ("primary-care", "oncology", "lung-registry", "breast-centre")  # append only: the index seeds the blocks
STAGING_STYLES = ("combined", "clinical", "pathological", "tnm", "ptnm")  # see lung.staging


@dataclass(frozen=True)
class ProfileRates:
    lung: float
    lung_uncertain: float
    breast_f: float
    colon: float
    prostate_m: float
    skin: float
    referral: float  # share of cancer patients whose observation starts shortly before diagnosis
    prior_cancer_in_lung: float  # extra other-cancer history among lung cancer patients
    prior_skin_in_lung: float
    age_tilt: float  # shifts the age pyramid older
    histology: tuple[float, float, float, float] = (0.15, 0.45, 0.25, 0.15)  # SCLC, adeno, squamous, NSCLC NOS
    sclc_stage: tuple[float, float, float, float] = (0.03, 0.02, 0.30, 0.65)  # SCLC stage I..IV at diagnosis
    lung_followup_days: int = 0  # registry: lung cancers diagnosed at least this long before observation ends
    breast_met: float = 0.2  # share of breast cancer patients with metastases
    female_extra: float = 0.0  # added to the site's share of women


RATES = {
    "primary-care": ProfileRates(0.0075, 0.0008, 0.015, 0.005, 0.01, 0.03, 0.05, 0.04, 0.04, 0.0),
    "oncology": ProfileRates(0.085, 0.004, 0.15, 0.035, 0.07, 0.06, 0.35, 0.04, 0.08, 0.6),
    "lung-registry": ProfileRates(2.0, 0.004, 0.03, 0.01, 0.02, 0.04, 0.15, 0.05, 0.08, 0.8,
                                  histology=(0.6, 0.2, 0.12, 0.08), sclc_stage=(0.5, 0.3, 0.1, 0.1),
                                  lung_followup_days=5 * 365),
    "breast-centre": ProfileRates(0.01, 0.002, 0.6, 0.01, 0.005, 0.03, 0.4, 0.04, 0.04, 0.3,
                                  breast_met=0.3, female_extra=0.35),
}


@dataclass(frozen=True)
class SiteParams:
    site: str
    profile: str
    rates: ProfileRates
    age_tilt: float
    female_frac: float
    race_p: tuple[float, float, float, float]  # white, black, asian, unknown
    hispanic: float
    smoker: float
    visit_rate: float
    two_periods: float
    cond_vocab: str  # SNOMED | ICD10CM | ICD10: how diagnoses are coded at source
    icdo3: float  # share of histology records coded in ICD-O-3
    generic_first: float  # share of lung cancers first coded with a generic lung code
    local_mapped: float
    local_unmapped: float
    staging: str
    staging_alt: str
    staging_alt_p: float
    staging_missing: float
    staging_out_window: float
    chemo_ingredient: float  # share of chemo records coded at ingredient level
    rt_weekly: bool  # radiotherapy recorded once a week instead of per fraction

    @classmethod
    def derive(cls, site: str, profile: str) -> SiteParams:
        h = int.from_bytes(hashlib.sha256(site.encode("utf-8")).digest()[:8], "little")
        r = np.random.default_rng(h)
        rates = RATES[profile]
        white = r.uniform(0.55, 0.85)
        black = r.uniform(0.05, 0.2)
        asian = r.uniform(0.02, 0.12)
        unknown = max(0.02, 1 - white - black - asian)
        staging = str(r.choice(STAGING_STYLES))
        return cls(
            site=site,
            profile=profile,
            rates=rates,
            age_tilt=float(r.uniform(-0.4, 0.5) + rates.age_tilt),
            female_frac=float(r.uniform(0.49, 0.53) + (0.03 if profile == "oncology" else 0) + rates.female_extra),
            race_p=(white, black, asian, unknown),
            hispanic=float(r.uniform(0.03, 0.2)),
            smoker=float(r.uniform(0.12, 0.25)),
            visit_rate=float(r.uniform(0.7, 1.4)),
            two_periods=float(r.uniform(0.08, 0.2)) * (0.0 if rates.lung_followup_days else 1.0),  # registry: one period
            cond_vocab=str(r.choice(["SNOMED", "ICD10CM", "ICD10"], p=[0.3, 0.45, 0.25])),
            icdo3=float(r.uniform(0.0, 0.6)),
            generic_first=float(r.uniform(0.1, 0.45)),
            local_mapped=float(r.uniform(0.0, 0.12)),
            local_unmapped=float(r.uniform(0.01, 0.06)),
            staging=staging,
            staging_alt=str(r.choice([s for s in STAGING_STYLES if s != staging])),
            staging_alt_p=float(r.uniform(0.05, 0.3)),
            staging_missing=float(r.uniform(0.1, 0.35)),
            staging_out_window=float(r.uniform(0.04, 0.15)),
            chemo_ingredient=float(r.uniform(0.05, 0.3)),
            rt_weekly=bool(r.random() < 0.4),
        )
