"""Patient-level splits: every slide of a patient goes to one split, never two.

Fractions 70 / 10 / 15 (train / validation / test); the rest of the patients are held out.
With few patients each of validation and test gets at least one patient when there are four
or more, and train always gets at least one. Given each patient's classes, the split is
stratified over the label set so that rare classes reach the test split (issue 17).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from optima_common.errors import PathologyDataError

SPLITS = ("train", "val", "test", "heldout")
COLUMNS = ("slide_id", "patient_id", "slide", "annotations")


@dataclass(frozen=True)
class SlideRecord:
    slide_id: str
    patient_id: str
    slide: Path
    annotations: Path | None


def read_slide_table(data_dir: Path) -> list[SlideRecord]:
    """``DIR/slides.csv`` with columns slide_id, patient_id, slide, annotations (paths relative
    to DIR; annotations may be empty for unannotated slides)."""
    data_dir = Path(data_dir)
    path = data_dir / "slides.csv"
    if not data_dir.is_dir():
        raise PathologyDataError(f"data folder not found: {data_dir}")
    if not path.is_file():
        raise PathologyDataError(f"{path} not found", hint="a pathology data folder needs slides.csv "
                                 "(slide_id,patient_id,slide,annotations); `site-agent images synth pathology` writes one")
    try:
        rows = list(csv.DictReader(path.open(newline="")))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise PathologyDataError(f"{path} is not a readable CSV: {exc}") from None
    if not rows or any(c not in rows[0] for c in COLUMNS):
        raise PathologyDataError(f"{path} must have the columns {', '.join(COLUMNS)} and at least one row")
    out, seen = [], set()
    for i, r in enumerate(rows, start=2):
        if not r["slide_id"] or not r["patient_id"] or not r["slide"]:
            raise PathologyDataError(f"{path} line {i}: slide_id, patient_id and slide must not be empty")
        if r["slide_id"] in seen:
            raise PathologyDataError(f"{path} line {i}: slide_id {r['slide_id']!r} appears twice")
        seen.add(r["slide_id"])
        slide = data_dir / r["slide"]
        if not slide.is_file():
            raise PathologyDataError(f"{path} line {i}: slide file not found: {slide}")
        ann = data_dir / r["annotations"] if r["annotations"] else None
        if ann is not None and not ann.is_file():
            raise PathologyDataError(f"{path} line {i}: annotation file not found: {ann}")
        out.append(SlideRecord(r["slide_id"], r["patient_id"], slide, ann))
    return out


def split_counts(n: int, fractions=(0.7, 0.1, 0.15)) -> tuple[int, int, int]:
    n_val = round(fractions[1] * n)
    n_test = round(fractions[2] * n)
    if n >= 4:
        n_val, n_test = max(1, n_val), max(1, n_test)
    n_train = min(n - n_val - n_test, round(fractions[0] * n))
    if n_train < 1:
        n_train, n_val, n_test = 1, min(n_val, max(0, n - 1)), min(n_test, max(0, n - 1 - min(n_val, max(0, n - 1))))
    return n_train, n_val, n_test


def patient_splits(patient_ids, *, seed: int = 0, fractions=(0.7, 0.1, 0.15),
                   labels: dict[str, set[int]] | None = None) -> dict[str, str]:
    """patient id -> one of train/val/test/heldout (shuffled with ``seed``).

    ``labels`` (patient id -> the classes of its labelled patches) stratify the split at patient
    level over the label set: before the splits are filled at random, train, then test, then
    validation each take patients (rarest missing class first, then the patient covering most
    missing classes) until every class that an unassigned patient still carries is in the split,
    within the split's size. A class with one patient thus lands in train, with two in train and
    test, with three or more in all three. Split sizes are those of :func:`split_counts`."""
    patients = sorted(set(patient_ids))
    if not patients:
        raise PathologyDataError("no patients to split")
    order = np.random.default_rng(seed).permutation(len(patients))
    n_train, n_val, n_test = split_counts(len(patients), fractions)
    if labels is None:
        bounds = np.cumsum([n_train, n_val, n_test])
        out = {}
        for rank, idx in enumerate(order):
            out[patients[idx]] = "train" if rank < bounds[0] else "val" if rank < bounds[1] else \
                "test" if rank < bounds[2] else "heldout"
        return out
    ranked = [patients[i] for i in order]
    rank = {p: k for k, p in enumerate(ranked)}
    has = {p: set(labels.get(p, ())) for p in patients}
    size = {"train": n_train, "val": n_val, "test": n_test}
    out: dict[str, str] = {}
    for split in ("train", "test", "val"):
        got: set[int] = set()
        while sum(v == split for v in out.values()) < size[split]:
            free = [p for p in ranked if p not in out]
            missing = {c for p in free for c in has[p]} - got
            if not missing:
                break
            carriers = {c: sum(c in has[p] for p in free) for c in missing}
            rarest = min(missing, key=lambda c: (carriers[c], c))
            pick = min((p for p in free if rarest in has[p]), key=lambda p: (-len(has[p] & missing), rank[p]))
            out[pick] = split
            got |= has[pick]
    for split in ("test", "val", "train"):
        for p in ranked:
            if sum(v == split for v in out.values()) >= size[split]:
                break
            if p not in out:
                out[p] = split
    return {p: out.get(p, "heldout") for p in patients}
