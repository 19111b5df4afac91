"""Network mutation frequencies: per gene, the sites' released proportions pooled by
DerSimonian-Laird random effects on the logit scale (0.5 added to both cells of a site with 0 or
all mutated), with the 95% CI and between-site heterogeneity (tau^2, Q, I^2).

Only sites whose gene count and profiled persons are released take part (a withheld cell is never
guessed); ``meta_sites`` says how many. The summed counts and the pooled percentage come from the
generic pooling in :mod:`coordinator.pooling.results`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from coordinator.pooling.rates import _fmt
from coordinator.pooling.survival import dersimonian_laird_groups
from optima_common.results import RESULT_COLUMNS, SUPPRESSED

KEY = ["result_id", "group_name", "group_level", "strata_name", "strata_level", "variable_name", "variable_level",
       "additional_name", "additional_level"]


def pool_mutation_frequency(data: pd.DataFrame, types: pd.Series, cdm: str) -> pd.DataFrame:
    ids = [int(i) for i in types.index[types == "mutation_frequency"]]
    d = data[data["result_id"].isin(ids) & (data["cdm_name"] != cdm) & (data["estimate_name"] == "count")]
    if d.empty:
        return pd.DataFrame(columns=list(RESULT_COLUMNS))
    v = pd.to_numeric(d["estimate_value"].where(d["estimate_value"] != SUPPRESSED), errors="coerce")
    d = d.assign(v=v)
    n = d[d["variable_name"] == "number subjects"].set_index(["result_id", "cdm_name"])["v"]
    g = d[d["variable_name"] == "gene"].copy()
    g["n"] = n.reindex(pd.MultiIndex.from_frame(g[["result_id", "cdm_name"]])).to_numpy()
    g = g.dropna(subset=["v", "n"])
    g = g[g["n"] > 0]
    if g.empty:
        return pd.DataFrame(columns=list(RESULT_COLUMNS))
    x, m = g["v"].to_numpy(float), g["n"].to_numpy(float)
    cc = np.where((x == 0) | (x == m), 0.5, 0.0)
    a, b = x + cc, m - x + cc
    g["y"], g["var"] = np.log(a / b), 1.0 / a + 1.0 / b
    key = [k for k in KEY]
    meta = dersimonian_laird_groups(g.assign(**{k: g[k].fillna("") for k in key}), key, y="y", v="var")
    expit = lambda t: 100.0 / (1.0 + np.exp(-t))
    rows = []
    for name, col, etype, f in (("random_effects_percentage", "estimate", "percentage", expit),
                                ("random_effects_95CI_lower", "lower", "percentage", expit),
                                ("random_effects_95CI_upper", "upper", "percentage", expit),
                                ("i_squared", "i2", "percentage", None), ("tau_squared", "tau2", "numeric", None),
                                ("q_p_value", "q_p", "numeric", None), ("meta_sites", "k", "integer", None)):
        part = meta[key].copy()
        vals = meta[col].to_numpy(float)
        part["estimate_value"] = [_fmt(f(x) if f else x) for x in vals]
        part["estimate_name"], part["estimate_type"], part["cdm_name"] = name, etype, cdm
        rows.append(part)
    out = pd.concat(rows, ignore_index=True)
    out["variable_level"] = out["variable_level"].replace("", None)
    return out[list(RESULT_COLUMNS)]
