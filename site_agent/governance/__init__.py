"""Site governance: review before release, dry runs, audit tools, key management, release history.

Everything here lives in the site's ``state_dir`` (see :mod:`site_agent.config`)::

    state_dir/
      audit.jsonl                  hash-chained audit log (site_agent.audit)
      seen_manifests.sqlite3       nonce store (site_agent.policy)
      outbox/                      bundles waiting for review (outbox.py)
      keyring/                     pinned/revoked coordinator keys, archived site keys (keyring.py)
      release_history.sqlite3      every released count cell (release_history.py)
"""
