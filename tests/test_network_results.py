"""Network pooling on real site output: two synthetic CDMs through the site's diagnostics and
survival code, released at min cell count 5, pooled, and checked against the unsuppressed
truth and independent formulas."""

from __future__ import annotations

import atexit
import datetime as dt
import functools
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from lifelines import KaplanMeierFitter
from scipy import stats

from coordinator.pooling.results import network_result
from coordinator.trust.manifest import sign_manifest
from optima_common.bundle import (
    Provenance,
    ResultBundle,
    SuppressionRecord,
    manifest_sha256,
    sign,
)
from optima_common.results import SUPPRESSED, SummarisedResult, bind
from tests.conftest import DEFINITIONS
from tests.factories import manifest_doc as make_manifest

SITES = [("site_a", 2500, 21), ("site_b", 1500, 22)]
GRID = list(range(0, 1461, 182))
MIN = 5
COORD = Ed25519PrivateKey.generate()
KEYS = {name: Ed25519PrivateKey.generate() for name, _, _ in SITES}


def _survival(name: str, n: int, seed: int) -> tuple[SummarisedResult, pd.DataFrame]:
    from site_agent.analyses.survival import summarise_survival

    rng = np.random.default_rng(seed)
    t_event = rng.exponential(900 if name == "site_a" else 600, n)
    t_cens = rng.uniform(200, 1600, n)
    pat = pd.DataFrame({"time": np.ceil(np.minimum(t_event, t_cens)).astype(int),
                        "event": (t_event <= t_cens).astype(int)})
    return summarise_survival(name, "sclc_stage_i_ii", "death", {"overall": pat}, GRID, horizons=[365, 730],
                              estimator="kaplan_meier"), pat


@functools.lru_cache(maxsize=1)
def network_sites():
    """(manifest, bundles, truths, patients): released and unsuppressed results of each site."""
    from site_agent.cdm import connect_cdm
    from site_agent.cdm.synth import generate_site
    from site_agent.cohorts import collect_definitions
    from site_agent.diagnostics.runner import run_diagnostics
    from site_agent.suppression import suppress

    defs = [d for d in collect_definitions([DEFINITIONS / "lung"]) if d.cohort_name in ("lung_cancer_broad", "death")]
    manifest = sign_manifest(make_manifest(target_sites=[s for s, _, _ in SITES] + ["site_c"]), COORD)
    root = Path(tempfile.mkdtemp(prefix="optima-netres-"))
    atexit.register(shutil.rmtree, root, True)  # shared by test modules of this run, removed at exit
    bundles, truths, patients = [], {}, {}
    for name, n, seed in SITES:
        res = generate_site(out=root / f"{name}.duckdb", persons=n, site=name, profile="oncology", seed=seed)
        with connect_cdm(str(res.out)) as cdm:
            diag = run_diagnostics(cdm, defs, out=None, min_cell_count=0, cdm_name=name, progress=lambda m: None)
        surv, pat = _survival(name, 200 if name == "site_b" else 400, seed)
        truth = bind(diag.result, surv)
        released = suppress(truth, MIN)
        with tempfile.TemporaryDirectory() as tmp:
            csv = released.to_csv(Path(tmp) / "r.csv").read_text(encoding="utf-8")
        bundle = ResultBundle(
            site=name, manifest_id=manifest.manifest_id, manifest_sha256=manifest_sha256(manifest),
            created_at=dt.datetime(2025, 3, 2, tzinfo=dt.UTC),
            provenance=Provenance(cdm_name=name, cdm_release_date="2025-01-15", vocabulary_version="v5.0 2024",
                                  package_version="0.1.0"),
            suppression=SuppressionRecord(min_cell_count=MIN, site_floor=MIN, method="optima suppress v1"),
            results_csv=csv)
        bundles.append(sign(bundle, KEYS[name]))
        truths[name], patients[name] = truth, pat
    return manifest, bundles, truths, patients


@pytest.fixture(scope="module")
def net():
    _manifest, bundles, truths, patients = network_sites()
    return network_result(bundles), truths, patients


def cells(data: pd.DataFrame, cdm: str) -> pd.Series:
    key = ["result_id", "group_level", "strata_name", "strata_level", "variable_name", "variable_level",
           "estimate_name", "additional_level"]
    d = data[data["cdm_name"] == cdm]
    return d.set_index(key)["estimate_value"].rename(lambda x: x, axis=0)


