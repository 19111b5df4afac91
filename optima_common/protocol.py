"""The Flower messages between coordinator and site: types, record keys, reply statuses.

Both sides build and read messages with these names only, so a rename cannot drift apart.

=================  ===================  =============================================
message type       request record       content
=================  ===================  =============================================
``query``          ``manifest``         ``json``: the signed study manifest text
``query.collect``  ``collect``          ``manifest_id``: ask again for an answer
``query.cox``      ``cox``              ``manifest_id``, ``beta`` (empty: column names)
``train``          ``config`` + arrays  one federated training round
``evaluate``       ``config`` + arrays  one federated evaluation
=================  ===================  =============================================

Every query reply is the record ``reply`` with ``site``, ``status`` (one of
:data:`REPLY_STATUSES`), ``reason`` and, when done, ``bundle`` (the signed bundle text).
"""

from __future__ import annotations

from typing import Final

# message types (Flower's "query" category with an optional action after the dot)
QUERY: Final = "query"
COLLECT_ACTION: Final = "collect"
COX_ACTION: Final = "cox"
QUERY_COLLECT: Final = f"{QUERY}.{COLLECT_ACTION}"
QUERY_COX: Final = f"{QUERY}.{COX_ACTION}"
TRAIN: Final = "train"
EVALUATE: Final = "evaluate"

# record keys
MANIFEST_RECORD: Final = "manifest"
COLLECT_RECORD: Final = "collect"
COX_RECORD: Final = "cox"
REPLY_RECORD: Final = "reply"
CONFIG_RECORD: Final = "config"

# fields of the records
JSON: Final = "json"
MANIFEST_ID: Final = "manifest_id"
BETA: Final = "beta"
SITE: Final = "site"
STATUS: Final = "status"
REASON: Final = "reason"
BUNDLE: Final = "bundle"
COLUMNS: Final = "columns"
LOGLIK: Final = "loglik"
SCORE: Final = "score"
INFO: Final = "info"
COX_FIRST: Final = "cox_first"  # in a query/collect request: answer the Cox design request with the released study
COX_STATUS: Final = "cox_status"  # in that reply: the Cox answer's own status and reason
COX_REASON: Final = "cox_reason"

# the analyses a manifest may name and a site may allow (site.toml allowed_analyses)
ANALYSES: Final = ("cohort_counts", "diagnostics", "sclc_study", "genomics_profile", "nlp_metastasis")

# a site refuses Cox requests with any |beta| above this (hazard ratio beyond exp(20)); the
# coordinator stops a diverging coefficient before it gets there
COX_MAX_ABS_BETA: Final = 20.0

# reply statuses a site may give to a query
DONE: Final = "done"
REFUSED: Final = "refused"
FAILED: Final = "failed"
AWAITING_REVIEW: Final = "awaiting_review"
REJECTED: Final = "rejected"
UNKNOWN: Final = "unknown"
REPLY_STATUSES: Final = (DONE, REFUSED, FAILED, AWAITING_REVIEW, REJECTED, UNKNOWN)

# node config key a SuperNode is started with
NODE_CONFIG_SITE: Final = "site-config"
