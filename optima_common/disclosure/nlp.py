"""Declared relations of the radiology-report NLP tables (site_agent/nlp): report fates add up,
and the agreement cells are tied to the NLP-positive, structured-positive and evaluated counts."""

from __future__ import annotations

import numpy as np

from optima_common.disclosure import system as S
from optima_common.disclosure.frame import count_rows, norm_variable


def nlp_report_counts(f, s, co):
    """Reports read = kept + every filtered reason."""
    c = count_rows(f, "nlp_report_counts")
    c = c[c["variable_name"] == "reports"]
    c = c.assign(key=c["result_id"].astype(str))
    S.sum_equals(s, c[c["variable_level"] != "read"][["key", "row"]], c[c["variable_level"] == "read"][["key", "row"]],
                 "NLP reports: read = kept + filtered")


def nlp_agreement(f, s, co):
    """Per site: TP + FP = NLP positive, TP + FN = structured positive, TP + FP + FN <= persons
    evaluated (the true negatives, the complement, protected); a site's NLP positive, structured
    positive and TP at most those of ``any`` (the difference protected). Precision, recall, F1 and their CIs
    sit in the cell of TP/FP/FN, so derived_mask withholds them with any of the three."""
    c = count_rows(f, "nlp_metastasis_agreement")
    n = c[norm_variable(c["variable_name"]) == "number subjects"]
    cell = c[c["group_name"] == "metastasis_site"]
    by = {(g, v, e): r for g, v, e, r in zip(cell["group_level"], cell["variable_name"], cell["estimate_name"], cell["row"])}
    total = {rid: r for rid, r in zip(n["result_id"], n["row"])}
    for (site, rid) in sorted(set(zip(cell["group_level"], cell["result_id"]))):
        tp, fp, fn = (by.get((site, "agreement", e)) for e in ("tp_count", "fp_count", "fn_count"))
        nlp, st = by.get((site, "nlp positive", "count")), by.get((site, "structured positive", "count"))
        if tp is None or fp is None or fn is None:
            continue
        if nlp is not None:
            s.add(np.zeros(3), np.r_[nlp, tp, fp], np.r_[1.0, -1.0, -1.0], 1, f"NLP {site}: TP + FP = NLP positive")
        if st is not None:
            s.add(np.zeros(3), np.r_[st, tp, fn], np.r_[1.0, -1.0, -1.0], 1,
                  f"NLP {site}: TP + FN = structured positive")
        if rid in total:
            tn = s.new_hidden(1, protect=True)[0]
            s.add(np.zeros(5), np.r_[total[rid], tp, fp, fn, tn], np.r_[1.0, -1.0, -1.0, -1.0, -1.0], 1,
                  f"NLP {site}: TP + FP + FN + TN = persons evaluated (TN protected)")
    # a person positive at a site is positive for "any": the difference (positive, but not at this
    # site) is a person count too, protected like TN (found by tests/test_nlp_attack.py)
    for (site, rid) in sorted(set(zip(cell["group_level"], cell["result_id"]))):
        if site == "any":
            continue
        for v, e in (("nlp positive", "count"), ("structured positive", "count"), ("agreement", "tp_count")):
            part, whole = by.get((site, v, e)), by.get(("any", v, e))
            if part is not None and whole is not None:
                S.at_most(s, np.r_[part], np.r_[whole], f"NLP {site}: {v} {e} <= any (difference protected)",
                          protect=True)


DECLARATIONS = {
    "nlp_report_counts": nlp_report_counts,
    "nlp_metastasis_agreement": nlp_agreement,
}
