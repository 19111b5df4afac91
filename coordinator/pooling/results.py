"""One network ``summarised_result`` from a manifest's verified site bundles.

Each site's rows keep their own ``cdm_name``; pooled rows get a ``cdm_name`` of their own
(``"network"``). Result ids are aligned across sites by their settings (all settings but
``result_id``, ``min_cell_count`` and the derived group/strata/additional), so one result id
holds every site's rows and the pooled rows of the same analysis; its ``min_cell_count`` is
the largest of the sites'.

Pooled from the released (already suppressed) values only, so a pooled value is a function
of what the sites released and can never reveal a suppressed site cell:

* counts (``count``, ``*_count``, ``number_*``; incidence person-time) are summed. Where a
  site's cell is suppressed the pooled value is the sum of the *visible* cells and the
  pooled variable gets two extra estimates: ``lower_bound`` (logical ``TRUE``) and
  ``suppressed_sites`` (integer). Where every site's cell is suppressed the pooled cell is
  ``-`` too (omopgenerics' mark for suppressed, never 0) with the estimates
  ``all_sites_suppressed`` (logical ``TRUE``) and ``suppressed_sites``. Percentages are recomputed from pooled counts and their denominators.
* incidence, prevalence, KM, CIF and survival at horizons: see :mod:`coordinator.pooling.rates`.
* NLP agreement (precision/recall/F1 from pooled TP/FP/FN): see :mod:`coordinator.pooling.nlp`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from coordinator.pooling.genomics import pool_mutation_frequency
from coordinator.pooling.nlp import pool_agreement
from coordinator.pooling.rates import pool_rates, pool_survival
from optima_common.bundle import Provenance, ResultBundle, SuppressionRecord
from optima_common.results import RESULT_COLUMNS, SUPPRESSED, SummarisedResult

POOLED_NAME = "network"
COUNT_NAME = re.compile(r"^(count|.+_count|number_.+)$")
SUMMED_EXTRA = {"person_days", "person_years"}
ROW_KEY = ["result_id", "group_name", "group_level", "strata_name", "strata_level",
           "variable_name", "variable_level", "additional_name", "additional_level"]
CELL_KEY = [*ROW_KEY, "estimate_name"]
_DERIVED = ("result_id", "min_cell_count", "group", "strata", "additional")
#: settings a site derives from its own data when the study does not fix them (its observation span)
_SPANS = {"denominator_start_date": min, "denominator_end_date": max, "study_period_start": min,
          "study_period_end": max, "date_range_start": min, "date_range_end": max}


@dataclass(frozen=True)
class SiteInfo:
    site: str
    cdm_name: str
    provenance: Provenance
    suppression: SuppressionRecord


@dataclass
class NetworkResult:
    result: SummarisedResult
    sites: list[SiteInfo]
    pooled_name: str = POOLED_NAME
    notes: list[str] = field(default_factory=list)


def fmt(x: float) -> str:
    """A number as text: integers bare, others with up to 10 significant digits."""
    if x is None or not np.isfinite(x):
        return SUPPRESSED if x is None else "NA"
    if float(x).is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.10g}"


def parse_bundle(bundle: ResultBundle) -> SummarisedResult:
    """The bundle's ``results_csv`` as a validated result (omopgenerics CSV reader)."""
    return SummarisedResult.from_csv_text(bundle.results_csv, source=f"bundle of site {bundle.site}")


def _signature(row: pd.Series) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in row.items() if k not in _DERIVED and k not in _SPANS and pd.notna(v)))


