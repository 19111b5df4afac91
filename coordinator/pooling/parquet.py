"""Frames kept in the results store as Parquet (zstd): the pooled result and the sites' tables."""

from __future__ import annotations

import io

import pandas as pd


def to_parquet(frame: pd.DataFrame) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buf, compression="zstd")
    return buf.getvalue()


def from_parquet(blob: bytes) -> pd.DataFrame:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(blob)).to_pandas()
