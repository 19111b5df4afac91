"""Independent reference in R (base R only): genefu-style PAM50 calls -- genes median-centred,
``cor(method = "spearman")`` with the centroids, the best one -- and R's fisher.test / kruskal.test."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from site_agent.genomics import reference, stats, subtype


def rscript() -> str | None:
    return shutil.which("Rscript")


def run_r(code: str) -> str:
    p = subprocess.run([rscript(), "--vanilla", "-e", code], capture_output=True, text=True, timeout=120, check=True)
    return p.stdout


if rscript() is None:
    if os.environ.get("CI"):
        pytest.fail("Rscript not found; scripts/test.sh installs r-base-core", pytrace=False)
    pytest.skip("Rscript not installed", allow_module_level=True)


def test_pam50_calls_and_correlations_match_r(tmp_path):
    cent = reference.pam50_centroids()
    rng = np.random.default_rng(7)
    which = rng.integers(0, 5, size=60)
    x = pd.DataFrame(5 + 1.5 * cent.to_numpy()[:, which] + rng.normal(0, 0.8, size=(50, 60)), index=cent.index,
                     columns=[f"s{i}" for i in range(60)])
    x = x.drop(index=["BIRC5", "MYC"])  # two genes missing, as at a real site
    x.to_csv(tmp_path / "x.csv")
    cent.to_csv(tmp_path / "c.csv")
    out = run_r(f"""
x <- as.matrix(read.csv("{tmp_path / 'x.csv'}", row.names = 1, check.names = FALSE))
cc <- as.matrix(read.csv("{tmp_path / 'c.csv'}", row.names = 1, check.names = FALSE))
g <- intersect(rownames(cc), rownames(x))
x <- sweep(x[g, ], 1, apply(x[g, ], 1, median))
r <- cor(x, cc[g, ], method = "spearman")
write.csv(r, stdout())
""")
    from io import StringIO

    ref = pd.read_csv(StringIO(out), index_col=0)
    cor, missing = subtype.spearman_to_centroids(x)
    assert sorted(missing) == ["BIRC5", "MYC"]
    assert np.allclose(cor.to_numpy(), ref.loc[cor.index, cor.columns].to_numpy(), atol=1e-12)
    calls, _ = subtype.pam50(x)
    assert list(calls) == list(ref.idxmax(axis=1))


def test_fisher_and_kruskal_match_r():
    tables = [(3, 7, 12, 40), (0, 9, 5, 20), (15, 2, 3, 11), (1, 1, 1, 30)]
    code = "\n".join(f"cat(sprintf('%.17g', fisher.test(matrix(c({a},{c},{b},{d}), 2))$p.value), '\\n')" for a, b, c, d in tables)
    ref = [float(v) for v in run_r(code).split()]
    for (a, b, c, d), p in zip(tables, ref):
        assert stats.fisher_exact(a, b, c, d)[1] == pytest.approx(p, rel=1e-9)
    groups = [np.array([1.5, 2.0, 2.0, 3.1]), np.array([2.0, 4.4, 5.1]), np.array([0.3, 6.2, 7.7, 8.0, 8.0])]
    r_groups = ", ".join("c(" + ",".join(map(str, g)) + ")" for g in groups)
    h, p = map(float, run_r(f"k <- kruskal.test(list({r_groups})); cat(sprintf('%.17g', c(k$statistic, k$p.value)))").split())
    got = stats.kruskal(groups)
    assert got[0] == pytest.approx(h, rel=1e-10) and got[1] == pytest.approx(p, rel=1e-9)