def align(results: Sequence[SummarisedResult]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All sites' rows with result ids shared by analyses of equal settings; merged settings."""
    ids: dict[tuple, int] = {}
    sets: dict[int, dict] = {}
    datas = []
    for res in results:
        seen: dict[tuple, int] = {}
        mapping = {}
        for _, row in res.settings.iterrows():
            sig = _signature(row)
            seen[sig] = seen.get(sig, 0) + 1
            key = (sig, seen[sig])
            gid = ids.setdefault(key, len(ids) + 1)
            mapping[int(row["result_id"])] = gid
            mcc = int(row["min_cell_count"] or 0)
            if gid in sets:
                sets[gid]["min_cell_count"] = str(max(int(sets[gid]["min_cell_count"]), mcc))
                for col, pick in _SPANS.items():
                    old, new = sets[gid].get(col), row.get(col)
                    if isinstance(old, str) and isinstance(new, str):
                        sets[gid][col] = pick(old, new)
            else:
                sets[gid] = {**{k: v for k, v in row.items() if k not in ("group", "strata", "additional")},
                             "result_id": gid, "min_cell_count": str(mcc)}
        datas.append(res.data.assign(result_id=res.data["result_id"].map(mapping)))
    data = pd.concat(datas, ignore_index=True) if datas else SummarisedResult.empty().data
    settings = pd.DataFrame(list(sets.values())) if sets else SummarisedResult.empty().settings
    return data, settings


def pooling_view(data: pd.DataFrame) -> pd.DataFrame:
    """The rows as pooled: calendar intervals (``years``/``overall``) of sites whose observation
    spans differ are put together by calendar year (or as one overall interval), labelled with
    the earliest start and latest end. Site rows themselves keep their own labels.

    Levels are split once per distinct value (a few thousand), not once per row (millions)."""
    names = [f"{k}_start_date &&& {k}_end_date &&& analysis_interval" for k in ("incidence", "prevalence")]
    rows = np.flatnonzero(data["additional_name"].isin(names).to_numpy())
    if not len(rows):
        return data
    codes, levels = pd.factorize(data["additional_level"].to_numpy()[rows])
    parts = [str(u).split(" &&& ") for u in levels]
    ok = np.array([len(p) == 3 and p[-1] in ("years", "overall") for p in parts], dtype=bool)
    dated = ok[codes]
    if not dated.any():
        return data
    rows, codes = rows[dated], codes[dated]
    # The groups are made of distinct (result, name, level) triples: a min or max over those is the
    # one over every row, and there are a few thousand of them instead of a million rows.
    rid_codes = pd.factorize(data["result_id"].to_numpy()[rows])[0].astype(np.int64)
    name_codes = pd.factorize(data["additional_name"].to_numpy()[rows])[0]
    n_lv, n_nm = len(levels), int(name_codes.max()) + 1
    triples, inverse = np.unique((rid_codes * n_nm + name_codes) * n_lv + codes, return_inverse=True)
    lv = triples % n_lv
    start, end, interval = (pd.Series(np.array([p[k] if len(p) == 3 else "" for p in parts], dtype=object)[lv])
                            for k in (0, 1, 2))
    bucket = pd.Series(np.where(interval == "years", start.str[:4], "all"))
    keys = [pd.Series(triples // n_lv), interval, bucket]  # (result, name), interval, calendar year
    first = start.groupby(keys).transform("min")
    last = end.groupby(keys).transform("max")
    level = data["additional_level"].to_numpy().copy()
    level[rows] = (first + " &&& " + last + " &&& " + interval).to_numpy()[inverse]
    out = data.copy(deep=False)  # the other columns shared, read-only
    out["additional_level"] = level
    return out


def _cell_sums(data: pd.DataFrame, mask: pd.Series) -> pd.DataFrame:
    """Per cell key: sum of visible values, number of visible and of suppressed site cells."""
    d = data.loc[mask, [*CELL_KEY, "estimate_type", "estimate_value"]].copy()
    d["sup"] = d["estimate_value"] == SUPPRESSED
    d["val"] = pd.to_numeric(d["estimate_value"].where(~d["sup"]), errors="coerce")
    d["vis"] = d["val"].notna()
    d["int"] = d["estimate_type"] == "integer"
    g = d.groupby(CELL_KEY, dropna=False, sort=False)
    out = pd.DataFrame({"value": g["val"].sum(min_count=1), "n_visible": g["vis"].sum(),
                        "n_suppressed": g["sup"].sum(), "all_integer": g["int"].all()}).reset_index()
    return out[(out["n_visible"] > 0) | (out["n_suppressed"] > 0)]


def _rows(cells: pd.DataFrame, cdm_name: str, value: pd.Series, etype: pd.Series | str) -> pd.DataFrame:
    out = cells[CELL_KEY].copy()
    out["cdm_name"] = cdm_name
    out["estimate_value"] = value.to_numpy()
    out["estimate_type"] = etype if isinstance(etype, str) else etype.to_numpy()
    return out[list(RESULT_COLUMNS)]


def pooled_counts(data: pd.DataFrame, pooled_name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Summed count rows and the per-row-key flag table (``n_suppressed`` > 0 means lower bound)."""
    codes, names = pd.factorize(data["estimate_name"])  # a few hundred names over millions of rows
    summed = np.array([bool(COUNT_NAME.match(str(n))) or n in SUMMED_EXTRA for n in names], dtype=bool)
    mask = pd.Series(summed[codes] & (codes >= 0), index=data.index) & data["estimate_type"].isin(["integer", "numeric"])
    cells = _cell_sums(data, mask)
    shown = cells["n_visible"] > 0
    values = pd.Series([fmt(v) if s else SUPPRESSED for v, s in zip(cells["value"], shown, strict=True)],
                       index=cells.index)
    etype = np.where(cells["all_integer"], "integer", "numeric")
    rows = _rows(cells, pooled_name, values, pd.Series(etype, index=cells.index))
    flags = cells.assign(lb=(cells["n_suppressed"] > 0) & shown, every=(cells["n_suppressed"] > 0) & ~shown)
    flags = flags.groupby(ROW_KEY, dropna=False)
    flags = pd.DataFrame({"lower_bound": flags["lb"].any(), "all_sites_suppressed": flags["every"].any(),
                          "suppressed_sites": flags["n_suppressed"].max()})
    return rows, flags.reset_index()


def pooled_percentages(counts: pd.DataFrame, flags: pd.DataFrame, data: pd.DataFrame) -> pd.DataFrame:
    """100 * pooled count / pooled denominator where the sites released a percentage next to a count.

    Denominator: ``population_count`` of the same variable, else the ``number subjects`` count
    of the same group/strata/additional. Not given where the denominator is a lower bound.
    """
    want = data.loc[data["estimate_name"] == "percentage", ROW_KEY].drop_duplicates()
    if want.empty:
        return counts.iloc[0:0]
    c = counts.assign(v=pd.to_numeric(counts["estimate_value"], errors="coerce"))
    c = c.merge(flags, on=ROW_KEY, how="left")
    num = want.merge(c.loc[c["estimate_name"] == "count", [*ROW_KEY, "v"]], on=ROW_KEY)
    pop = c.loc[c["estimate_name"] == "population_count", [*ROW_KEY, "v", "lower_bound"]]
    num = num.merge(pop.rename(columns={"v": "pop", "lower_bound": "pop_lb"}), on=ROW_KEY, how="left")
    grp = [k for k in ROW_KEY if k not in ("variable_name", "variable_level")]
    subj = c[(c["estimate_name"] == "count") & c["variable_name"].str.lower().str.replace("_", " ").eq(
        "number subjects")][[*grp, "v", "lower_bound"]].drop_duplicates(grp)
    num = num.merge(subj.rename(columns={"v": "subj", "lower_bound": "subj_lb"}), on=grp, how="left")
    den = num["pop"].where(num["pop"].notna(), num["subj"])
    den_lb = pd.Series(np.where(num["pop"].notna(), num["pop_lb"], num["subj_lb"]), index=num.index)
    den_lb = den_lb.map(lambda x: True if pd.isna(x) else bool(x))
    ok = den.notna() & (den > 0) & num["v"].notna() & ~den_lb
    num = num.loc[ok].assign(estimate_name="percentage")
    pct = (100 * num["v"] / den[ok]).map(fmt)
    return _rows(num, counts["cdm_name"].iloc[0] if len(counts) else POOLED_NAME, pct, "percentage")


def flag_rows(flags: pd.DataFrame, pooled_name: str) -> pd.DataFrame:
    """``lower_bound`` TRUE where a pooled count includes suppressed site cells, ``all_sites_suppressed``
    TRUE where every site that has the cell suppressed it (the pooled cell is ``-``, never 0), and
    ``suppressed_sites`` (how many) for both."""
    parts = []
    for est, sel in (("lower_bound", flags["lower_bound"]), ("all_sites_suppressed", flags["all_sites_suppressed"])):
        f = flags[sel]
        parts.append(_rows(f.assign(estimate_name=est), pooled_name, pd.Series("TRUE", index=f.index), "logical"))
    f = flags[flags["lower_bound"] | flags["all_sites_suppressed"]]
    parts.append(_rows(f.assign(estimate_name="suppressed_sites"), pooled_name,
                       f["suppressed_sites"].astype(int).astype(str), "integer"))
    return pd.concat(parts, ignore_index=True)


def _site_names(bundles: Sequence[ResultBundle], results: list[SummarisedResult],
                pooled_name: str) -> list[SummarisedResult]:
    """Keep each site's cdm_name unless two sites share one (then ``name [site]``) or it is the pooled name."""
    names = [set(r.data["cdm_name"].dropna()) for r in results]
    taken: dict[str, int] = {}
    for ns in names:
        for n in ns:
            taken[n] = taken.get(n, 0) + 1
    out = []
    for b, r, ns in zip(bundles, results, names, strict=True):
        clash = {n for n in ns if taken[n] > 1 or n == pooled_name}
        if clash:
            r = r.with_data(r.data.assign(cdm_name=r.data["cdm_name"].map(
                lambda n, s=b.site, c=frozenset(clash): f"{n} [{s}]" if n in c else n)))
        out.append(r)
    return out


def network_result(bundles: Sequence[ResultBundle], *, pooled_name: str = POOLED_NAME,
                   tables: Mapping[str, SummarisedResult] | None = None) -> NetworkResult:
    """Bind the sites' results and append the pooled rows (see the module doc).

    ``tables``: site -> that site's bundle's table as already read (:mod:`.site_tables`); the
    other bundles' tables are read from their text."""
    if not bundles:
        raise ValueError("no site bundles to pool")
    bundles = sorted(bundles, key=lambda b: b.site)
    if len({b.site for b in bundles}) != len(bundles):
        raise ValueError("two bundles from the same site; give one bundle per site")
    notes: list[str] = []
    kept, parsed = [], []
    for b in bundles:
        try:
            parsed.append(tables[b.site] if tables and b.site in tables else parse_bundle(b))
            kept.append(b)
        except ValueError as exc:  # a verified bundle whose table is not a summarised_result
            notes.append(f"site {b.site}: results not readable as a summarised_result ({exc}); left out")
    bundles = kept
    if not bundles:
        raise ValueError("no site bundle holds a readable summarised_result; " + "; ".join(notes))
    results = _site_names(bundles, parsed, pooled_name)
    data, settings = align(results)
    view = pooling_view(data)
    counts, flags = pooled_counts(view, pooled_name)
    pct = pooled_percentages(counts, flags, view)
    types = settings.set_index("result_id")["result_type"]
    rates = pool_rates(view, types, pooled_name, notes)
    surv, extra_settings = pool_survival(view, settings, pooled_name, notes)
    genes = pool_mutation_frequency(view, types, pooled_name)
    nlp = pool_agreement(counts, flags, types, pooled_name, notes)
    if len(extra_settings):
        settings = pd.concat([settings, extra_settings], ignore_index=True)
    merged = _assemble(data, [counts, pct, flag_rows(flags, pooled_name), rates, surv, genes, nlp], settings)
    sites = [SiteInfo(b.site, ", ".join(sorted(set(r.data["cdm_name"].dropna()))) or b.provenance.cdm_name,
                      b.provenance, b.suppression) for b, r in zip(bundles, results, strict=True)]
    return NetworkResult(merged, sites, pooled_name, notes)


def _assemble(sites: pd.DataFrame, pooled: list[pd.DataFrame], settings: pd.DataFrame) -> SummarisedResult:
    """The network result: the sites' rows and the pooled rows, in the canonical row order.

    The same result as ``SummarisedResult(concat(sites, pooled), settings)``, without sorting and
    checking millions of site rows again: each site's rows were validated and sorted when its
    bundle was read, their result ids renumbered one to one and their ``cdm_name`` is the site's
    own (no two sites share one, none is the pooled name), so a site's rows cannot duplicate
    another's or a pooled row, and within one (result id, ``cdm_name``) they are in order
    already. The pooled rows are validated and sorted as a result of their own; then one stable
    sort by (result id, ``cdm_name``) gives the canonical order of the whole.
    """
    parts = [p for p in pooled if len(p)]
    pooled_res = SummarisedResult(pd.concat(parts, ignore_index=True) if parts else SummarisedResult.empty().data,
                                  settings)
    data = pd.concat([d for d in (sites, pooled_res.data) if len(d)], ignore_index=True)
    rid = data["result_id"].to_numpy()
    cdm = pd.factorize(data["cdm_name"], sort=True)[0]
    order = np.lexsort((cdm, rid))  # stable: ties keep the order of the rows
    if (np.diff(order) != 1).any():
        data = data.take(order).reset_index(drop=True)
    if (cdm < 0).any() or data["result_id"].isna().any():  # never: sites' cdm_name and result ids are validated
        return SummarisedResult(data, settings)
    out = object.__new__(SummarisedResult)  # the checks SummarisedResult runs, less those proven above
    out.data = data
    out.settings = SummarisedResult._normalise_settings(settings, data)
    from optima_common.errors import ResultFormatError

    for col in ("result_type", "package_name", "package_version"):
        if out.settings[col].isna().any():
            raise ResultFormatError(f"settings column {col!r} has missing values")
    if missing := set(np.unique(rid)) - set(out.settings["result_id"]):
        raise ResultFormatError(f"result_id(s) {sorted(missing)} have no settings row")
    return out
