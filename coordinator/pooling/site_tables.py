"""Each site's table kept as the ingest read it, so pooling does not read the sites' CSV texts again.

The coordinator's disclosure re-check reads every bundle's table at ingest
(``SummarisedResult.from_csv_text``: parse, validate, sort); pooling used to read all of them
again (a 20-site network: ~13 of its ~31 CPU s). The verifying worker now keeps the table it
re-checked as Parquet (zstd), stored beside the bundle (table ``site_tables``, migration 0006),
with the bundle's header (everything but the table text: site, provenance, suppression), and
:func:`pooling_input` hands both to pooling, which then reads no bundle in full. A kept table
is used only

* for the very bundle it was read from: it carries the sha256 of that bundle's signed bytes,
  which must be the digest of the bundle the store holds for that site now (a re-sent or
  replaced bundle is read from its text);
* as read by the same reader: ``reader`` hashes the reader's source (``optima_common/results.py``)
  and this format, so other reading code reads the text again;
* intact: ``digest`` covers the bundle digest, the reader, the header and both Parquet blobs; a row whose
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
import json
from pathlib import Path
from typing import NamedTuple

from coordinator.pooling.parquet import from_parquet, to_parquet
from coordinator.store import ResultsStore
from coordinator.store.ops import study_bundles, study_digests, study_sources
from coordinator.store.site_tables import SiteTableRow, get_site_tables
from optima_common.bundle import ResultBundle
from optima_common.results import SummarisedResult

FORMAT = 1


@functools.cache
def reader_hash() -> str:
    """sha256 of the table reader's source and this format."""
    import optima_common.results as reader

    return hashlib.sha256(f"site-table {FORMAT}\0".encode() + Path(reader.__file__).read_bytes()).hexdigest()


def _digest(bundle_sha256: str, reader: str, header: str, data: bytes, settings: bytes) -> str:
    h = hashlib.sha256()
    for part in (bundle_sha256.encode(), reader.encode(), header.encode(), data, settings):
        h.update(len(part).to_bytes(8, "big") + part)
    return h.hexdigest()


def encode(bundle: ResultBundle, table: SummarisedResult, bundle_sha256: str) -> SiteTableRow:
    """The row to keep for ``table``, read from ``bundle`` whose signed bytes have ``bundle_sha256``."""
    header = json.dumps(bundle.model_dump(mode="json", exclude={"results_csv"}), sort_keys=True)
    data, settings = to_parquet(table.data), to_parquet(table.settings)
    reader = reader_hash()
    return SiteTableRow(bundle_sha256, reader, _digest(bundle_sha256, reader, header, data, settings), header, data,
                        settings)


class Kept(NamedTuple):
    """A stored bundle without its table text (``results_csv`` empty), and the table as read at ingest."""

    bundle: ResultBundle
    table: SummarisedResult


def decode(row: SiteTableRow, bundle_sha256: str) -> Kept | None:
    """The kept table if ``row`` was read from the bundle with ``bundle_sha256`` by this reader and is
    intact; else None (read the bundle's text)."""
    if row.bundle_sha256 != bundle_sha256 or row.reader != reader_hash() or \
            row.digest != _digest(row.bundle_sha256, row.reader, row.header, row.data, row.settings):
        return None
    try:
        data, settings = from_parquet(row.data), from_parquet(row.settings)
        header = ResultBundle.model_validate({**json.loads(row.header), "results_csv": ""})
    except Exception:  # noqa: BLE001 - unreadable: read the text instead
        return None
    table = object.__new__(SummarisedResult)  # the frames the reader returned, validated then
    table.data, table.settings = data, settings
    return Kept(header, table)


def kept_tables(store: ResultsStore, manifest_id: str) -> dict[str, Kept]:
    """Site -> its kept bundle header and table, for the bundles :func:`~coordinator.store.ops.study_bundles`
    picks; sites without a usable kept table are left out (their bundle is read in full)."""
    sources, digests = study_sources(store, manifest_id), study_digests(store, manifest_id)
    rows = get_site_tables(store, sorted((m, site) for site, m in sources.items()))
    out = {}
    for site, m in sources.items():
        row = rows.get((m, site))
        kept = decode(row, digests[site]) if row is not None else None
        if kept is not None and kept.bundle.site == site and kept.bundle.manifest_id == m:
            out[site] = kept
    return out


def pooling_input(store: ResultsStore, manifest_id: str) -> tuple[list[ResultBundle], dict[str, SummarisedResult]]:
    """The bundles :func:`~coordinator.store.ops.study_bundles` picks and the kept tables among them; the
    bundles are read in full only when a site has no usable kept table (a 35 MB bundle: ~0.25 s)."""
    kept = kept_tables(store, manifest_id)
    if set(kept) == set(study_sources(store, manifest_id)):
        bundles = [kept[site].bundle for site in sorted(kept)]
    else:
        bundles = study_bundles(store, manifest_id)
    return bundles, {site: k.table for site, k in kept.items()}
