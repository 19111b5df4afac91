"""Large-scale characteristics alone: its rows for every lung cohort and the CPU it costs.

    python benchmarks/bench_lsc.py --url cdm.duckdb --out lsc.csv
    python benchmarks/bench_lsc.py --url postgresql+psycopg2://… --schema cdm --out lsc_pg.csv --pg-root DIR

Runs the set-based large-scale characteristics query of ``site_agent.diagnostics.large_scale``
for all lung cohorts (what one diagnostics run does once) and writes its rows, sorted, to
``--out`` (a reference to compare before and after a rewrite, or across backends: the file
holds aggregates only). Harness and printed figures: ``lung_bench.py``.
"""

from __future__ import annotations

import pandas as pd
from lung_bench import run


def compute(ctx, defs) -> pd.DataFrame:
    from site_agent.diagnostics.large_scale import lsc_frame

    df = lsc_frame(ctx, tuple(sorted(d.cohort_definition_id for d in defs)))
    df = df.astype({"cid": int, "concept_id": int, "n": int, "denominator": int})
    return df.sort_values(["cid", "table_name", "window_name", "concept_id"]).reset_index(drop=True)


if __name__ == "__main__":
    run(__doc__, compute)
