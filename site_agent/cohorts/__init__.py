"""Cohorts from ATLAS/Circe JSON: discovery, SQL generation, instantiation, attrition."""

from site_agent.cohorts.attrition import AttritionStep, cohort_attrition
from site_agent.cohorts.build import CohortCount, build_cohorts, cohort_counts
from site_agent.cohorts.definitions import CohortDefinition, collect_definitions

__all__ = ["AttritionStep", "CohortCount", "CohortDefinition", "build_cohorts", "cohort_attrition",
           "cohort_counts", "collect_definitions"]
