"""Cohort characteristics alone: its released rows for every lung cohort and the CPU they cost.

    python benchmarks/bench_characteristics.py --url cdm.duckdb --out chars.csv
    python benchmarks/bench_characteristics.py --url postgresql+psycopg2://… --schema cdm --out chars_pg.csv \\
        --pg-root DIR [--explain-ms 500] [--repeat N]

Runs ``summarise_characteristics`` for each lung cohort (the first call runs the one statement
for all cohorts; the others read its memo, as in a diagnostics run) and writes the released
rows of all cohorts, in order, to ``--out``: a reference to compare byte for byte before and
after a rewrite, or across backends (the file holds aggregates only). ``--explain-ms`` turns on
auto_explain (ANALYZE) for this session: the plans of slower statements go to the cluster's
log (TEMP-table statements included). Harness and printed figures: ``lung_bench.py``.
"""

from __future__ import annotations

import pandas as pd
from lung_bench import run


def compute(ctx, defs) -> pd.DataFrame:
    from site_agent.diagnostics.characteristics import summarise_characteristics

    return pd.concat([summarise_characteristics(ctx, (d,)).data for d in defs], ignore_index=True)


if __name__ == "__main__":
    run(__doc__, compute)
