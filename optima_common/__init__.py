"""The contract both sides share (as ``flwr.common`` is for Flower).

``results`` (the summarised_result table and its text form), ``bundle`` (signed study
manifests and result bundles), ``keys``, ``fileio`` (atomic writes), ``errors`` (one table of
errors and exit codes) and ``protocol`` (Flower message types, record keys, statuses).
It imports neither ``site_agent`` nor ``coordinator``.
"""
