"""Codelist diagnostics alone (``code_use``, ``cohort_code_use``, ``orphan_code_use``, ``unmapped_codes``):
their released rows for every lung cohort and the CPU they cost.

    python benchmarks/bench_codelists.py --url cdm.duckdb --out codelists.csv
    python benchmarks/bench_codelists.py --url postgresql+psycopg2://… --schema cdm --out codelists_pg.csv \\
        --pg-root DIR [--explain-ms 500] [--repeat N]

Runs the four diagnostics for each lung cohort, as a diagnostics run does (one context: the
orphans' concept counts are shared by the cohorts, as in a run), and writes the rows of all
cohorts, in order, to ``--out`` (aggregates only): a reference to compare byte for byte before
and after a rewrite, or across backends. Harness and printed figures: ``lung_bench.py``.
"""

from __future__ import annotations

import pandas as pd
from lung_bench import run


def compute(ctx, defs) -> pd.DataFrame:
    from site_agent.diagnostics.codelists import run_code_use, run_cohort_code_use
    from site_agent.diagnostics.orphans import run_orphan_codes, run_unmapped_codes

    parts = [f(ctx, (d,)).data for f in (run_code_use, run_cohort_code_use, run_orphan_codes, run_unmapped_codes)
             for d in defs]
    return pd.concat(parts, ignore_index=True)


if __name__ == "__main__":
    run(__doc__, compute)
