"""Codelist diagnostics alone (``code_use`` and ``cohort_code_use``): their released rows for every
lung cohort and the CPU they cost.

    python benchmarks/bench_codelists.py --url cdm.duckdb --out codelists.csv
    python benchmarks/bench_codelists.py --url postgresql+psycopg2://… --schema cdm --out codelists_pg.csv \\
        --pg-root DIR [--explain-ms 500] [--repeat N]

Runs both diagnostics for each lung cohort, as a diagnostics run does, and writes the rows of all
cohorts, in order, to ``--out`` (aggregates only): a reference to compare byte for byte before
and after a rewrite, or across backends. Harness and printed figures: ``lung_bench.py``.
"""

from __future__ import annotations

import pandas as pd
from lung_bench import run


def compute(ctx, defs) -> pd.DataFrame:
    from site_agent.diagnostics.codelists import run_code_use, run_cohort_code_use

    parts = [f(ctx, (d,)).data for d in defs for f in (run_code_use, run_cohort_code_use)]
    return pd.concat(parts, ignore_index=True)


if __name__ == "__main__":
    run(__doc__, compute)
