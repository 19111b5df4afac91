"""Column buffers for one block of persons, and small vectorised helpers.

Dates are ``int32`` days since 1970-01-01 throughout; persons are referred to by their index
in the block (``pidx``) and visits by their row index in the block's visit buffer (``visit``,
-1 = no visit). Ids are only assigned when a chunk is written.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

EPOCH = dt.date(1970, 1, 1)
NO_DATE = np.iinfo(np.int32).max


def day(y: int, m: int = 1, d: int = 1) -> int:
    return (dt.date(y, m, d) - EPOCH).days


END_OF_DATA = day(2025, 12, 31)
YEAR = 365.25

# column -> default (None = required)
SCHEMAS: dict[str, dict[str, object]] = {
    "visit": {"pidx": None, "start": None, "end": None, "concept": None},
    "condition": {"pidx": None, "date": None, "concept": None, "source": None, "visit": -1, "legacy": False},
    "drug": {"pidx": None, "start": None, "end": None, "concept": None, "source": None, "days_supply": None, "visit": -1},
    "procedure": {"pidx": None, "date": None, "concept": None, "source": None, "visit": -1},
    "measurement": {
        "pidx": None,
        "date": None,
        "concept": None,
        "source": None,
        "value": np.nan,
        "value_concept": -1,
        "unit": -1,
        "visit": -1,
    },
}
_DTYPES = {"pidx": np.int64, "visit": np.int64, "legacy": bool, "value": np.float64}


class Buffer:
    """Append-only column store for one table of one block."""

    def __init__(self, table: str):
        self.schema = SCHEMAS[table]
        self.parts: dict[str, list[np.ndarray]] = {c: [] for c in self.schema}
        self.n = 0

    def add(self, **cols: object) -> np.ndarray:
        """Append rows; scalars broadcast. Returns the new rows' indices."""
        n = max((np.size(v) for v in cols.values() if np.ndim(v) > 0), default=0)
        for c, default in self.schema.items():
            v = cols.pop(c, default)
            if v is None:
                raise KeyError(f"column {c} is required")
            arr = np.broadcast_to(np.asarray(v, dtype=_DTYPES.get(c, np.int64)), (n,))
            self.parts[c].append(arr)
        if cols:
            raise KeyError(f"unknown columns {sorted(cols)}")
        idx = np.arange(self.n, self.n + n)
        self.n += n
        return idx

    def finish(self) -> dict[str, np.ndarray]:
        return {
            c: (np.concatenate(p) if p else np.empty(0, dtype=_DTYPES.get(c, np.int64)))
            for c, p in self.parts.items()
        }


def expand(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For per-owner counts, (owner index, sequence number 0..count-1) of every child."""
    counts = np.asarray(counts, dtype=np.int64)
    owner = np.repeat(np.arange(counts.size), counts)
    starts = np.cumsum(counts) - counts
    seq = np.arange(owner.size) - np.repeat(starts, counts)
    return owner, seq


def choice(rng: np.random.Generator, options: np.ndarray, p: list[float] | np.ndarray, n: int) -> np.ndarray:
    p = np.asarray(p, dtype=float)
    return np.asarray(options)[rng.choice(len(p), size=n, p=p / p.sum())]


def uniform_days(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Uniform integer day in [lo, hi] (hi < lo gives lo)."""
    span = np.maximum(np.asarray(hi) - np.asarray(lo), 0)
    return (np.asarray(lo) + np.floor(rng.random(np.size(span)) * (span + 1))).astype(np.int64)