def test_layout_sites_and_pooled_rows_round_trip(net, tmp_path):
    nr, _, _ = net
    d = nr.result.data
    assert set(d["cdm_name"]) == {"site_a", "site_b", "network"}
    assert [s.site for s in nr.sites] == ["site_a", "site_b"]
    csv = nr.result.to_csv(tmp_path / "net.csv")
    back = SummarisedResult.from_csv(csv)
    assert back == nr.result  # omopgenerics layout, R-importable
    # one result id per analysis: the cohort count id holds both sites and the pooled rows
    cc = nr.result.settings.loc[nr.result.settings["result_type"] == "summarise_cohort_count", "result_id"]
    assert len(cc) == 1 and set(d.loc[d["result_id"] == cc.iloc[0], "cdm_name"]) == {"site_a", "site_b", "network"}


COUNT_KEY = ["result_id", "group_level", "strata_name", "strata_level", "variable_name", "variable_level",
             "additional_name", "additional_level"]


def test_pooled_counts_equal_sums_and_lower_bounds_hide_suppressed_cells(net):
    """Every pooled count is the sum of the *visible* site cells: with a suppressed site cell it is
    flagged as a lower bound, and pooled minus the visible cells is 0, so nothing of the hidden
    cell can be recomputed. Checked against the unsuppressed truth too."""
    nr, truths, _ = net
    d = nr.result.data.assign(variable_level=lambda x: x["variable_level"].fillna("<NA>"))
    types = dict(zip(nr.result.settings["result_id"], nr.result.settings["result_type"], strict=True))
    cc = d[d["result_id"].map(types).isin(["summarise_cohort_count", "summarise_characteristics", "code_use",
                                           "summarise_cohort_attrition"])
           & d["estimate_name"].isin(["count", "record_count", "person_count"])]
    wide = cc.set_index([*COUNT_KEY, "estimate_name", "cdm_name"])["estimate_value"].unstack("cdm_name")
    wide = wide[wide["network"].notna()]
    flags = d[(d["cdm_name"] == "network") & (d["estimate_name"] == "suppressed_sites")]
    flagged = dict(zip(map(tuple, flags[COUNT_KEY].to_numpy().tolist()), flags["estimate_value"].astype(int)))
    n_lb = n_exact = 0
    for k, row in wide.iterrows():
        site_vals = [row.get(s) for s in ("site_a", "site_b")]
        visible = [float(v) for v in site_vals if isinstance(v, str) and v != SUPPRESSED]
        hidden = sum(v == SUPPRESSED for v in site_vals)
        if hidden and not visible:
            assert row["network"] == SUPPRESSED
            continue
        assert float(row["network"]) - sum(visible) == 0  # nothing left to attribute to a hidden cell
        if hidden:
            n_lb += 1
            assert flagged.get(k[:-1]) >= hidden
        else:
            n_exact += 1
            assert k[:-1] not in flagged or types[k[0]] != "summarise_cohort_count"
    assert n_lb >= 5 and n_exact >= 20
    # against the unsuppressed truth: exact cohort counts equal the true total, lower bounds stay below it
    truth = pd.concat([t.data[t.data["result_id"].isin(t.settings.loc[
        t.settings["result_type"] == "summarise_cohort_count", "result_id"])] for t in truths.values()])
    truth = truth[truth["variable_name"].isin(["Number records", "Number subjects"])
                  & (truth["group_name"] == "cohort_name") & (truth["estimate_name"] == "count")
                  & (truth["strata_name"] == "overall")]
    true_total = truth.assign(v=truth["estimate_value"].astype(float)).groupby(
        ["group_level", "variable_name"])["v"].sum()
    cohort = wide.reset_index()
    cohort = cohort[cohort["result_id"].map(types) == "summarise_cohort_count"]
    assert len(cohort) == len(true_total) > 0
    for _, r in cohort.iterrows():
        t = true_total[(r["group_level"], r["variable_name"])]
        if r["network"] == SUPPRESSED:
            continue
        if SUPPRESSED in (r.get("site_a"), r.get("site_b")):
            assert float(r["network"]) < t
        else:
            assert float(r["network"]) == t


