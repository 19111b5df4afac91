"""The CMMD-layout clinical table: one row per breast (patient id + laterality).

The Chinese Mammography Database (CMMD) ships ``CMMD_clinicaldata_revision`` with the
columns ``ID1, LeftRight, Age, number, abnormality, classification, subtype``; we read and
write the same columns as CSV, plus an optional ``person_id`` linking the patient to the
site's OMOP ``person`` table. The published spreadsheet itself
(``CMMD_clinicaldata_revision.xlsx``, first sheet, header in the first row) is read as is
through openpyxl (the ``train`` extra). Values are checked with pydantic; a bad row is one
:class:`MammographyDataError` line naming the file, the row and the field.
"""

from __future__ import annotations

import csv
import io
from enum import Enum
from pathlib import Path

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from optima_common.errors import MammographyDataError, validation_summary
from optima_common.fileio import write_atomic

CLINICAL_COLUMNS = ("ID1", "LeftRight", "Age", "number", "abnormality", "classification", "subtype")
SUBTYPES = ("Luminal A", "Luminal B", "HER2-enriched", "triple negative")
CLASSES = ("Benign", "Malignant")


class Abnormality(str, Enum):
    calcification = "calcification"
    mass = "mass"
    both = "both"


class BreastRecord(BaseModel):
    """One CMMD clinical row: a breast of a patient, its finding and (if malignant) subtype."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    patient_id: str = Field(min_length=1, alias="ID1")
    laterality: str = Field(alias="LeftRight")
    age: int = Field(ge=10, le=120, alias="Age")
    number: int = Field(ge=1, le=16, alias="number")  # images of this breast
    abnormality: Abnormality
    classification: str
    subtype: str | None = None
    person_id: int | None = None

    @field_validator("laterality")
    @classmethod
    def _side(cls, v: str) -> str:
        if v not in ("L", "R"):
            raise ValueError("LeftRight must be L or R")
        return v

    @field_validator("classification")
    @classmethod
    def _cls(cls, v: str) -> str:
        norm = v.strip().capitalize()
        if norm not in CLASSES:
            raise ValueError(f"classification must be Benign or Malignant, not {v!r}")
        return norm

    @field_validator("subtype", mode="before")
    @classmethod
    def _subtype(cls, v):
        if v is None or (isinstance(v, str) and v.strip() in ("", "NA", "nan")):
            return None
        for s in SUBTYPES:  # CMMD spells them with varying case
            if str(v).strip().lower() == s.lower():
                return s
        raise ValueError(f"subtype must be one of {', '.join(SUBTYPES)}, not {v!r}")

    @field_validator("person_id", mode="before")
    @classmethod
    def _pid(cls, v):
        return None if v in (None, "", "NA") else v

    @model_validator(mode="after")
    def _consistent(self):
        if self.classification == "Benign" and self.subtype is not None:
            raise ValueError("a benign breast has no molecular subtype")
        return self

    @property
    def key(self) -> tuple[str, str]:
        return (self.patient_id, self.laterality)

    @property
    def malignant(self) -> bool:
        return self.classification == "Malignant"

    @property
    def subtype_index(self) -> int | None:
        return None if self.subtype is None else SUBTYPES.index(self.subtype)

    def row(self) -> dict:
        return {"ID1": self.patient_id, "LeftRight": self.laterality, "Age": self.age, "number": self.number,
                "abnormality": self.abnormality.value, "classification": self.classification,
                "subtype": self.subtype or "", "person_id": "" if self.person_id is None else self.person_id}


CLINICAL_FILES = ("clinical.csv", "CMMD_clinicaldata_revision.xlsx", "clinical.xlsx")


def find_clinical_table(root: Path) -> Path:
    """The site folder's clinical table: clinical.csv, else CMMD's spreadsheet as published."""
    for name in CLINICAL_FILES:
        if (Path(root) / name).is_file():
            return Path(root) / name
    return Path(root) / CLINICAL_FILES[0]


def _xlsx_rows(path: Path) -> tuple[list[str], list[dict]]:
    try:
        import openpyxl
    except ImportError:
        raise MammographyDataError(f"cannot read {path}: openpyxl is not installed",
                                   hint="pip install openpyxl (in the train extra), or save the sheet as clinical.csv") from None
    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
        values = list(wb.worksheets[0].iter_rows(values_only=True))
        wb.close()
    except Exception as exc:  # zipfile/openpyxl raise many types for a broken workbook
        raise MammographyDataError(f"cannot read clinical spreadsheet {path}: {type(exc).__name__}") from exc
    if not values:
        return [], []
    header = [str(h).strip() if h is not None else "" for h in values[0]]

    def cell(v):
        if v is None:
            return ""
        if isinstance(v, float) and v.is_integer():
            return str(int(v))
        return str(v).strip()

    rows = [{h: cell(v) for h, v in zip(header, row) if h} for row in values[1:]
            if any(v is not None and str(v).strip() for v in row)]
    return header, rows


def read_clinical_table(path: str | Path) -> dict[tuple[str, str], BreastRecord]:
    """Rows keyed by (patient id, laterality); any bad row or duplicate breast is an error.
    ``.xlsx``: CMMD's published spreadsheet; anything else: CSV."""
    path = Path(path)
    if not path.is_file():
        raise MammographyDataError(f"clinical table {path} not found",
                                   hint="a site folder holds clinical.csv or CMMD_clinicaldata_revision.xlsx "
                                   "in the CMMD layout")
    if path.suffix.lower() == ".xlsx":
        fieldnames, records = _xlsx_rows(path)
    else:
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise MammographyDataError(f"cannot read clinical table {path}: {exc}") from exc
        reader = csv.DictReader(io.StringIO(text))
        fieldnames, records = list(reader.fieldnames or []), list(reader)
    missing = [c for c in CLINICAL_COLUMNS if c not in fieldnames]
    if missing:
        raise MammographyDataError(f"clinical table {path} lacks column(s) {', '.join(missing)}",
                                   hint=f"expected the CMMD columns {', '.join(CLINICAL_COLUMNS)}")
    rows: dict[tuple[str, str], BreastRecord] = {}
    for line, raw in enumerate(records, start=2):
        data = {k: v for k, v in raw.items() if k in (*CLINICAL_COLUMNS, "person_id")}
        try:
            rec = BreastRecord.model_validate(data)
        except ValidationError as exc:
            raise MammographyDataError(f"clinical table {path} line {line}: {validation_summary(exc)}") from exc
        if rec.key in rows:
            raise MammographyDataError(f"clinical table {path} line {line}: breast {rec.patient_id} "
                                       f"{rec.laterality} is listed twice")
        rows[rec.key] = rec
    if not rows:
        raise MammographyDataError(f"clinical table {path} has no rows")
    return rows


def write_clinical_table(path: str | Path, records: list[BreastRecord]) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*CLINICAL_COLUMNS, "person_id"], lineterminator="\n")
    writer.writeheader()
    for rec in records:
        writer.writerow(rec.row())
    return write_atomic(path, buf.getvalue().encode())
