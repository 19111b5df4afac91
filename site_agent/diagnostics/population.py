"""PhenotypeR ``populationDiagnostics()`` parity: incidence and prevalence of each cohort.

PhenotypeR (``R/populationDiagnostics.R``) builds IncidencePrevalence denominator cohorts for
the general population (age groups ``0 to 150``, ``0 to 17``, ``18 to 64``, ``65 to 150``;
sex ``Both``/``Male``/``Female``) and runs ``estimateIncidence()`` and
``estimatePeriodPrevalence()`` with every cohort as outcome. We do the same, all in SQL:

* :mod:`site_agent.diagnostics.denominators` - the denominator cohorts (a per-connection TEMP
  table) and their attrition;
* :mod:`site_agent.diagnostics.incidence` - ``incidence`` + ``incidence_attrition``;
* :mod:`site_agent.diagnostics.prevalence` - ``prevalence`` (point and period) +
  ``prevalence_attrition``.

Deviations from PhenotypeR: days of prior observation ``0`` *and* ``365`` (PhenotypeR uses
0 only), no sampling of the population (``populationSample``), point prevalence is added,
and the study period is the CDM's whole observation range unless ``study_start``/
``study_end`` are set in the parameters.
"""

from __future__ import annotations

from site_agent.diagnostics.base import Diagnostic
from site_agent.diagnostics.incidence import INCIDENCE_PARAMS, run_incidence
from site_agent.diagnostics.prevalence import PREVALENCE_PARAMS, run_prevalence

DIAGNOSTICS: list[Diagnostic] = [
    Diagnostic(name="incidence", scope="cohort", result_types=("incidence", "incidence_attrition"),
               run=run_incidence, params=dict(INCIDENCE_PARAMS)),
    Diagnostic(name="prevalence", scope="cohort", result_types=("prevalence", "prevalence_attrition"),
               run=run_prevalence, params=dict(PREVALENCE_PARAMS)),
]
