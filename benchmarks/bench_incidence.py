"""Incidence and prevalence alone: their released rows for every lung cohort and the CPU they cost.

    python benchmarks/bench_incidence.py --url cdm.duckdb --out ip.csv
    python benchmarks/bench_incidence.py --url postgresql+psycopg2://… --schema cdm --out ip_pg.csv \\
        --pg-root DIR [--explain-ms 500] [--repeat N]

Runs ``run_incidence`` and ``run_prevalence`` for each lung cohort, as a diagnostics run does
(the first call builds the denominator TEMP tables and runs the set-based statements for all
cohorts; the others read their memo; ``--repeat`` reuses the connection, so its denominator
too) and writes the released rows of all cohorts, in order (incidence, then prevalence), to
``--out``: a reference to compare byte for byte before and after a rewrite, or across backends
(the file holds aggregates only). ``--explain-ms``: auto_explain, as in
``bench_characteristics.py``. Harness and printed figures: ``lung_bench.py``.
"""

from __future__ import annotations

import pandas as pd
from lung_bench import run


def compute(ctx, defs) -> pd.DataFrame:
    from site_agent.diagnostics.incidence import run_incidence
    from site_agent.diagnostics.prevalence import run_prevalence

    frames = [run_incidence(ctx, (d,)).data for d in defs] + [run_prevalence(ctx, (d,)).data for d in defs]
    return pd.concat(frames, ignore_index=True)


if __name__ == "__main__":
    run(__doc__, compute)
