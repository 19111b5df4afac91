"""A fingerprint of a CDM's content, cheap to compute, that changes when the ETL refreshes it.

It hashes the content of ``cdm_source``, the vocabulary version, and the counts and date
range of ``person`` and ``observation_period``. A refresh that changes clinical rows but
none of those would be missed; sites bump ``cdm_source.source_release_date`` on every
refresh, as the CDM conventions ask.
"""

from __future__ import annotations

import hashlib
import json

from site_agent.cdm.connection import CdmConnection


def cdm_fingerprint(cdm: CdmConnection) -> str:
    s, v = cdm.cdm_schema, cdm.vocab_schema
    src = cdm.query_df(f"SELECT * FROM {s}.cdm_source")
    parts = {
        "cdm_source": sorted(json.dumps({k: str(x) for k, x in row.items()}, sort_keys=True)
                             for row in src.to_dict("records")),
        "vocabulary": str(cdm.scalar(f"SELECT max(vocabulary_version) FROM {v}.vocabulary WHERE vocabulary_id = 'None'")),
        "person": str(cdm.scalar(f"SELECT count(*) FROM {s}.person")),
        "observation_period": [str(x) for x in cdm.query_df(
            f"SELECT count(*) AS n, min(observation_period_start_date) AS a, max(observation_period_end_date) AS b "
            f"FROM {s}.observation_period").iloc[0].tolist()],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
