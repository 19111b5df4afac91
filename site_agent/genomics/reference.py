"""The shipped reference tables (see ``data/SOURCES.md``): gene map, PAM50 centroids, ESTIMATE
signatures, the curated actionability table."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pandas as pd

from optima_common.errors import GenomicsDataError

DATA = Path(__file__).with_name("data")
SUBTYPES = ("Basal", "Her2", "LumA", "LumB", "Normal")
ACTIONABILITY_COLUMNS = ("gene", "variant", "drug", "evidence_level", "predicted_response", "source")


@cache
def gene_map() -> pd.DataFrame:
    """symbol (as the signatures spell it), approved_symbol, ensembl_gene_id, matched_by."""
    return pd.read_csv(DATA / "gene_map.csv", dtype=str)


@cache
def identifier_index() -> dict[str, str]:
    """Any known identifier (symbol, approved symbol, Ensembl id without version) -> our symbol."""
    g = gene_map()
    out: dict[str, str] = {}
    for col in ("ensembl_gene_id", "approved_symbol", "symbol"):  # symbol last: it wins
        out.update(dict(zip(g[col].str.upper(), g["symbol"])))
    return out


@cache
def pam50_centroids() -> pd.DataFrame:
    """50 genes x 5 subtypes (index: gene symbol)."""
    return pd.read_csv(DATA / "pam50_centroids.csv").set_index("gene")[list(SUBTYPES)]


@cache
def estimate_signatures() -> dict[str, tuple[str, ...]]:
    s = pd.read_csv(DATA / "estimate_signatures.csv")
    return {k: tuple(g["gene"]) for k, g in s.groupby("signature", sort=True)}


def actionability(path: Path | None = None) -> pd.DataFrame:
    """The shipped table, or a site's own CSV with the same columns (one-line error otherwise)."""
    src = Path(path) if path is not None else DATA / "actionability.csv"
    try:
        t = pd.read_csv(src, dtype=str).fillna("")
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise GenomicsDataError(f"actionability table {src}: cannot read it ({exc.__class__.__name__})",
                                hint="give a CSV with columns " + ", ".join(ACTIONABILITY_COLUMNS)) from None
    missing = [c for c in ACTIONABILITY_COLUMNS if c not in t.columns]
    if missing:
        raise GenomicsDataError(f"actionability table {src}: missing column(s) {', '.join(missing)}",
                                hint="needs " + ", ".join(ACTIONABILITY_COLUMNS))
    t["variant"] = t["variant"].str.removeprefix("p.")
    return t
