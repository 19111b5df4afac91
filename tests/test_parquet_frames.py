"""Frames kept as Parquet read back as they were written: text columns stay object columns (missing
as None) whether they were kept as dictionaries or as plain strings."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from coordinator.pooling.parquet import from_parquet, to_parquet


def _plain_round_trip(frame: pd.DataFrame) -> pd.DataFrame:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buf, compression="zstd")
    return pq.read_table(io.BytesIO(buf.getvalue())).to_pandas()


def _same(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    if list(a.columns) != list(b.columns) or not (a.dtypes == b.dtypes).all() or len(a) != len(b):
        return False
    for c in a.columns:
        x, y = a[c].to_numpy(), b[c].to_numpy()
        if [type(v) for v in x] != [type(v) for v in y]:
            return False
        miss = pd.isna(x)
        if not (miss == pd.isna(y)).all() or not (x[~miss] == y[~miss]).all():
            return False
    return True


def test_repeated_text_missing_values_and_other_columns_read_back_unchanged():
    n = 1000
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({
        "result_id": rng.integers(1, 5, n),
        "repeated": rng.choice(["count", "percentage", "mean", "a &&& b"], n).astype(object),
        "with_missing": np.where(rng.random(n) < 0.2, None, rng.choice(["x", "y", "é"], n)).astype(object),
        "with_nan": np.where(rng.random(n) < 0.2, np.nan, rng.choice(["1", "2"], n).astype(object)),
        "all_distinct": np.array([f"v{i}" for i in range(n)], dtype=object),
        "number": rng.random(n),
        "all_missing": np.array([None] * n, dtype=object),
    })
    back = from_parquet(to_parquet(frame))
    assert _same(back, _plain_round_trip(frame))
    assert back["with_missing"].tolist() == frame["with_missing"].tolist()
    assert all(v is None for v in back.loc[frame["with_nan"].isna(), "with_nan"])
    assert back["repeated"].dtype == object and back["repeated"].tolist() == frame["repeated"].tolist()


def test_empty_and_one_row_frames():
    for frame in (pd.DataFrame({"a": pd.Series([], dtype=object), "b": pd.Series([], dtype="int64")}),
                  pd.DataFrame({"a": ["only"], "b": [1]})):
        back = from_parquet(to_parquet(frame))
        assert _same(back, _plain_round_trip(frame))
