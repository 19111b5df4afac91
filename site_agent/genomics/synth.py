"""``site-agent genomics synth``: a TCGA-BRCA-like site (MAF, expression, linkage, clinical, truth).

Marginals and where they come from (published figures; all approximate):

* PAM50 shares LumA 50%, LumB 20%, Basal 17%, Her2-enriched 8%, Normal-like 5%: TCGA PanCancer
  Atlas BRCA subtype calls (Berger et al., Cancer Cell 2018;33:690; cBioPortal "brca_tcga_pan_can_atlas_2018").
* Gene mutation rates by subtype (patients with a non-silent mutation): TCGA Network, Nature
  2012;490:61-70 (Fig. 2 and Table S): TP53 in ~80% Basal, ~72% Her2-enriched, ~12% LumA, ~29% LumB
  (about 33% overall); PIK3CA ~45% LumA, ~29% LumB, ~39% Her2, ~9% Basal (about 35% overall);
  GATA3, MAP3K1, CDH1 (lobular, LumA) and KMT2C mostly luminal; Ciriello et al., Cell 2015;163:506
  for CDH1 (~13% of all BRCA).
* PIK3CA hotspots among PIK3CA-mutant tumours: H1047R ~35%, E545K ~17%, E542K ~10% (cBioPortal
  TCGA-BRCA PanCancer Atlas mutation plot; Samuels et al., Science 2004;304:554).
* ER/HER2 by subtype (IHC): ER+ about 74% and HER2+ about 12-15% overall (TCGA Network 2012).
* Race and age: TCGA-BRCA about 69% White, 17% Black, 6% Asian, 8% not reported; mean age at
  diagnosis ~59, Black patients about 4 years younger (the seed workflow's finding; cf. DeSantis et
  al., CA Cancer J Clin 2019;69:438, median age 60 White vs 59 Black in SEER -- our gap follows TCGA).
* Immune infiltration higher in Basal and Her2-enriched than luminal tumours (Thorsson et al.,
  Immunity 2018;48:812; Yoshihara et al., Nat Commun 2013;4:2612 ESTIMATE scores by subtype).

The truth is what was drawn (per patient), so released counts can be compared exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from optima_common.errors import ConfigError
from optima_common.fileio import write_atomic
from site_agent.genomics import reference

SUBTYPE_SHARES = {"LumA": 0.50, "LumB": 0.20, "Basal": 0.17, "Her2": 0.08, "Normal": 0.05}
#: P(non-silent mutation) by subtype: LumA, LumB, Basal, Her2, Normal
GENE_RATES = {
    "TP53": (0.12, 0.29, 0.80, 0.72, 0.15), "PIK3CA": (0.45, 0.29, 0.09, 0.39, 0.35),
    "CDH1": (0.20, 0.07, 0.01, 0.04, 0.10), "GATA3": (0.14, 0.15, 0.02, 0.07, 0.08),
    "MAP3K1": (0.13, 0.05, 0.01, 0.04, 0.06), "KMT2C": (0.09, 0.08, 0.05, 0.07, 0.06),
    "PTEN": (0.05, 0.04, 0.06, 0.03, 0.03), "NF1": (0.03, 0.04, 0.05, 0.04, 0.02),
    "AKT1": (0.04, 0.03, 0.00, 0.01, 0.02), "RUNX1": (0.05, 0.03, 0.01, 0.02, 0.03),
    "TBX3": (0.04, 0.03, 0.00, 0.02, 0.02), "CBFB": (0.03, 0.02, 0.01, 0.02, 0.02),
    "MAP2K4": (0.05, 0.03, 0.01, 0.02, 0.02), "ARID1A": (0.03, 0.03, 0.03, 0.04, 0.02),
    "BRCA1": (0.01, 0.01, 0.06, 0.01, 0.01), "BRCA2": (0.02, 0.02, 0.03, 0.02, 0.01),
    "ERBB2": (0.02, 0.02, 0.01, 0.04, 0.01), "FOXA1": (0.03, 0.02, 0.00, 0.01, 0.01),
}
ORDER = ("LumA", "LumB", "Basal", "Her2", "Normal")
PIK3CA_CHANGES = {"H1047R": 0.35, "E545K": 0.17, "E542K": 0.10, "N345K": 0.06, "H1047L": 0.05, "E726K": 0.05,
                  "C420R": 0.04, "Q546K": 0.04, "G1049R": 0.04, "E453K": 0.04, "M1043I": 0.03, "R88Q": 0.03}
TRUNCATING = ("Nonsense_Mutation", "Frame_Shift_Del", "Frame_Shift_Ins", "Splice_Site")
CLASS_MIX = {"TP53": (("Missense_Mutation", 0.65), ("Nonsense_Mutation", 0.14), ("Frame_Shift_Del", 0.1),
                      ("Frame_Shift_Ins", 0.05), ("Splice_Site", 0.06)),
             "CDH1": (("Frame_Shift_Del", 0.35), ("Nonsense_Mutation", 0.3), ("Splice_Site", 0.15),
                      ("Frame_Shift_Ins", 0.1), ("Missense_Mutation", 0.1)),
             "GATA3": (("Frame_Shift_Ins", 0.45), ("Frame_Shift_Del", 0.3), ("Splice_Site", 0.15),
                       ("Missense_Mutation", 0.1)),
             "MAP3K1": (("Frame_Shift_Del", 0.35), ("Nonsense_Mutation", 0.25), ("Missense_Mutation", 0.4))}
DEFAULT_MIX = (("Missense_Mutation", 0.7), ("Nonsense_Mutation", 0.1), ("Frame_Shift_Del", 0.08),
               ("Frame_Shift_Ins", 0.04), ("In_Frame_Del", 0.04), ("Splice_Site", 0.04))
FIXED_CHANGE = {"AKT1": "E17K", "ERBB2": "L755S", "FOXA1": "E18K"}
PASSENGERS = ("TTN", "MUC16", "SYNE1", "RYR2", "USH2A", "FLG", "DMD", "HMCN1", "MUC4", "OBSCN", "SPTA1",
              "LRP2", "FAT3", "CSMD1", "ZFHX4", "AHNAK2", "DNAH5", "PCLO", "XIRP2", "APOB")
ER_POS = {"LumA": 0.95, "LumB": 0.90, "Basal": 0.10, "Her2": 0.30, "Normal": 0.80}
HER2_POS = {"LumA": 0.05, "LumB": 0.15, "Basal": 0.03, "Her2": 0.70, "Normal": 0.08}
RACES = {"white": (0.69, 59.0), "black or african american": (0.17, 55.0), "asian": (0.06, 57.0),
         "not reported": (0.08, 58.0)}
IMMUNE_MEAN = {"LumA": -0.4, "LumB": -0.2, "Basal": 0.9, "Her2": 0.6, "Normal": 0.0}
STROMAL_MEAN = {"LumA": 0.2, "LumB": -0.1, "Basal": -0.2, "Her2": 0.0, "Normal": 0.5}
SITE_CODE = "AA"


@dataclass(frozen=True)
class SynthResult:
    out: Path
    patients: int
    variants: int
    genes: int


def _barcode(i: int, kind: str = "D") -> str:
    return f"SYNT-{SITE_CODE}-{i:04d}-01A-11{kind}-A{i % 997:03d}-09"


def generate(out: Path, patients: int, seed: int, *, genes: int = 0, passenger_rate: float = 3.0,
             missing_expression: float = 0.05, force: bool = False) -> SynthResult:
    """Write the five files; ``genes`` > 0 pads the matrix with filler genes up to that many."""
    if patients < 1:
        raise ConfigError("--patients must be at least 1")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise ConfigError(f"--out {out} exists and is not empty", hint="use --force or another folder")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = patients
    pid = np.arange(1, n + 1) + 1000
    subtype = rng.choice(ORDER, size=n, p=[SUBTYPE_SHARES[s] for s in ORDER])
    s_idx = np.array([ORDER.index(s) for s in subtype])
    er = np.where(rng.random(n) < np.array([ER_POS[s] for s in subtype]), "positive", "negative")
    her2 = np.where(rng.random(n) < np.array([HER2_POS[s] for s in subtype]), "positive", "negative")
    pr = np.where((er == "positive") & (rng.random(n) < 0.85), "positive", "negative")
    unk = rng.random(n) < 0.03  # a few without IHC
    er, pr, her2 = (np.where(unk, "unknown", x) for x in (er, pr, her2))
    race_names = list(RACES)
    race = rng.choice(race_names, size=n, p=[RACES[r][0] for r in race_names])
    age = np.clip(np.round(rng.normal([RACES[r][1] for r in race], 12.5)), 26, 90).astype(int)
    ethnicity = np.where(rng.random(n) < 0.03, "hispanic or latino", "not hispanic or latino")
    sex = np.where(rng.random(n) < 0.99, "female", "male")

    rows = []
    for g, rates in GENE_RATES.items():
        hit = rng.random(n) < np.array(rates)[s_idx]
        mix = CLASS_MIX.get(g, DEFAULT_MIX)
        for i in np.flatnonzero(hit):
            cls = mix[rng.choice(len(mix), p=[m[1] for m in mix])][0]
            change = _change(g, cls, rng)
            rows.append((g, cls, change, i))
            if rng.random() < 0.08:  # a second hit in the same gene
                rows.append((g, "Missense_Mutation" if g != "PIK3CA" else "Missense_Mutation",
                             _change(g, "Missense_Mutation", rng), i))
    k = rng.poisson(passenger_rate, size=n)
    who = np.repeat(np.arange(n), k)  # passengers, vectorised (a million rows take seconds)
    total = len(who)
    u = rng.random((total, 2))
    cls = np.where(u[:, 0] < 0.3, "Silent", np.where(u[:, 1] < 0.85, "Missense_Mutation", "Intron"))
    aa = np.array(list("ARNDCQEGHILKMFPSTWYV"))
    change = (pd.Series(aa[rng.integers(20, size=total)]) + pd.Series(rng.integers(10, 3000, size=total)).astype(str)
              + pd.Series(aa[rng.integers(20, size=total)])).where(cls != "Intron", "")
    passengers = pd.DataFrame({"Hugo_Symbol": np.array(PASSENGERS)[rng.integers(len(PASSENGERS), size=total)],
                               "Variant_Classification": cls, "HGVSp_Short": change.to_numpy(), "i": who})
    maf = pd.concat([pd.DataFrame(rows, columns=["Hugo_Symbol", "Variant_Classification", "HGVSp_Short", "i"]),
                     passengers], ignore_index=True)
    maf["HGVSp_Short"] = np.where(maf["HGVSp_Short"] == "", "", "p." + maf["HGVSp_Short"])
    barcodes = np.array([_barcode(i) for i in range(n)])
    maf["Tumor_Sample_Barcode"] = barcodes[maf["i"].to_numpy(dtype=int)]
    maf["Variant_Type"] = np.where(maf["Variant_Classification"].str.startswith("Frame_Shift_Del"), "DEL",
                                   np.where(maf["Variant_Classification"].str.startswith("Frame_Shift_Ins"), "INS", "SNP"))
    maf["Entrez_Gene_Id"] = "0"
    maf["Center"] = "synthetic"
    maf["NCBI_Build"] = "GRCh38"
    cols = ["Hugo_Symbol", "Entrez_Gene_Id", "Center", "NCBI_Build", "Variant_Classification", "Variant_Type",
            "Tumor_Sample_Barcode", "HGVSp_Short"]
    text = "#version gdc-1.0.0\n#synthetic: optima-federated genomics synth\n" + maf[cols].to_csv(sep="\t", index=False)
    write_atomic(out / "mutations.maf", text.encode("utf-8"))

    immune = rng.normal([IMMUNE_MEAN[s] for s in subtype], 0.6)
    stromal = rng.normal([STROMAL_MEAN[s] for s in subtype], 0.6)
    has_expr = rng.random(n) >= missing_expression
    expr = _expression(rng, subtype[has_expr], immune[has_expr], stromal[has_expr], genes)
    expr.columns = [_barcode(int(i), "R") for i in np.flatnonzero(has_expr)]
    write_atomic(out / "expression.tsv", expr.to_csv(sep="\t", float_format="%.3f", index_label="gene").encode())
    link = pd.DataFrame({"sample_barcode": [_barcode(int(i))[:16] for i in range(n)], "person_id": pid})
    write_atomic(out / "linkage.csv", link.to_csv(index=False).encode())
    clin = pd.DataFrame({"person_id": pid, "age_at_diagnosis": age, "sex": sex, "race": race,
                         "ethnicity": ethnicity, "er_status": er, "pr_status": pr, "her2_status": her2})
    write_atomic(out / "clinical.csv", clin.to_csv(index=False).encode())

    ns = maf[maf["Variant_Classification"].isin(("Missense_Mutation",) + TRUNCATING + ("In_Frame_Del",))]
    gene_patients = {g: int(c) for g, c in ns.groupby("Hugo_Symbol")["i"].nunique().items()}
    hot = ns[ns["Hugo_Symbol"] == "PIK3CA"].assign(change=lambda x: x["HGVSp_Short"].str.removeprefix("p."))
    truth = {
        "seed": seed, "patients": n, "sources": "see site_agent/genomics/synth.py docstring",
        "gene_patients": gene_patients,
        "hotspots": {f"PIK3CA {c}": {"overall": int(hot.loc[hot["change"] == c, "i"].nunique()),
                                     **{f"er_{s}": int(hot.loc[(hot["change"] == c) & (er[hot["i"]] == s), "i"].nunique())
                                        for s in ("positive", "negative", "unknown")},
                                     **{f"her2_{s}": int(hot.loc[(hot["change"] == c) & (her2[hot["i"]] == s), "i"].nunique())
                                        for s in ("positive", "negative", "unknown")}}
                     for c in ("H1047R", "E545K", "E542K")},
        "subtype": dict(zip(map(str, pid), subtype.tolist())),
        "has_expression": dict(zip(map(str, pid), has_expr.tolist())),
        "immune": dict(zip(map(str, pid), np.round(immune, 4).tolist())),
        "stromal": dict(zip(map(str, pid), np.round(stromal, 4).tolist())),
        "variants": len(maf),
    }
    write_atomic(out / "truth.json", json.dumps(truth, indent=1, sort_keys=True).encode())
    return SynthResult(out, n, len(maf), len(expr))


def _change(gene: str, cls: str, rng) -> str:
    if gene == "PIK3CA" and cls == "Missense_Mutation":
        keys = list(PIK3CA_CHANGES)
        p = np.array(list(PIK3CA_CHANGES.values()))
        return keys[rng.choice(len(keys), p=p / p.sum())]
    if gene in FIXED_CHANGE and cls == "Missense_Mutation":
        return FIXED_CHANGE[gene]
    pos = int(rng.integers(20, 1200))
    if cls == "Nonsense_Mutation":
        return f"R{pos}*"
    if cls.startswith("Frame_Shift"):
        return f"L{pos}fs"
    if cls == "Splice_Site":
        return f"X{pos}_splice"
    if cls.startswith("In_Frame"):
        return f"E{pos}del"
    return f"R{pos}H" if gene != "PIK3CA" else "R88Q"


def _expression(rng, subtype, immune, stromal, genes: int) -> pd.DataFrame:
    """log-normal TPM: baseline per gene, + PAM50 centroid pattern, + immune/stromal latent on signatures."""
    cent = reference.pam50_centroids()
    sig = reference.estimate_signatures()
    gene_map = reference.gene_map()
    approved = dict(zip(gene_map["symbol"], gene_map["approved_symbol"]))  # matrices carry current symbols
    names = list(dict.fromkeys(list(cent.index) + list(sig["immune"]) + list(sig["stromal"])))
    filler = max(0, genes - len(names))
    m = len(subtype)
    base = rng.normal(4.0, 1.5, size=(len(names), 1))
    x = base + rng.normal(0, 0.5, size=(len(names), m))
    idx = {g: i for i, g in enumerate(names)}
    pam_rows = [idx[g] for g in cent.index]
    x[pam_rows] += 2.0 * cent.to_numpy()[:, [list(cent.columns).index(s) for s in subtype]]
    x[[idx[g] for g in sig["immune"]]] += 1.5 * immune
    x[[idx[g] for g in sig["stromal"]]] += 1.5 * stromal
    tpm = np.exp2(np.clip(x, 0, None)) - 1
    out = pd.DataFrame(tpm, index=[approved.get(g, g) for g in names])
    if filler:
        f = np.exp2(np.clip(rng.normal(rng.normal(3.0, 2.0, size=(filler, 1)), 0.5, size=(filler, m)), 0, None)) - 1
        out = pd.concat([out, pd.DataFrame(f, index=[f"FILLER{i:05d}" for i in range(filler)])])
    return out
