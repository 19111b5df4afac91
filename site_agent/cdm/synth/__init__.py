"""Synthetic OMOP CDM v5.4 sites with known cohort counts.

``generate_site`` writes a DuckDB CDM for one site and returns a :class:`SynthResult` holding
the *ground truth* of the 12 network cohorts (``cohort_definitions/README.md``), computed from
the generator's own records in Python (see ``truth.py``), never by querying the database.

Persons are generated in fixed blocks of ``BLOCK`` persons, each from its own random stream
``np.random.default_rng([seed, block, site hash, profile])``; ``chunk_size`` (rounded up to
whole blocks) only sets how many persons are held in memory and written at once, so the
database content does not depend on it. Same arguments -> identical content.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from optima_common.errors import ConfigError
from site_agent.cdm.synth import background, lung, oncology, population, truth
from site_agent.cdm.synth.params import PROFILES, SiteParams
from site_agent.cdm.synth.population import Block
from site_agent.cdm.synth.vocabulary import Vocabulary
from site_agent.cdm.synth.writer import CdmWriter, discard, temp_path

__all__ = ["BLOCK", "SynthResult", "generate_site"]

BLOCK = 1000
MAX_PERSONS = 50_000_000
RELEASE_DATE = dt.date(2026, 1, 15)


class SynthResult(BaseModel):
    out: Path
    site: str
    profile: str
    seed: int
    persons: int
    chunk_size: int
    counts: dict[str, int] = Field(description="rows written per CDM table")
    elapsed_seconds: float
    truth: dict[str, dict[str, int]] = Field(description="cohort name -> {records, subjects}")
    truth_attrition: list[dict[str, int | str]] = Field(description="sclc_stage_i_ii: [{rule, subjects}]")
    site_params: dict[str, object] = Field(default_factory=dict)


def _validate(out, persons, site, profile, seed, chunk_size) -> Path:
    if isinstance(persons, bool) or not isinstance(persons, int) or persons < 1:
        raise ConfigError(f"persons must be a positive integer, got {persons!r}")
    if persons > MAX_PERSONS:
        raise ConfigError(f"persons must be at most {MAX_PERSONS:,}, got {persons:,}")
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}", hint=f"use one of {', '.join(PROFILES)}")
    if not isinstance(site, str) or not site.strip() or len(site) > 255:
        raise ConfigError(f"site must be a non-empty name of at most 255 characters, got {site!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    try:
        path = Path(out).expanduser()
    except TypeError as e:
        raise ConfigError(f"out must be a file path, got {out!r}") from e
    if path.exists() and not path.is_file():
        raise ConfigError(f"output path {path} exists and is not a file")
    if path.parent.exists() and not path.parent.is_dir():
        raise ConfigError(f"output folder {path.parent} is not a folder")
    return path


def _block(seed: int, index: int, n: int, params: SiteParams, vocab: Vocabulary, salt: int) -> dict:
    rng = np.random.default_rng([seed, index, salt, PROFILES.index(params.profile)])
    b = Block(rng=rng, p=params, V=vocab.id, n=n, maps=vocab.maps, std=vocab.standard_keys)
    population.make_persons(b)
    population.plan_periods(b)
    lung.plan(b, b.age_at(b.planned_end))
    oncology.plan(b)
    population.finalize_periods(b)
    population.make_visits(b)
    background.generate(b)
    lung.generate(b)
    oncology.generate(b)
    return population.finish(b)


def _concat(blocks: list[dict]) -> dict:
    """Join blocks into one chunk: person indices and visit references are offset."""
    out: dict[str, dict[str, np.ndarray]] = {}
    p_off = np.cumsum([0] + [blk["person"]["yob"].size for blk in blocks])
    v_off = np.cumsum([0] + [blk["visit"]["pidx"].size for blk in blocks])
    for table in blocks[0]:
        cols: dict[str, np.ndarray] = {}
        for col in blocks[0][table]:
            parts = []
            for i, blk in enumerate(blocks):
                a = blk[table][col]
                if col == "pidx":
                    a = a + p_off[i]
                elif col == "visit":
                    a = np.where(a >= 0, a + v_off[i], -1)
                parts.append(a)
            cols[col] = np.concatenate(parts)
        out[table] = cols
    return out


def generate_site(
    out: str | Path,
    persons: int,
    site: str = "site_a",
    profile: str = "primary-care",
    seed: int = 1,
    chunk_size: int = 250_000,
    vocabulary: str | Path | None = None,
    notes: bool = False,
) -> SynthResult:
    """Generate a synthetic OMOP CDM 5.4 DuckDB file for ``site`` and return its ground truth.

    ``vocabulary``: an Athena download folder; the clinical roles then use its concepts and its
    hierarchy (``athena.vocabulary_from_athena``), else the built-in vocabulary subset.
    ``notes``: also write radiology reports of the breast cancer patients into ``note`` and their
    ground truth next to the CDM (``notes.truth_path``); off by default, so other CDMs are unchanged.
    """
    path = _validate(out, persons, site, profile, seed, chunk_size)
    t0 = time.perf_counter()
    if vocabulary is None:
        vocab = Vocabulary.load()
    else:
        from site_agent.cdm.synth.athena import vocabulary_from_athena

        vocab = vocabulary_from_athena(vocabulary)
    sets = truth.concept_sets(vocab)
    params = SiteParams.derive(site, profile)
    salt = int.from_bytes(hashlib.sha256(site.encode("utf-8")).digest()[:4], "little")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    blocks_per_chunk = max(1, math.ceil(chunk_size / BLOCK))
    n_blocks = math.ceil(persons / BLOCK)
    totals = {name: {"records": 0, "subjects": 0} for name in truth.COHORTS}
    steps = [0] * len(truth.ATTRITION_RULES)
    try:
        writer = CdmWriter(tmp, vocab)
        try:
            writer.write_vocabulary()
            writer.write_cdm_source(site, profile, RELEASE_DATE)
            for first in range(0, n_blocks, blocks_per_chunk):
                idx = range(first, min(first + blocks_per_chunk, n_blocks))
                blocks = [_block(seed, i, min(BLOCK, persons - i * BLOCK), params, vocab, salt) for i in idx]
                chunk = _concat(blocks)
                del blocks
                counts, attrition = truth.compute(chunk, sets)
                for name, c in counts.items():
                    totals[name]["records"] += c["records"]
                    totals[name]["subjects"] += c["subjects"]
                steps = [a + b for a, b in zip(steps, attrition)]
                writer.write_chunk(chunk, person_offset=first * BLOCK)
                del chunk
        finally:
            writer.close()
        if notes:
            from site_agent.cdm.synth.notes import truth_path, write_radiology_notes

            secondary = {"liver": ["SEC_LIVER"], "bone": ["SEC_BONE"], "brain": ["SEC_BRAIN"], "lung": ["LUNG_SECONDARY"]}
            counts_notes = write_radiology_notes(
                tmp, seed, [int(c) for c in sets["breast"]],
                {s: [int(c) for c in vocab.ids_of(vocab.descendants(*keys))] for s, keys in secondary.items()},
                vocab.id["TYPE_EHR"], truth_out=truth_path(path))
            writer.counts["note"] = counts_notes["notes"]
        tmp.replace(path)
    except BaseException:
        discard(tmp)
        raise
    discard(tmp)  # a stray .wal, if any
    return SynthResult(
        out=path,
        site=site,
        profile=profile,
        seed=seed,
        persons=persons,
        chunk_size=chunk_size,
        counts=dict(writer.counts),
        elapsed_seconds=round(time.perf_counter() - t0, 3),
        truth=totals,
        truth_attrition=[{"rule": r, "subjects": s} for r, s in zip(truth.ATTRITION_RULES, steps)],
        site_params={k: v for k, v in vars(params).items() if k != "rates"} | {"rates": vars(params.rates)},
    )
