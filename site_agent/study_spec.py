"""Study specs: what a network study runs, validated before anything touches a database.

A spec names cohorts and concept sets *by catalog name*; the catalog pins each file by
sha256, so a spec cannot silently run an altered definition.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from optima_common.errors import ConfigError
from optima_common.fileio import read_document, validate_document
from site_agent.cohorts.definitions import (
    CohortDefinition,
    collect_definitions,
    file_sha256,
    load_catalog,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StudyCohorts(_Strict):
    target: str
    progression: str
    death: str


class TreatmentPatternsSpec(_Strict):
    combination_window_days: int = Field(30, ge=0, le=365)
    era_gap_days: int = Field(30, ge=0, le=365)
    max_lines: int = Field(5, ge=1, le=10)


# quarterly (3 x 30.4375 days) to 5 years, then yearly to 10 years: holds every horizon of
# the seed study; with the actuarial estimator the released survival at 1/2/5 years is within
# 0.005 of the exact-time KM on R's public datasets (benchmarks/bench_survival_grid.py)
DEFAULT_GRID = (0, 91, 183, 274, 365, 457, 548, 639, 730, 822, 913, 1004, 1096, 1187, 1278, 1370, 1461,
                1552, 1644, 1735, 1826, 2192, 2557, 2922, 3287, 3652)


class SurvivalSpec(_Strict):
    """The time grid every site uses for its risk tables (days, starting at 0) and the estimator.

    A site releases a curve only up to the first interval with a small count, so intervals
    must hold several events at a typical site; a coarser grid biases the estimate (censoring
    inside an interval), which the actuarial estimator corrects to first order. Every summary
    horizon must be a grid point: a survival between or after grid points is not estimable
    from the released table.
    """

    grid_days: tuple[int, ...] = DEFAULT_GRID
    summary_years: tuple[int, ...] = (1, 2, 5)
    estimator: Literal["actuarial", "kaplan_meier"] = "actuarial"

    @field_validator("grid_days")
    @classmethod
    def _grid(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if len(v) < 2 or v[0] != 0 or any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError("grid_days must start at 0 and increase strictly")
        return v

    @model_validator(mode="after")
    def _horizons_on_grid(self) -> SurvivalSpec:
        for years in self.summary_years:
            days = self.horizon_days(years)
            if days >= self.grid_days[-1]:
                raise ValueError(f"summary horizon {years} years ({days} days) is not before the grid's last "
                                 f"point ({self.grid_days[-1]} days; follow-up beyond it is censored there)")
            if days not in self.grid_days:
                raise ValueError(f"summary horizon {years} years ({days} days) is not a grid point")
        return self

    @staticmethod
    def horizon_days(years: float) -> int:
        return int(round(years * 365.25))

    @property
    def horizons(self) -> list[int]:
        return [self.horizon_days(y) for y in self.summary_years]

    @property
    def grid(self) -> list[int]:
        return list(self.grid_days)


class CoxSpec(_Strict):
    """Site-stratified Cox: hazard ratios of the first treatment line, adjusted for age, sex, stage.

    The first line's events are mapped to a class; a line mixing classes is named by its
    classes joined with '+' in the order given here (e.g. "chemotherapy+radiotherapy").
    ``levels`` fixes every column of the design matrix, identical at all sites; the first
    level is the reference.
    """

    treatment_classes: dict[str, tuple[str, ...]] = {
        "surgery": ("lobectomy", "sleeve_resection", "pneumonectomy", "lung_excision"),
        "chemotherapy": ("carboplatin", "cisplatin", "etoposide"),
        "radiotherapy": ("stereotactic_rt", "conformal_rt", "imrt"),
    }
    levels: dict[str, tuple[str, ...]] = {
        "first_line": ("chemotherapy", "surgery", "chemotherapy+radiotherapy", "radiotherapy",
                       "surgery+chemotherapy", "other", "none"),
        "sex": ("Female", "Male"),
        "stage": ("I", "II"),
    }
    covariates: tuple[str, ...] = ("first_line", "age", "sex", "stage")
    age_scale_years: float = 10.0
    max_iterations: int = Field(40, ge=1, le=100)
    min_events: int = Field(10, ge=1)


class StudySpec(_Strict):
    study_id: str = Field(pattern=r"^[a-z0-9_]+$")
    version: str
    title: str
    description: str = ""
    catalog: str = "../catalog.json"
    min_cell_count: int = Field(5, ge=0)
    # the protocol's age rule, applied on the diagnosis (index) date in completed years from the
    # full date of birth; the target cohort's Circe rule compares years only
    min_age_years: int = Field(18, ge=0, le=150)
    cohorts: StudyCohorts
    # concept sets that split the target by stage: "I", "II", and TNM "T3"/"N1" (stage II when
    # no stage group is recorded but T3 or N1 is)
    stage_concept_sets: dict[str, str] = Field(default_factory=dict)
    treatment_events: dict[str, str] = Field(min_length=1)
    treatment_patterns: TreatmentPatternsSpec = TreatmentPatternsSpec()
    outcome_horizons_days: dict[str, tuple[str, int]] = Field(min_length=1)
    survival: SurvivalSpec = SurvivalSpec()
    cox: CoxSpec = CoxSpec()

    @field_validator("outcome_horizons_days")
    @classmethod
    def _horizons(cls, v: dict[str, tuple[str, int]]) -> dict[str, tuple[str, int]]:
        for label, (kind, days) in v.items():
            if kind not in ("within", "after") or days <= 0:
                raise ValueError(f"horizon {label!r}: expected ['within'|'after', positive days]")
        return v

    @model_validator(mode="after")
    def _event_names(self) -> StudySpec:
        bad = [n for n in self.treatment_events if not n.replace("_", "").isalnum()]
        if bad:
            raise ValueError(f"treatment event names must be letters, digits and _: {bad}")
        return self


class LoadedStudy(BaseModel):
    """A validated spec with its catalog resolved: definitions and concept-set expressions."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)
    spec: StudySpec
    path: Path
    sha256: str
    target: CohortDefinition
    progression: CohortDefinition
    death: CohortDefinition
    event_concept_sets: dict[str, list[dict]]  # event name -> ATLAS concept set items
    stage_concept_sets: dict[str, list[dict]]  # "I"/"II"/"T3"/"N1" -> items


