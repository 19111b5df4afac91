"""Read the site's genomics inputs; everything not used is counted and named in one line each.

* MAF as the GDC publishes it (tab-separated, ``#`` comment lines such as ``#version gdc-1.0.0``,
  gzip accepted, GDC/TCGA column names with the common aliases: ``HGVSp_Short`` /
  ``Protein_Change`` / ``amino_acid_change``);
* expression matrix: genes x samples TSV (first column the gene: HGNC symbol or Ensembl id with or
  without version), raw counts or TPM;
* linkage CSV: sample barcode -> person_id (a MAF/matrix barcode links when it or one of its
  dash-separated prefixes, down to the TCGA participant ``TCGA-XX-XXXX``, is in the linkage);
* clinical CSV: person_id, age_at_diagnosis, sex, race, ethnicity, er_status, pr_status, her2_status.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from optima_common.errors import GenomicsDataError
from site_agent.genomics import reference

#: GDC MAF Variant_Classification values (docs.gdc.cancer.gov, "Mutation Annotation Format")
NON_SILENT = ("Frame_Shift_Del", "Frame_Shift_Ins", "In_Frame_Del", "In_Frame_Ins", "Missense_Mutation",
              "Nonsense_Mutation", "Splice_Site", "Translation_Start_Site", "Nonstop_Mutation")
SILENT = ("Silent", "3'UTR", "5'UTR", "3'Flank", "5'Flank", "IGR", "Intron", "RNA", "Targeted_Region",
          "Splice_Region")
MAF_REQUIRED = ("Hugo_Symbol", "Variant_Classification", "Tumor_Sample_Barcode")
PROTEIN_ALIASES = ("HGVSp_Short", "Protein_Change", "amino_acid_change", "AAChange")
STATUS = {"positive": "positive", "pos": "positive", "+": "positive", "1": "positive", "true": "positive",
          "negative": "negative", "neg": "negative", "-": "negative", "0": "negative", "false": "negative"}
CLINICAL_REQUIRED = ("person_id",)
CLINICAL_COLUMNS = ("age_at_diagnosis", "sex", "race", "ethnicity", "er_status", "pr_status", "her2_status")


@dataclass
class Notes:
    """One line per thing not used: what, how many, which (first few names)."""

    lines: list[str] = field(default_factory=list)

    def add(self, what: str, names) -> None:
        names = sorted({str(n) for n in names})
        if names:
            shown = ", ".join(names[:8]) + (f", ... (+{len(names) - 8})" if len(names) > 8 else "")
            self.lines.append(f"{what}: {len(names)} ({shown})")


def _open_text(path: Path):
    path = Path(path)
    if not path.is_file():
        raise GenomicsDataError(f"{path}: no such file", hint="check the path")
    with open(path, "rb") as fh:
        magic = fh.read(2)
    return gzip.open(path, "rt", encoding="utf-8", newline="") if magic == b"\x1f\x8b" else open(
        path, encoding="utf-8", newline="")


# ------------------------------------------------------------------------------------------ MAF

@dataclass
class Maf:
    variants: pd.DataFrame  # gene, classification, protein_change, barcode, source, row, non_silent
    rows: int  # data rows read (comment lines and header excluded)
    skipped: dict[str, int]  # reason -> rows
    notes: Notes


def read_maf(paths: list[Path]) -> Maf:
    frames, notes, skipped, total = [], Notes(), {}, 0
    for path in paths:
        try:
            with _open_text(path) as fh:
                df = pd.read_csv(fh, sep="\t", comment="#", dtype=str, keep_default_na=False,
                                 quoting=3, low_memory=False)
        except (UnicodeDecodeError, pd.errors.ParserError, EOFError, OSError) as exc:
            raise GenomicsDataError(f"MAF {path}: not a readable tab-separated MAF ({exc.__class__.__name__})",
                                    hint="give a GDC MAF (.maf or .maf.gz)") from None
        missing = [c for c in MAF_REQUIRED if c not in df.columns]
        if missing:
            raise GenomicsDataError(f"MAF {path}: missing column(s) {', '.join(missing)}",
                                    hint="a GDC MAF has Hugo_Symbol, Variant_Classification, Tumor_Sample_Barcode")
        prot = next((c for c in PROTEIN_ALIASES if c in df.columns), None)
        known = set(MAF_REQUIRED) | set(PROTEIN_ALIASES)
        notes.add(f"MAF {Path(path).name}: columns not used", [c for c in df.columns if c not in known])
        if prot is None:
            notes.lines.append(f"MAF {Path(path).name}: no protein-change column ({'/'.join(PROTEIN_ALIASES)}); "
                               "hotspots and variant-level actionability are empty")
        v = pd.DataFrame({"gene": df["Hugo_Symbol"].str.strip(), "classification": df["Variant_Classification"].str.strip(),
                          "protein_change": (df[prot] if prot else pd.Series("", index=df.index)).str.strip()
                          .str.removeprefix("p."),
                          "barcode": df["Tumor_Sample_Barcode"].str.strip(), "source": Path(path).name,
                          "row": np.arange(len(df)) + 1})
        total += len(v)
        blank = (v["gene"] == "") | (v["gene"] == "Unknown") | (v["barcode"] == "")
        if blank.any():
            skipped["no gene or sample barcode"] = skipped.get("no gene or sample barcode", 0) + int(blank.sum())
            notes.add(f"MAF {Path(path).name}: rows without gene or barcode skipped (row numbers)",
                      v.loc[blank, "row"])
        v = v[~blank]
        unknown = ~v["classification"].isin(NON_SILENT + SILENT)
        if unknown.any():
            skipped["unknown Variant_Classification"] = skipped.get("unknown Variant_Classification", 0) + int(unknown.sum())
            notes.add(f"MAF {Path(path).name}: rows with an unknown Variant_Classification skipped",
                      v.loc[unknown, "classification"])
        frames.append(v[~unknown])
    variants = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["gene", "classification", "protein_change", "barcode", "source", "row"])
    variants["non_silent"] = variants["classification"].isin(NON_SILENT)
    return Maf(variants, total, skipped, notes)


# ------------------------------------------------------------------------------------- linkage

def read_linkage(path: Path) -> pd.Series:
    """barcode -> person_id (int)."""
    try:
        with _open_text(path) as fh:
            t = pd.read_csv(fh, dtype=str)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise GenomicsDataError(f"linkage {path}: not a readable CSV ({exc.__class__.__name__})") from None
    bc = next((c for c in ("sample_barcode", "Tumor_Sample_Barcode", "specimen_source_value", "barcode")
               if c in t.columns), None)
    if bc is None or "person_id" not in t.columns:
        raise GenomicsDataError(f"linkage {path}: needs columns sample_barcode and person_id "
                                f"(found {', '.join(map(str, t.columns))})")
    pid = pd.to_numeric(t["person_id"], errors="coerce")
    if pid.isna().any():
        raise GenomicsDataError(f"linkage {path}: person_id is not an integer in {int(pid.isna().sum())} row(s)")
    out = pd.Series(pid.astype("int64").to_numpy(), index=t[bc].str.strip())
    dup = out.index[out.index.duplicated(keep=False)]
    conflict = [b for b in set(dup) if out.loc[[b]].nunique() > 1]
    if conflict:
        raise GenomicsDataError(f"linkage {path}: barcode(s) linked to two persons: {', '.join(sorted(conflict)[:5])}")
    return out[~out.index.duplicated()]


def link(barcodes: pd.Series, linkage: pd.Series) -> pd.Series:
    """person_id per barcode (NaN where unlinked): exact, else the longest linked dash-prefix."""
    uniq = pd.Index(barcodes.unique())
    found = pd.Series(np.nan, index=uniq, dtype=float)
    parts = uniq.str.split("-")
    lk = linkage.to_dict()
    for i, (b, ps) in enumerate(zip(uniq, parts)):  # unique barcodes: one per sample, not per row
        for k in range(len(ps), 0, -1):
            hit = lk.get("-".join(ps[:k]))
            if hit is not None:
                found.iat[i] = hit
                break
            if k <= min(3, len(ps)):  # never shorter than a participant barcode (TCGA-XX-XXXX)
                break
    return barcodes.map(found)


# ---------------------------------------------------------------------------------- expression

@dataclass
class Expression:
    values: pd.DataFrame  # genes (our symbol or the given id) x barcodes, log2 scale
    kind: str  # "counts" or "tpm"
    notes: Notes


def read_expression(path: Path) -> Expression:
    notes = Notes()
    with _open_text(path) as fh:  # leading '#' lines skipped (pandas' comment= option is 4x slower)
        skip = 0
        for line in fh:
            if not line.startswith("#"):
                break
            skip += 1
    try:
        with _open_text(path) as fh:
            t = pd.read_csv(fh, sep="\t", index_col=0, skiprows=skip)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise GenomicsDataError(f"expression {path}: not a readable genes x samples TSV ({exc.__class__.__name__})") from None
    if t.shape[1] == 0 or t.shape[0] == 0:
        raise GenomicsDataError(f"expression {path}: no samples or no genes", hint="first column gene, one column per sample")
    numeric = all(pd.api.types.is_numeric_dtype(dt) for dt in t.dtypes)
    vals = t if numeric else t.apply(pd.to_numeric, errors="coerce")
    bad_cols = [c for c in vals.columns if vals[c].isna().all()]
    if bad_cols:
        raise GenomicsDataError(f"expression {path}: column(s) without numbers: {', '.join(map(str, bad_cols[:5]))}")
    if (vals < 0).any().any():
        raise GenomicsDataError(f"expression {path}: negative values; give raw counts or TPM, not log ratios")
    ids = pd.Index(t.index.astype(str).str.strip())
    ens = ids.str.upper().str.match(r"^ENSG\d+")
    ids = ids.where(~ens, ids.str.upper().str.replace(r"\.\d+$", "", regex=True))
    index = reference.identifier_index()
    mapped = pd.Index([index.get(i.upper(), i) for i in ids])
    notes.add(f"expression {Path(path).name}: Ensembl ids outside the shipped gene map (not used)",
              ids[ens & ~ids.str.upper().isin(list(index))])
    vals.index = mapped
    missing_rows = vals.isna().any(axis=1)
    notes.add(f"expression {Path(path).name}: genes with missing values (not used)", vals.index[missing_rows])
    vals = vals[~missing_rows]
    dup = vals.index.duplicated()
    notes.add(f"expression {Path(path).name}: duplicate genes (first kept)", vals.index[dup])
    vals = vals[~dup]
    arr = vals.to_numpy(dtype=float)
    is_counts = bool(np.all(arr == np.round(arr)) and arr.max() > 1000)
    if is_counts:
        arr = arr / np.maximum(arr.sum(axis=0, keepdims=True), 1.0) * 1e6  # counts per million
    out = pd.DataFrame(np.log2(arr + 1.0), index=vals.index, columns=vals.columns.astype(str))
    return Expression(out, "counts" if is_counts else "tpm", notes)


# ------------------------------------------------------------------------------------ clinical

def _status(s: pd.Series) -> pd.Series:
    return s.fillna("").astype(str).str.strip().str.lower().map(STATUS).fillna("unknown")


def read_clinical(path: Path) -> tuple[pd.DataFrame, Notes]:
    notes = Notes()
    try:
        with _open_text(path) as fh:
            t = pd.read_csv(fh, dtype=str)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise GenomicsDataError(f"clinical {path}: not a readable CSV ({exc.__class__.__name__})") from None
    if "person_id" not in t.columns:
        raise GenomicsDataError(f"clinical {path}: needs a person_id column (found {', '.join(map(str, t.columns))})")
    notes.add(f"clinical {Path(path).name}: expected columns absent (treated as unknown)",
              [c for c in CLINICAL_COLUMNS if c not in t.columns])
    notes.add(f"clinical {Path(path).name}: columns not used",
              [c for c in t.columns if c not in CLINICAL_COLUMNS + CLINICAL_REQUIRED])
    return normalise_clinical(t, str(path)), notes


def normalise_clinical(t: pd.DataFrame, where: str) -> pd.DataFrame:
    pid = pd.to_numeric(t["person_id"], errors="coerce")
    if pid.isna().any():
        raise GenomicsDataError(f"clinical {where}: person_id is not an integer in {int(pid.isna().sum())} row(s)")
    out = pd.DataFrame({"person_id": pid.astype("int64")})
    col = lambda c: t[c] if c in t.columns else pd.Series(np.nan, index=t.index)
    out["age_at_diagnosis"] = pd.to_numeric(col("age_at_diagnosis"), errors="coerce")
    for c in ("sex", "race", "ethnicity"):
        out[c] = col(c).fillna("unknown").astype(str).str.strip().str.lower().replace("", "unknown")
    for c in ("er_status", "pr_status", "her2_status"):
        out[c] = _status(col(c))
    if out["person_id"].duplicated().any():
        raise GenomicsDataError(f"clinical {where}: person_id repeated "
                                f"({', '.join(map(str, out.loc[out['person_id'].duplicated(), 'person_id'][:5]))})")
    return out.set_index("person_id")
