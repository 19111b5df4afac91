"""Frames kept in the results store as Parquet (zstd): the pooled result and the sites' tables.

A text column that repeats its values (most of a ``summarised_result``: names, levels, types) is
written as a dictionary column (a pandas ``Categorical``): turning a few thousand distinct strings
into Arrow is far cheaper than turning millions of row values, and reading it back takes each
row's value from the few thousand categories instead of building millions of Python strings. It
reads back as the plain ``object`` column it was, missing values as ``None``.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd


def _as_dictionary(s: pd.Series) -> pd.Series | pd.Categorical:
    """``s`` as a Categorical when it is text repeating its values (at most half of its rows distinct)."""
    if s.dtype != object or len(s) < 2:
        return s
    codes, uniques = pd.factorize(s.to_numpy(), use_na_sentinel=True)
    if len(uniques) > len(s) // 2 or not all(type(u) is str for u in uniques):
        return s
    return pd.Categorical.from_codes(codes, categories=pd.Index(uniques, dtype=object))


def _as_text(s: pd.Series) -> pd.Series:
    """A dictionary column back as the object column it was written from (missing as None)."""
    if not isinstance(s.dtype, pd.CategoricalDtype):
        return s
    values = np.append(s.cat.categories.to_numpy(dtype=object), None)  # code -1 (missing) takes the None
    return pd.Series(values[s.cat.codes.to_numpy()], index=s.index, name=s.name, dtype=object)


def to_parquet(frame: pd.DataFrame) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = pd.DataFrame({c: _as_dictionary(frame[c]) for c in frame.columns}, index=frame.index)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(cols, preserve_index=False), buf, compression="zstd")
    return buf.getvalue()


def from_parquet(blob: bytes) -> pd.DataFrame:
    import pyarrow.parquet as pq

    frame = pq.read_table(io.BytesIO(blob)).to_pandas()
    return pd.DataFrame({c: _as_text(frame[c]) for c in frame.columns}, index=frame.index)
