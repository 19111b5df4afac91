"""Persons, observation periods, background mortality and visits for one block.

Realism assumptions (orders of magnitude only):

* age pyramid: flat 5-year bands to 60 then decaying by 25 %/band, tilted per site (older in
  the oncology profile); 51 % women (a little more in oncology); race and Hispanic ethnicity
  mix per site.
* observation starts uniformly 2005-2020 (not before birth); ~60 % stay to 2025-12-31, the rest
  leave earlier; a site-specific 8-20 % of long periods are split in two by a 2-24 month gap.
* mortality: Gompertz hazard 0.0003 * exp(0.09 (age - 20)) per year (~6.6 %/year at 80),
  plus cancer deaths. Observation ends at death; deaths after the end of observation (lost
  to follow-up, found by registry linkage) are recorded for ~35 % of them (outside any
  observation period, so the death cohort must not count them).
* visits per year: outpatient ~1 (rising with age), ER ~0.08, inpatient ~0.04; inpatient
  stays 1-20 days.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from site_agent.cdm.synth.events import (
    END_OF_DATA,
    NO_DATE,
    YEAR,
    Buffer,
    day,
    uniform_days,
)
from site_agent.cdm.synth.params import SiteParams


@dataclass
class Block:
    """Everything generated for one block of ``n`` persons (local indices 0..n-1)."""

    rng: np.random.Generator
    p: SiteParams
    V: dict[str, int]
    n: int
    buf: dict[str, Buffer] = field(default_factory=lambda: {t: Buffer(t) for t in ("visit", "condition", "drug", "procedure", "measurement")})
    # persons
    female: np.ndarray = None
    yob: np.ndarray = None
    mob: np.ndarray = None
    dob: np.ndarray = None
    birth: np.ndarray = None
    race: np.ndarray = None
    eth: np.ndarray = None
    smoker: np.ndarray = None
    # observation
    op_start: np.ndarray = None
    planned_end: np.ndarray = None
    op1_end: np.ndarray = None
    op2_start: np.ndarray = None
    op_end: np.ndarray = None
    bg_death: np.ndarray = None
    cancer_death: np.ndarray = None
    death: np.ndarray = None
    death_recorded: np.ndarray = None
    obese: np.ndarray = None
    maps: dict[str, str] = field(default_factory=dict)  # source key -> standard key
    std: set[str] = field(default_factory=set)  # standard concept keys
    onc: dict[str, object] = field(default_factory=dict)  # the oncology plan

    def code(self, source_key: str) -> tuple[int, int]:
        """(concept_id, source_concept_id) a record coded with ``source_key`` gets."""
        src = self.V[source_key]
        if source_key in self.std:
            return src, src
        target = self.maps.get(source_key)
        return (self.V[target] if target else 0), src

    def age_at(self, date: np.ndarray, pidx: np.ndarray | None = None) -> np.ndarray:
        birth = self.birth if pidx is None else self.birth[pidx]
        return (np.asarray(date) - birth) / YEAR

    def in_op(self, pidx: np.ndarray, date: np.ndarray) -> np.ndarray:
        return ((date >= self.op_start[pidx]) & (date <= self.op1_end[pidx])) | (
            (date >= self.op2_start[pidx]) & (date <= self.op_end[pidx])
        )


def make_persons(b: Block) -> None:
    r, n, p = b.rng, b.n, b.p
    bands = np.arange(20)
    w = np.where(bands < 12, 1.0, 0.75 ** (bands - 11)) * np.exp(p.age_tilt * (bands - 10) / 10)
    band = r.choice(20, size=n, p=w / w.sum())
    age_2025 = band * 5 + r.random(n) * 5
    b.birth = (END_OF_DATA - age_2025 * YEAR).astype(np.int64)
    dates = b.birth.astype("datetime64[D]")
    b.yob = dates.astype("datetime64[Y]").astype(np.int64) + 1970
    b.mob = dates.astype("datetime64[M]").astype(np.int64) % 12 + 1
    b.dob = (dates - dates.astype("datetime64[M]")).astype(np.int64) + 1
    b.female = r.random(n) < p.female_frac
    race_keys = np.array([b.V["RACE_WHITE"], b.V["RACE_BLACK"], b.V["RACE_ASIAN"], 0])
    b.race = race_keys[r.choice(4, size=n, p=np.array(p.race_p) / sum(p.race_p))]
    b.eth = np.where(r.random(n) < p.hispanic, b.V["ETH_HISPANIC"], b.V["ETH_NOT_HISPANIC"])
    adult = age_2025 > 25
    b.smoker = adult & (r.random(n) < p.smoker * np.where(b.female, 0.8, 1.2))


def plan_periods(b: Block) -> None:
    r, n = b.rng, b.n
    start = uniform_days(r, np.full(n, day(2005)), np.full(n, day(2020, 12, 31)))
    young = b.birth > start
    start[young] = np.minimum(b.birth[young] + r.integers(0, 60, young.sum()), END_OF_DATA)
    b.op_start = start
    stays = r.random(n) < 0.6
    leave = uniform_days(r, start + 180, np.full(n, END_OF_DATA))
    b.planned_end = np.maximum(np.minimum(np.where(stays, END_OF_DATA, leave), END_OF_DATA), start)
    # Gompertz background mortality from the start of observation
    a, g = 0.0003, 0.09
    age0 = np.maximum(b.age_at(start), 0)
    t = np.log1p(r.exponential(size=n) * g / (a * np.exp(g * (age0 - 20)))) / g
    b.bg_death = np.minimum(start + t * YEAR, 1e9).astype(np.int64)
    b.cancer_death = np.full(n, NO_DATE, dtype=np.int64)


def finalize_periods(b: Block) -> None:
    """Combine deaths, end observation at death and split some periods with a gap."""
    r, n = b.rng, b.n
    death = np.minimum(b.bg_death, b.cancer_death)
    death = np.maximum(death, b.op_start)
    in_obs = death <= b.planned_end
    later = ~in_obs & (death <= END_OF_DATA)
    b.op_end = np.where(in_obs, death, b.planned_end)
    b.death = np.where(in_obs | later, death, NO_DATE)
    b.death_recorded = (in_obs & (r.random(n) < 0.97)) | (later & (r.random(n) < 0.35))
    span = b.op_end - b.op_start
    split = (span > 3 * 365) & (r.random(n) < b.p.two_periods)
    gap_start = b.op_start + 365 + np.floor(r.random(n) * np.maximum(span - 3 * 365, 1)).astype(np.int64)
    gap_len = r.integers(60, 720, n)
    op2 = np.minimum(gap_start + gap_len, b.op_end - 180)
    b.op1_end = np.where(split, gap_start, b.op_end)
    b.op2_start = np.where(split, op2, NO_DATE)


def make_visits(b: Block) -> None:
    """Background visits, uniform over the observation span (those in a gap are dropped later)."""
    r, n, V = b.rng, b.n, b.V
    years = (b.op_end - b.op_start + 1) / YEAR
    age = np.clip(b.age_at(b.op_start), 0, 100)
    intensity = b.p.visit_rate * (0.6 + age / 60) * years
    for concept, rate, max_len in ((V["VISIT_OP"], 1.0, 0), (V["VISIT_ER"], 0.08, 1), (V["VISIT_IP"], 0.04, 20)):
        counts = r.poisson(intensity * rate)
        pidx = np.repeat(np.arange(n), counts)
        start = uniform_days(r, b.op_start[pidx], b.op_end[pidx])
        length = np.minimum(r.geometric(0.3, pidx.size), max_len) if max_len else 0
        b.buf["visit"].add(pidx=pidx, start=start, end=start + length, concept=concept)


def add_visits(b: Block, pidx: np.ndarray, date: np.ndarray, concept: int, length: int | np.ndarray = 0) -> np.ndarray:
    return b.buf["visit"].add(pidx=pidx, start=date, end=np.asarray(date) + length, concept=concept)


def finish(b: Block) -> dict[str, dict[str, np.ndarray]]:
    """Keep events inside observation (or flagged legacy), remap visit references."""
    out: dict[str, dict[str, np.ndarray]] = {}
    v = b.buf["visit"].finish()
    keep = b.in_op(v["pidx"], v["start"])
    new_index = np.full(keep.size + 1, -1, dtype=np.int64)  # last slot maps -1 -> -1
    new_index[:-1][keep] = np.arange(keep.sum())
    v = {k: a[keep] for k, a in v.items()}
    v["end"] = np.maximum(np.minimum(v["end"], b.op_end[v["pidx"]]), v["start"])
    out["visit"] = v
    for t in ("condition", "drug", "procedure", "measurement"):
        d = b.buf[t].finish()
        date = d["start"] if t == "drug" else d["date"]
        ok = b.in_op(d["pidx"], date)
        if "legacy" in d:
            ok |= d["legacy"] & (date >= b.birth[d["pidx"]])
        ok &= date <= END_OF_DATA
        d = {k: a[ok] for k, a in d.items()}
        d["visit"] = new_index[d["visit"]]
        out[t] = d
    # Data-entry errors: ~0.5 % of birth years are recorded decades too late (a transposed
    # or mistyped year), so a few adults with cancer look like minors to an age rule.
    typo = b.rng.random(b.n) < 0.005
    recorded_yob = np.where(typo, np.minimum(b.yob + b.rng.integers(40, 61, b.n), 2025), b.yob)
    out["person"] = {
        "female": b.female,
        "yob": recorded_yob,
        "mob": b.mob,
        "dob": b.dob,
        "birth": b.birth,
        "race": b.race,
        "eth": b.eth,
    }
    two = b.op2_start != NO_DATE
    pidx = np.concatenate([np.arange(b.n), np.flatnonzero(two)])
    start = np.concatenate([b.op_start, b.op2_start[two]])
    end = np.concatenate([b.op1_end, b.op_end[two]])
    order = np.lexsort((start, pidx))
    out["observation_period"] = {"pidx": pidx[order], "start": start[order], "end": end[order]}
    dead = b.death_recorded & (b.death != NO_DATE)
    out["death"] = {"pidx": np.flatnonzero(dead), "date": b.death[dead]}
    return out
