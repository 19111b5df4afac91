"""``site-agent genomics profile``: inputs -> suppressed, audited results.csv + four figures."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from optima_common.errors import ConfigError, GenomicsDataError
from optima_common.results import SummarisedResult
from site_agent.genomics import analyses, immune, readers, reference, release, subtype


@dataclass
class ProfileRun:
    raw: SummarisedResult  # site-internal (never written)
    result: SummarisedResult  # released
    notes: list[str] = field(default_factory=list)
    accounting: dict = field(default_factory=dict)
    secondary: int = 0
    seconds: dict = field(default_factory=dict)


def run_profile(maf: list[Path], expression: Path | None, linkage: Path, *, clinical: Path | None = None,
                cdm_url: str | None = None, cdm=None, cdm_name: str = "site", min_cell_count: int = 5,
                actionability: Path | None = None, top_genes: int = 30, pair_genes: int = 10) -> ProfileRun:
    t = {}
    t0 = time.perf_counter()
    m = readers.read_maf([Path(p) for p in maf])
    if str(linkage) == "cdm":  # the OMOP specimen table
        from site_agent.genomics.cdm_clinical import read_cdm_linkage

        if cdm is not None:
            link = read_cdm_linkage(cdm)
        elif cdm_url is not None:
            from site_agent.cdm import connect_cdm

            with connect_cdm(cdm_url) as conn:
                link = read_cdm_linkage(conn)
        else:
            raise ConfigError("--linkage cdm reads the specimen table: give --cdm URL too")
    else:
        link = readers.read_linkage(Path(linkage))
    notes = readers.Notes(list(m.notes.lines))
    v = m.variants.assign(person_id=readers.link(m.variants["barcode"], link))
    unlinked = v["person_id"].isna()
    notes.add("MAF samples not in the linkage (their rows skipped)", v.loc[unlinked, "barcode"])
    skipped = dict(m.skipped)
    if unlinked.any():
        skipped["sample not linked"] = int(unlinked.sum())
    v = v[~unlinked].assign(person_id=lambda x: x["person_id"].astype("int64"))
    persons = pd.Index(sorted(set(link.to_numpy())), name="person_id")
    if clinical is not None:
        clin, cnotes = readers.read_clinical(Path(clinical))
        notes.lines.extend(cnotes.lines)
    elif cdm is not None or cdm_url is not None:
        from site_agent.genomics.cdm_clinical import read_cdm_clinical

        if cdm is not None:
            clin, cnotes = read_cdm_clinical(cdm, persons)
        else:
            from site_agent.cdm import connect_cdm

            with connect_cdm(cdm_url) as conn:
                clin, cnotes = read_cdm_clinical(conn, persons)
        notes.lines.extend(cnotes)
    else:
        raise ConfigError("give --clinical FILE or --cdm URL for age, race and ER/PR/HER2 status")
    notes.add("linked persons without a clinical row (status unknown)", persons.difference(clin.index))
    t["read"] = time.perf_counter() - t0
    pam = pd.Series(dtype=object)
    scores = pd.DataFrame(columns=["immune", "stromal", "estimate"])
    if expression is not None:
        t0 = time.perf_counter()
        ex = readers.read_expression(Path(expression))
        notes.lines.extend(ex.notes.lines)
        cols = pd.Series(ex.values.columns, index=ex.values.columns)
        pid = readers.link(cols, link)
        notes.add("expression samples not in the linkage (not used)", cols[pid.isna()])
        keep = pid.notna().to_numpy()
        vals = ex.values.loc[:, keep]
        pid = pid[keep].astype("int64")
        dup = pid.duplicated().to_numpy()
        notes.add("expression: second sample of a person (first kept)", vals.columns[dup])
        vals = vals.loc[:, ~dup]
        vals.columns = pid[~dup].to_numpy()
        if vals.shape[1]:
            calls, missing = subtype.pam50(vals)
            notes.add("expression: PAM50 genes missing", missing)
            if calls.empty:
                notes.lines.append(f"expression: fewer than {subtype.MIN_GENES} PAM50 genes; IHC surrogate for all")
            pam = calls
            scores, smissing = immune.scores(vals)
            for k, g in smissing.items():
                notes.add(f"expression: ESTIMATE {k} signature genes missing", g)
        t["expression"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    inp = analyses.Inputs(persons=persons, variants=v, clinical=clin, pam50=pam, scores=scores,
                          actionability=reference.actionability(actionability), top_genes=top_genes,
                          pair_genes=pair_genes)
    raw = analyses.build(inp, cdm_name)
    t["analyses"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    prot = release.release(raw, min_cell_count)
    t["release"] = time.perf_counter() - t0
    accounting = {"maf_rows": m.rows, "used": len(v), "skipped": skipped,
                  "non_silent_used": int(v["non_silent"].sum())}
    if accounting["used"] + sum(skipped.values()) != m.rows:  # every row is used or named as skipped
        raise GenomicsDataError("MAF accounting does not add up (a bug): report it")
    return ProfileRun(raw, prot.result, notes.lines, accounting, len(prot.secondary), t)


def write_outputs(run: ProfileRun, out: Path) -> list[Path]:
    from site_agent.genomics.plots import draw_all

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [run.result.to_csv(out / "results.csv")]
    paths += draw_all(run.result, out)
    return paths
