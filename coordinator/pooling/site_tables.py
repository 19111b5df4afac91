"""Each site's table kept as the ingest read it, so pooling does not read the sites' CSV texts again.

The coordinator's disclosure re-check reads every bundle's table at ingest
(``SummarisedResult.from_csv_text``: parse, validate, sort); pooling used to read all of them
again (a 20-site network: ~13 of its ~31 CPU s). The verifying worker now keeps the table it
re-checked as Parquet (zstd), stored beside the bundle (table ``site_tables``, migration 0006),
and :func:`kept_tables` hands it to pooling. A kept table is used only

* for the very bundle it was read from: it carries the sha256 of that bundle's signed bytes,
  which must be the digest of the bundle the store holds for that site now (a re-sent or
  replaced bundle is read from its text);
* as read by the same reader: ``reader`` hashes the reader's source (``optima_common/results.py``)
  and this format, so other reading code reads the text again;
* intact: ``digest`` covers the bundle digest, the reader and both Parquet blobs; a row whose
  bytes changed (damaged, edited without recomputing it) is not used.

Any row that fails one of these is ignored and that site's table is read from its signed
text, as before. Like the pooled result (:mod:`.cache`), a kept table is derived data as
trusted as the store itself: the digest detects damage and stale rows, not a writer who can
rewrite the store (who could as well replace a stored bundle's bytes, which pooling does not
verify again either). The tables are exactly the frames the reader returned; they are not
validated again when read back.
"""

from __future__ import annotations

import functools
import hashlib
import io
from pathlib import Path

import pandas as pd

from coordinator.store import ResultsStore
from coordinator.store.ops import study_digests, study_sources
from coordinator.store.site_tables import SiteTableRow, get_site_tables
from optima_common.results import SummarisedResult

FORMAT = 1


@functools.cache
def reader_hash() -> str:
    """sha256 of the table reader's source and this format."""
    import optima_common.results as reader

    return hashlib.sha256(f"site-table {FORMAT}\0".encode() + Path(reader.__file__).read_bytes()).hexdigest()


def _digest(bundle_sha256: str, reader: str, data: bytes, settings: bytes) -> str:
    h = hashlib.sha256()
    for part in (bundle_sha256.encode(), reader.encode(), data, settings):
        h.update(len(part).to_bytes(8, "big") + part)
    return h.hexdigest()


def _parquet(frame: pd.DataFrame) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buf, compression="zstd")
    return buf.getvalue()


def _frame(blob: bytes) -> pd.DataFrame:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(blob)).to_pandas()


def encode(table: SummarisedResult, bundle_sha256: str) -> SiteTableRow:
    """The row to keep for ``table``, read from the bundle whose signed bytes have ``bundle_sha256``."""
    data, settings = _parquet(table.data), _parquet(table.settings)
    reader = reader_hash()
    return SiteTableRow(bundle_sha256, reader, _digest(bundle_sha256, reader, data, settings), data, settings)


def decode(row: SiteTableRow, bundle_sha256: str) -> SummarisedResult | None:
    """The kept table if ``row`` was read from the bundle with ``bundle_sha256`` by this reader and is
    intact; else None (read the bundle's text)."""
    if row.bundle_sha256 != bundle_sha256 or row.reader != reader_hash() or \
            row.digest != _digest(row.bundle_sha256, row.reader, row.data, row.settings):
        return None
    try:
        data, settings = _frame(row.data), _frame(row.settings)
    except Exception:  # noqa: BLE001 - unreadable Parquet: read the text instead
        return None
    result = object.__new__(SummarisedResult)  # the frames the reader returned, validated then
    result.data, result.settings = data, settings
    return result


def kept_tables(store: ResultsStore, manifest_id: str) -> dict[str, SummarisedResult]:
    """Site -> its kept table, for the bundles :func:`~coordinator.store.ops.study_bundles` picks; sites
    without a usable kept table are left out (their text is read)."""
    sources, digests = study_sources(store, manifest_id), study_digests(store, manifest_id)
    rows = get_site_tables(store, sorted((m, site) for site, m in sources.items()))
    out = {}
    for site, m in sources.items():
        row = rows.get((m, site))
        table = decode(row, digests[site]) if row is not None else None
        if table is not None:
            out[site] = table
    return out
