"""Report section of the NLP metastasis analysis: reports kept/filtered and agreement with
structured labels by site, pooled agreement recomputed from pooled TP/FP/FN (coordinator.pooling.nlp)."""

from __future__ import annotations

from coordinator.report.sections import View

SHOWN = ["tp_count", "fp_count", "fn_count", "precision", "precision_95CI_lower", "precision_95CI_upper",
         "recall", "recall_95CI_lower", "recall_95CI_upper", "f1", "f1_95CI_lower", "f1_95CI_upper"]


def nlp_section(v: View) -> str:
    agree = v.rows("nlp_metastasis_agreement")
    reports = v.rows("nlp_report_counts")
    if agree.empty and reports.empty:
        return ""
    reports = reports[reports["estimate_name"] == "count"]
    a = agree[(agree["variable_name"].isin(["agreement", "nlp positive", "structured positive", "number subjects"]))
              & (agree["estimate_name"].isin([*SHOWN, "count"]))]
    return ("<h2>Radiology-report NLP: metastasis (agreement with structured labels)</h2>"
            '<p class="note">Persons of the breast_cancer cohort with a kept radiology report; NLP positive = a '
            "report states a metastasis (hedges such as &quot;likely&quot; count, &quot;cannot be excluded&quot; does "
            "not; known metastases count). Structured positive = a secondary-malignancy condition or a metastasis "
            "cancer modifier. The network's precision, recall and F1 are recomputed from the pooled TP/FP/FN "
            "(Wilson CIs; F1 by bootstrap).</p>"
            "<h3>Reports</h3>" + v.wide(reports, ["variable_level"], name="nlp_reports", labels=["reports"])
            + "<h3>Agreement by metastasis site</h3>"
            + v.wide(a, ["group_level", "variable_name", "estimate_name"], name="nlp_agreement",
                     labels=["site", "variable", "estimate"]))
