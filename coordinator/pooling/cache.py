"""Pool once: the network result of a manifest is kept in the results store and reused.

The report (``write_report``/``render_report``), the viewer and the study's version history
all ask :func:`pooled_result`. It pools the stored bundles (:func:`network_result`) only when
the store holds no result pooled from exactly these bundles by exactly this pooling code: the
key is the sha256 of the signed bundles' digests (one per site, as :func:`study_bundles`
picks them) and of the source of the pooling code (``coordinator/pooling`` and the
``summarised_result`` format). A new or re-sent bundle or a change to the pooling code makes
a new key, so a stale result is never served; the old one is replaced.

Kept as Parquet (zstd): a 20-site network result (2.7M rows) is ~20 MB, read back in about a
second, against a minute or more to pool again. What is kept is the pooled result exactly as
:func:`network_result` returned it (already validated), so it is read back without validating
it again.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from coordinator.pooling.parquet import from_parquet, to_parquet
from coordinator.pooling.results import NetworkResult, SiteInfo, network_result
from coordinator.pooling.site_tables import pooling_input
from coordinator.store import ResultsStore, StoreError
from coordinator.store.ops import study_digests
from coordinator.store.pooled import PooledRow, get_pooled, put_pooled
from optima_common.bundle import Provenance, SuppressionRecord
from optima_common.results import SummarisedResult

FORMAT = 1


@functools.cache
def code_hash() -> str:
    """sha256 of the pooling code's source (every module under coordinator/pooling, and the result format)."""
    import optima_common.results as results_module

    files = sorted(Path(__file__).parent.glob("*.py")) + [Path(results_module.__file__)]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def pool_key(digests: dict[str, str]) -> str:
    doc = {"format": FORMAT, "code": code_hash(), "bundles": sorted(digests.items())}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def encode(net: NetworkResult) -> PooledRow:
    meta = {"pooled_name": net.pooled_name, "notes": net.notes,
            "sites": [{"site": s.site, "cdm_name": s.cdm_name, "provenance": s.provenance.model_dump(mode="json"),
                       "suppression": s.suppression.model_dump(mode="json")} for s in net.sites]}
    return PooledRow(json.dumps(meta), to_parquet(net.result.data), to_parquet(net.result.settings))


def decode(row: PooledRow) -> NetworkResult:
    meta = json.loads(row.meta)
    result = object.__new__(SummarisedResult)  # kept exactly as network_result validated it: not validated again
    result.data, result.settings = from_parquet(row.data), from_parquet(row.settings)
    sites = [SiteInfo(s["site"], s["cdm_name"], Provenance.model_validate(s["provenance"]),
                      SuppressionRecord.model_validate(s["suppression"])) for s in meta["sites"]]
    return NetworkResult(result, sites, meta["pooled_name"], list(meta["notes"]))


def pooled_result(store: ResultsStore, manifest_id: str) -> NetworkResult:
    """The network result of a study send: kept in the store, pooled (once) when it is not.

    Raises StoreError when the manifest has no stored bundle; ValueError from pooling as
    :func:`network_result` does.
    """
    digests = study_digests(store, manifest_id)
    if not digests:
        raise StoreError(f"manifest {manifest_id} has no stored site bundles yet; nothing to report")
    key = pool_key(digests)
    row = get_pooled(store, manifest_id, key)
    if row is not None:
        return decode(row)
    bundles, tables = pooling_input(store, manifest_id)  # the tables as read at ingest, where kept
    net = network_result(bundles, tables=tables)
    put_pooled(store, manifest_id, key, encode(net))
    return net