def load_study(path: str | Path) -> LoadedStudy:
    path = Path(path).expanduser().resolve()
    doc = read_document(path, fmt="json", what="study spec", error=ConfigError)
    spec = validate_document(StudySpec, doc, path, what="study spec", error=ConfigError)
    catalog_path = (path.parent / spec.catalog).resolve()
    if not catalog_path.is_file():
        raise ConfigError(f"{path}: catalog {catalog_path} not found")
    entries = {e.name: e for e in load_catalog(catalog_path)}
    by_name = {d.cohort_name: d for d in collect_definitions([e.path for e in entries.values()])}
    missing = [n for n in spec.cohorts.model_dump().values() if n not in by_name]
    if missing:
        raise ConfigError(f"{path}: cohorts {missing} are not in the catalog {catalog_path}")
    sets = _catalog_concept_sets(catalog_path)
    unknown = sorted((set(spec.treatment_events.values()) | set(spec.stage_concept_sets.values())) - set(sets))
    if unknown:
        raise ConfigError(f"{path}: concept sets {unknown} are not in the catalog {catalog_path}")
    return LoadedStudy(
        spec=spec, path=path, sha256=file_sha256(path),
        target=by_name[spec.cohorts.target], progression=by_name[spec.cohorts.progression],
        death=by_name[spec.cohorts.death],
        event_concept_sets={event: sets[name] for event, name in spec.treatment_events.items()},
        stage_concept_sets={label: sets[name] for label, name in spec.stage_concept_sets.items()},
    )


def _catalog_concept_sets(catalog_path: Path) -> dict[str, list[dict]]:
    """Concept-set name -> items, each file checked against its catalog sha256."""
    doc = json.loads(catalog_path.read_text(encoding="utf-8"))
    out: dict[str, list[dict]] = {}
    for entry in doc.get("concept_sets", []):
        file = (catalog_path.parent / entry["path"]).resolve()
        if file_sha256(file) != entry["sha256"]:
            raise ConfigError(f"{file}: sha256 differs from the catalog", hint="restore the file or update the catalog")
        out[entry["name"]] = json.loads(file.read_text(encoding="utf-8"))["items"]
    return out
