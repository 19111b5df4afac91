"""Report section for ``genomics_profile``: mutation frequencies by site and pooled (random effects,
95% CI, I^2), PAM50 / IHC-surrogate subtype counts and the PIK3CA hotspots. Empty without genomics."""

from __future__ import annotations

from coordinator.report.sections import View, esc, table


def genomics_section(v: View) -> str:
    mf = v.rows("mutation_frequency")
    if mf.empty:
        return ""
    pooled = mf[mf["cdm_name"] == v.pooled].set_index(["variable_level", "estimate_name"])["estimate_value"]
    genes = list(dict.fromkeys(mf.loc[(mf["variable_name"] == "gene"), "variable_level"]))
    rows = []
    for g in genes:
        def get(name, g=g):
            return pooled.get((g, name), "")
        ci = f"{_p(get('random_effects_95CI_lower'))}&ndash;{_p(get('random_effects_95CI_upper'))}"
        rows.append([esc(g), _p(get("random_effects_percentage")), ci, _p(get("i_squared")), esc(get("meta_sites"))])
    counts = mf[(mf["estimate_name"] == "count")]
    sub = v.rows("molecular_subtype")
    sub = sub[sub["estimate_name"] == "count"]
    hot = v.rows("hotspot_counts")
    hot = hot[(hot["estimate_name"] == "count") & (hot["variable_name"] == "hotspot")]
    return ("<h2>Genomics</h2><p class=\"note\">Persons with a non-silent mutation per gene. Pooled percentage: "
            "DerSimonian-Laird random effects on the logit scale over the sites whose count is released; I&sup2; "
            "is the between-site heterogeneity.</p>"
            + table(["gene", "pooled % (random effects)", "95% CI", "I\u00b2 %", "sites"], rows, name="genomics_pooled")
            + "<h3>Mutated persons by site</h3>"
            + v.wide(counts, ["variable_level"], name="genomics_counts", labels=["gene"])
            + "<h3>Molecular subtypes</h3>"
            + v.wide(sub, ["group_level", "variable_level"], name="genomics_subtypes", labels=["method", "subtype"])
            + "<h3>Hotspots by ER and HER2 status</h3>"
            + v.wide(hot, ["variable_level", "strata_name", "strata_level"], name="genomics_hotspots",
                     labels=["hotspot", "by", "status"]))


def _p(x: str) -> str:
    try:
        return f"{float(x):.1f}"
    except (TypeError, ValueError):
        return esc(x)
