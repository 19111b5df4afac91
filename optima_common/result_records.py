"""The typed rows a :class:`~optima_common.results.SummarisedResult` is built from in Python.

:meth:`SummarisedResult.from_records` validates each row of the long table with
:class:`ResultRecord` and each settings row with :class:`ResultSettings` (pydantic), before the
frame-level checks of :mod:`optima_common.results`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

OVERALL = "overall"

EstimateType = Literal["integer", "numeric", "percentage", "proportion", "character", "logical", "date"]


class ResultRecord(BaseModel):
    """One row of the long table, for building results from Python records."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    result_id: int = 1
    cdm_name: str
    group_name: str = OVERALL
    group_level: str = OVERALL
    strata_name: str = OVERALL
    strata_level: str = OVERALL
    variable_name: str
    variable_level: str | None = None
    estimate_name: str
    estimate_type: EstimateType
    estimate_value: str | None
    additional_name: str = OVERALL
    additional_level: str = OVERALL

    @field_validator("estimate_value", mode="before")
    @classmethod
    def _as_text(cls, v: Any) -> Any:
        return v if v is None or isinstance(v, str) else str(v)


class ResultSettings(BaseModel):
    """One settings row; extra settings are allowed and kept as strings."""

    model_config = ConfigDict(extra="allow")
    result_id: int
    result_type: str
    package_name: str
    package_version: str
    group: str | None = None
    strata: str | None = None
    additional: str | None = None
    min_cell_count: str = "0"

    @field_validator("min_cell_count", mode="before")
    @classmethod
    def _mcc_text(cls, v: Any) -> Any:
        return str(int(v)) if isinstance(v, int | float) and not isinstance(v, bool) else v