def test_no_released_small_count_in_pooled_rows(net):
    nr, _, _ = net
    d = nr.result.data
    net_counts = d[(d["cdm_name"] == "network") & d["estimate_name"].str.match(r"^(count|.+_count)$")
                   & (d["estimate_value"] != SUPPRESSED)]
    v = pd.to_numeric(net_counts["estimate_value"])
    assert not ((v > 0) & (v < MIN)).any()


def _overall_rates(nr, kind):
    d = nr.result.data
    ids = nr.result.settings.loc[nr.result.settings["result_type"] == kind, "result_id"]
    d = d[d["result_id"].isin(ids) & d["additional_level"].str.endswith("&&& overall") & (d["strata_name"] == "overall")]
    return d


def test_pooled_incidence_exact_poisson_and_random_effects(net):
    nr, _, _ = net
    d = _overall_rates(nr, "incidence")
    checked = 0
    for (rid, grp), g in d.groupby(["result_id", "group_level"]):
        v = g.set_index(["cdm_name", "estimate_name"])["estimate_value"]
        site = {s: (v.get((s, "outcome_count")), v.get((s, "person_years"))) for s in ("site_a", "site_b")}
        if any(x is None or SUPPRESSED in x for x in site.values()):
            continue
        k = [float(site[s][0]) for s in site]
        py = [float(site[s][1]) for s in site]
        K, PY = sum(k), sum(py)
        assert float(v[("network", "incidence_100000_pys")]) == pytest.approx(K / PY * 1e5, rel=1e-9)
        lo = stats.gamma.ppf(0.025, K) / PY * 1e5 if K else 0.0
        assert float(v[("network", "incidence_100000_pys_95CI_lower")]) == pytest.approx(lo, rel=1e-8, abs=1e-9)
        assert float(v[("network", "incidence_100000_pys_95CI_upper")]) == pytest.approx(
            stats.gamma.ppf(0.975, K + 1) / PY * 1e5, rel=1e-8)
        # DerSimonian-Laird on log rates, written out by hand (metafor IRLN, 1/2 for a zero count)
        kc = [x if x > 0 else 0.5 for x in k]
        y = [math.log(a / b) for a, b in zip(kc, py)]
        w = [a for a in kc]  # 1 / var(log rate) = events
        fe = sum(a * b for a, b in zip(w, y)) / sum(w)
        q = sum(a * (b - fe) ** 2 for a, b in zip(w, y))
        tau2 = max(0.0, (q - 1) / (sum(w) - sum(a * a for a in w) / sum(w)))
        ws = [1 / (1 / a + tau2) for a in w]
        re = sum(a * b for a, b in zip(ws, y)) / sum(ws)
        assert float(v[("network", "incidence_100000_pys_random_effects")]) == pytest.approx(math.exp(re) * 1e5,
                                                                                              rel=1e-8)
        assert float(v[("network", "i_squared")]) == pytest.approx(max(0, (q - 1) / q) * 100 if q else 0, abs=1e-7)
        assert float(v[("network", "q_statistic")]) == pytest.approx(q, rel=1e-8, abs=1e-12)
        checked += 1
    assert checked >= 2


def test_pooled_prevalence_wilson(net):
    nr, _, _ = net
    d = _overall_rates(nr, "prevalence")
    d = d[~d["additional_level"].str.contains("overall &&& overall")]
    checked = 0
    for _, g in d.groupby(["result_id", "group_level", "additional_level"]):
        v = g.set_index(["cdm_name", "estimate_name"])["estimate_value"]
        if ("network", "prevalence") not in v.index or ("network", "excluded_sites") in v.index:
            continue
        x = float(v[("network", "outcome_count")])
        n = float(v[("network", "denominator_count")])
        z = stats.norm.ppf(0.975)
        p = x / n
        c, h = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (
            1 + z * z / n)
        assert float(v[("network", "prevalence")]) == pytest.approx(p, rel=1e-9)
        assert float(v[("network", "prevalence_95CI_lower")]) == pytest.approx(max(0, c - h), abs=1e-9)
        assert float(v[("network", "prevalence_95CI_upper")]) == pytest.approx(min(1, c + h), abs=1e-9)
        checked += 1
    assert checked >= 1


