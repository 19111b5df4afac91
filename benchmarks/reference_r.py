"""R's survival package as an independent reference: datasets it ships and its estimates.

Calls ``Rscript`` (Debian ``r-base-core`` + ``r-cran-survival``; scripts/test.sh installs
them). Used by the reference tests and by benchmarks/bench_survival_grid.py.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess

import pandas as pd

# public clinical datasets shipped with R's survival package: R expression -> (time days, event 0/1)
DATASETS = {
    "lung": "data.frame(time = lung$time, event = as.integer(lung$status == 2), sex = lung$sex, "
            "age = lung$age, ph_ecog = lung$ph.ecog, inst = lung$inst)",
    "veteran": "data.frame(time = veteran$time, event = veteran$status, trt = veteran$trt, "
               "celltype = as.character(veteran$celltype), karno = veteran$karno, age = veteran$age)",
    "colon": "with(colon[colon$etype == 2, ], data.frame(time = time, event = status, rx = as.character(rx), "
             "sex = sex, age = age, nodes = nodes))",
    "pbc": "data.frame(time = pbc$time, event = as.integer(pbc$status == 2), trt = pbc$trt, age = pbc$age)",
}


def rscript() -> str | None:
    return shutil.which("Rscript")


def run_r(code: str, timeout: int = 120) -> str:
    exe = rscript()
    if exe is None:
        raise RuntimeError("Rscript not found (apt-get install r-base-core r-cran-survival)")
    p = subprocess.run([exe, "--vanilla", "-e", code], capture_output=True, text=True, timeout=timeout, check=False)
    if p.returncode != 0:
        raise RuntimeError(f"Rscript failed: {p.stderr.strip()[-2000:]}")
    return p.stdout


def dataset(name: str) -> pd.DataFrame:
    """One of :data:`DATASETS` as R ships it (rows with a missing time/event dropped)."""
    out = run_r(f"suppressMessages(library(survival)); d <- {DATASETS[name]}; "
                "write.csv(d[!is.na(d$time) & !is.na(d$event), ], stdout(), row.names = FALSE)")
    return pd.read_csv(io.StringIO(out))


def survfit_reference(df: pd.DataFrame, horizons: list[int]) -> dict:
    """survfit(Surv(time, event) ~ 1), conf.type "log": the curve at its times, the median and its
    CI, and survival (with CI) at the horizons."""
    csv = df[["time", "event"]].to_csv(index=False)
    code = (
        "suppressMessages(library(survival)); "
        f"d <- read.csv(text = {json.dumps(csv)}); "
        "f <- survfit(Surv(time, event) ~ 1, data = d, conf.type = 'log'); "
        "q <- quantile(f, 0.5); "
        f"s <- summary(f, times = c({', '.join(str(h) for h in horizons)}), extend = TRUE); "
        "cat(jsonlite_free <- paste0('{\"time\":[', paste(f$time, collapse = ','), '],',"
        "'\"surv\":[', paste(sprintf('%.17g', f$surv), collapse = ','), '],',"
        "'\"lower\":[', paste(ifelse(is.na(f$lower), 'null', sprintf('%.17g', f$lower)), collapse = ','), '],',"
        "'\"upper\":[', paste(ifelse(is.na(f$upper), 'null', sprintf('%.17g', f$upper)), collapse = ','), '],',"
        "'\"median\":[', paste(ifelse(is.na(c(q$quantile, q$lower, q$upper)), 'null', "
        "sprintf('%.17g', c(q$quantile, q$lower, q$upper))), collapse = ','), '],',"
        "'\"h_time\":[', paste(s$time, collapse = ','), '],',"
        "'\"h_surv\":[', paste(sprintf('%.17g', s$surv), collapse = ','), '],',"
        "'\"h_lower\":[', paste(ifelse(is.na(s$lower), 'null', sprintf('%.17g', s$lower)), collapse = ','), '],',"
        "'\"h_upper\":[', paste(ifelse(is.na(s$upper), 'null', sprintf('%.17g', s$upper)), collapse = ','), '],',"
        "'\"max_time\":', max(d$time), '}'))"
    )
    return json.loads(run_r(code))


def coxph_reference(df: pd.DataFrame, covariates: list[str], strata: str = "site",
                    control: str = "eps = 1e-14, iter.max = 100") -> dict:
    """coxph(Surv(time, event) ~ covariates + strata(strata), ties = "breslow") with ``control``:
    coefficients and standard errors by name (None where R reports NA) and R's warnings."""
    csv = df[["time", "event", strata, *covariates]].to_csv(index=False)
    code = (
        "suppressMessages(library(survival)); "
        f"d <- read.csv(text = {json.dumps(csv)}); "
        "w <- character(0); "
        f"f <- withCallingHandlers(coxph(Surv(time, event) ~ {' + '.join(covariates)} + strata({strata}), data = d, "
        f"ties = 'breslow', control = coxph.control({control})), "
        "warning = function(x) { w <<- c(w, conditionMessage(x)); invokeRestart('muffleWarning') }); "
        "b <- coef(f); se <- rep(NA_real_, length(b)); se[!is.na(b)] <- sqrt(diag(vcov(f))[!is.na(b)]); "
        "num <- function(v) paste(ifelse(is.na(v), 'null', sprintf('%.17g', v)), collapse = ','); "
        "cat(paste0('{\"names\":[', paste0('\"', names(b), '\"', collapse = ','), '],\"coef\":[', num(b), "
        "'],\"se\":[', num(se), '],\"loglik\":', sprintf('%.17g', f$loglik[2]), ',\"warnings\":[', "
        "paste0('\"', gsub('\"', \"'\", w), '\"', collapse = ','), ']}'))"
    )
    out = json.loads(run_r(code))
    out["warnings"] = [w for w in out["warnings"] if w]
    return out
