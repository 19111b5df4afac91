"""Cohort diagnostics (PhenotypeR parity) as a suppressed ``summarised_result``.

One module per family (database, cohort_summary, codelists, characteristics, large_scale,
population); each registers its diagnostics in ``DIAGNOSTICS``. The runner
(:mod:`site_agent.diagnostics.runner`) makes them incremental and suppresses once.
"""