def test_pooled_km_equals_lifelines_on_the_union_until_a_suppressed_interval(net):
    nr, _, patients = net
    d = nr.result.data
    ids = nr.result.settings.loc[nr.result.settings["result_type"] == "survival_estimates", "result_id"]
    km = d[d["result_id"].isin(ids) & (d["cdm_name"] == "network") & (d["estimate_name"] == "estimate")]
    km = km.assign(t=km["additional_level"].astype(int)).sort_values("t")
    union = pd.concat(patients.values(), ignore_index=True)
    grid = np.array(GRID)
    idx = np.searchsorted(grid, union["time"].to_numpy(), side="left")
    t_grid = np.where(idx < len(grid), grid[np.minimum(idx, len(grid) - 1)], grid[-1])
    e = np.where(idx < len(grid), union["event"].to_numpy(), 0)
    expected = KaplanMeierFitter().fit(t_grid, e).survival_function_at_times(km["t"].to_numpy()).to_numpy()
    shown = km["estimate_value"] != SUPPRESSED
    assert shown.sum() >= 4
    np.testing.assert_allclose(km.loc[shown, "estimate_value"].astype(float), expected[shown.to_numpy()], atol=6e-5)
    # once a step is undetermined (a site's interval suppressed) every later step is too
    first_hidden = np.flatnonzero(~shown.to_numpy())
    if len(first_hidden):
        assert not shown.to_numpy()[first_hidden[0]:].any()


def test_pooled_percentages_use_pooled_counts_and_denominators(net):
    nr, _, _ = net
    d = nr.result.data
    n = d[d["cdm_name"] == "network"].assign(variable_level=lambda x: x["variable_level"].fillna("<NA>"))
    grp = ["result_id", "group_level", "strata_name", "strata_level", "additional_name", "additional_level"]
    subj = n[(n["variable_name"].str.lower() == "number subjects") & (n["estimate_name"] == "count")]
    subj = subj.set_index(grp)["estimate_value"]
    pct = n[n["estimate_name"] == "percentage"]
    counts = n[n["estimate_name"] == "count"].set_index([*grp, "variable_name", "variable_level"])["estimate_value"]
    assert len(pct) >= 10
    for _, r in pct.iterrows():
        den = float(subj[tuple(r[k] for k in grp)])
        num = float(counts[tuple(r[k] for k in [*grp, "variable_name", "variable_level"])])
        assert float(r["estimate_value"]) == pytest.approx(100 * num / den, rel=1e-9)


def test_survival_at_horizon_random_effects_by_hand(net):
    nr, _, _ = net
    d = nr.result.data
    ids = nr.result.settings.loc[nr.result.settings["result_type"] == "survival_summary", "result_id"]
    s = d[d["result_id"].isin(ids) & (d["strata_level"] == "overall")]
    v = s.set_index(["cdm_name", "estimate_name"])["estimate_value"]
    z = stats.norm.ppf(0.975)
    y, var = [], []
    for site in ("site_a", "site_b"):
        est, lo, hi = (float(v[(site, f"survival_at_365{x}")]) for x in ("", "_95CI_lower", "_95CI_upper"))
        y.append(math.log(est))
        var.append(((math.log(hi) - math.log(lo)) / (2 * z)) ** 2)
    w = [1 / x for x in var]
    fe = sum(a * b for a, b in zip(w, y)) / sum(w)
    q = sum(a * (b - fe) ** 2 for a, b in zip(w, y))
    tau2 = max(0.0, (q - 1) / (sum(w) - sum(a * a for a in w) / sum(w)))
    ws = [1 / (x + tau2) for x in var]
    re = sum(a * b for a, b in zip(ws, y)) / sum(ws)
    assert float(v[("network", "survival_at_365_random_effects")]) == pytest.approx(math.exp(re), rel=1e-8)
    assert float(v[("network", "survival_at_365_i_squared")]) == pytest.approx(max(0, (q - 1) / q) * 100, abs=1e-6)
    # the exact pooled KM value at the horizon lies between the two sites' values
    pooled = float(v[("network", "survival_at_365")])
    assert min(math.exp(x) for x in y) <= pooled <= max(math.exp(x) for x in y)
