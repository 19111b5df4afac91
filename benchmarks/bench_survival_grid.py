"""Discretisation bias of the released survival on the study grid, on public clinical data.

Sites release risk tables on a shared grid (site_agent.analyses.survival) so that the
coordinator can pool exactly; the price is that exact times are lost. This measures the bias
of the released survival at the seed study's horizons (1, 2, 5 years) and of the median
against the exact-time Kaplan-Meier from R's survival package (survfit), on the datasets R
ships (lung, veteran, colon deaths, pbc), for:

* the old default: half-yearly/yearly grid, plain KM of the ceiling-discretised times;
* the same grid with the actuarial (life-table) correction;
* the current default grid (quarterly to 5 years, then yearly) with plain KM and actuarial.

Needs Rscript with the survival package (apt-get install r-base-core r-cran-survival).
Run: python benchmarks/bench_survival_grid.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.reference_r import dataset, survfit_reference
from site_agent.analyses.survival import km_from_table, risk_table, summary_from_km
from site_agent.study_spec import SurvivalSpec

OLD_GRID = (0, 182, 365, 730, 1096, 1461, 1826, 2557, 3652)
HORIZONS = [365, 730, 1826]


def released(df, grid, estimator):
    km = km_from_table(risk_table(df["time"].to_numpy(), df["event"].to_numpy(), grid), estimator=estimator)
    return summary_from_km(km, HORIZONS, estimator)


def main() -> int:
    new_grid = SurvivalSpec().grid
    variants = [("old grid, KM", OLD_GRID, "kaplan_meier"), ("old grid, actuarial", OLD_GRID, "actuarial"),
                ("new grid, KM", new_grid, "kaplan_meier"), ("new grid, actuarial", new_grid, "actuarial")]
    print(f"new default grid ({len(new_grid)} points): {list(new_grid)}")
    worst = {v[0]: 0.0 for v in variants}
    for name in ("lung", "veteran", "colon", "pbc"):
        df = dataset(name)
        ref = survfit_reference(df, HORIZONS)
        print(f"\n{name}: n={len(df)}, events={int(df['event'].sum())}, max follow-up {ref['max_time']} days; "
              f"exact KM median {ref['median'][0]}")
        head = "  ".join(f"S({h}) exact" for h in HORIZONS)
        print(f"  {'variant':<22} {head}   -> released - exact;  median")
        for label, grid, est in variants:
            got = released(df, grid, est)
            cells = []
            for h, s_ref in zip(ref["h_time"], ref["h_surv"]):
                if h > ref["max_time"]:
                    cells.append(f"{'n/a':>14}")
                    continue
                diff = got[f"survival_at_{int(h)}"] - s_ref
                worst[label] = max(worst[label], abs(diff))
                cells.append(f"{s_ref:.4f} {diff:+.4f}")
            med = got["median_survival"]
            print(f"  {label:<22} {'  '.join(cells)}   median {med:.1f}" if np.isfinite(med)
                  else f"  {label:<22} {'  '.join(cells)}   median not reached")
    print("\nlargest |released - exact| at 1/2/5 years over the datasets:")
    for label, w in worst.items():
        print(f"  {label:<22} {w:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
