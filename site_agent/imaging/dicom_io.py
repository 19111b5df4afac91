"""DICOM mammograms at a site: write (synthetic data), read, and index a whole archive.

A site folder holds ``clinical.csv`` (CMMD layout), ``dicom/**.dcm`` and, for detection
training, YOLO box files at ``labels/<same relative path>.txt``. Each image is matched to
its breast through the DICOM tags ``PatientID`` and ``ImageLaterality``; the view comes from
``ViewCodeSequence`` (where CMMD records it: SNOMED/SRT codes for cranio-caudal and
medio-lateral oblique), else ``ViewPosition``. The clinical table is ``clinical.csv`` or
CMMD's own ``CMMD_clinicaldata_revision.xlsx``. Lesion boxes are optional: CMMD ships none. A file that cannot be read, or whose tags do not
match the clinical table, is skipped, named in :attr:`Archive.skipped` and counted; the
caller reports the count (never silently).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from site_agent.imaging.clinical import (
    BreastRecord,
    MammographyDataError,
    find_clinical_table,
    read_clinical_table,
)

log = logging.getLogger(__name__)

DIGITAL_MAMMOGRAPHY_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"  # SOP class: DX mammography, for presentation
VIEWS = ("CC", "MLO")


@dataclass(frozen=True)
class ImageMeta:
    patient_id: str
    laterality: str
    view: str
    age: int
    manufacturer: str = "OPTIMA synthetic"
    pixel_spacing_mm: float = 0.1
    bits_stored: int = 12
    photometric: str = "MONOCHROME2"


@dataclass(frozen=True)
class MammogramRef:
    """One readable image matched to its clinical row (no pixels: read them on demand)."""

    path: Path
    rel: str  # path under dicom/, posix, stable across machines
    view: str
    record: BreastRecord
    boxes: tuple[tuple[int, float, float, float, float], ...] | None  # YOLO rows, None if no label file


@dataclass
class Archive:
    root: Path
    images: list[MammogramRef]
    records: dict[tuple[str, str], BreastRecord]
    skipped: list[str] = field(default_factory=list)  # "path: reason"

    def summary(self) -> str:
        s = f"{len(self.images)} images of {len({i.record.key for i in self.images})} breasts"
        return s + (f"; skipped {len(self.skipped)} file(s), first: {self.skipped[0]}" if self.skipped else "")


def write_mammogram(path: Path, pixels: np.ndarray, meta: ImageMeta, *, study_uid: str, series_uid: str) -> None:
    """A DX mammography DICOM file (uint16 pixels, explicit VR little endian)."""
    if pixels.dtype != np.uint16 or pixels.ndim != 2:
        raise ValueError("pixels must be a 2-D uint16 array")
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = DIGITAL_MAMMOGRAPHY_PRESENTATION
    fm.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[series_uid, meta.view])
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = fm
    ds.SOPClassUID = fm.MediaStorageSOPClassUID
    ds.SOPInstanceUID = fm.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.Modality = "MG"
    ds.PatientID = meta.patient_id
    ds.PatientName = meta.patient_id
    ds.PatientSex = "F"
    ds.PatientAge = f"{meta.age:03d}Y"
    ds.ImageLaterality = meta.laterality
    ds.ViewPosition = meta.view
    ds.Manufacturer = meta.manufacturer
    ds.StudyDate = dt.date(2012, 1, 1).strftime("%Y%m%d")
    ds.PixelSpacing = [meta.pixel_spacing_mm, meta.pixel_spacing_mm]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = meta.photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, meta.bits_stored, meta.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def read_pixels(path: Path) -> np.ndarray:
    """Pixels as float32 where bright = dense tissue (MONOCHROME1 is inverted)."""
    try:
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array.astype(np.float32)
    except Exception as exc:  # pydicom raises many types for truncated/corrupt files
        raise MammographyDataError(f"cannot read DICOM {path}: {type(exc).__name__}: {exc}") from exc
    if arr.ndim != 2:
        raise MammographyDataError(f"DICOM {path} is not a single grayscale frame (shape {arr.shape})")
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")) == "MONOCHROME1":
        arr = float(2 ** int(ds.get("BitsStored", 16)) - 1) - arr
    return arr


def read_yolo_labels(path: Path) -> tuple[tuple[int, float, float, float, float], ...]:
    """YOLO rows ``class cx cy w h`` (normalized to 0..1); a malformed line is an error."""
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            cls, *xywh = int(parts[0]), *map(float, parts[1:])
        except (ValueError, IndexError) as exc:
            raise MammographyDataError(f"YOLO label {path} line {n} is not 'class cx cy w h'") from exc
        if len(xywh) != 4 or not all(0.0 <= v <= 1.0 for v in xywh) or cls < 0:
            raise MammographyDataError(f"YOLO label {path} line {n}: need class and 4 values in 0..1")
        rows.append((cls, *xywh))
    return tuple(rows)


# ViewCodeSequence codes (DICOM CID 4014; SNOMED CT and the older SRT designators) and meanings
_VIEW_CODES = {"399162004": "CC", "R-10242": "CC", "399368009": "MLO", "R-10226": "MLO",
               "399260004": "ML", "R-10224": "ML", "399352003": "LM", "R-10228": "LM"}
_VIEW_MEANINGS = {"cranio-caudal": "CC", "medio-lateral oblique": "MLO", "medio-lateral": "ML",
                  "latero-medial": "LM"}


def view_of(ds) -> str:
    """The view (CC, MLO, ...) from ViewCodeSequence, else ViewPosition, else "?"."""
    seq = ds.get("ViewCodeSequence")
    if seq:
        item = seq[0]
        code = str(item.get("CodeValue", "")).strip()
        if code in _VIEW_CODES:
            return _VIEW_CODES[code]
        meaning = str(item.get("CodeMeaning", "")).strip().lower().replace("craniocaudal", "cranio-caudal")
        if meaning in _VIEW_MEANINGS:
            return _VIEW_MEANINGS[meaning]
    return str(ds.get("ViewPosition", "")).strip() or "?"


def _index_one(path: Path, root: Path, records) -> MammogramRef:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:
        raise MammographyDataError(f"unreadable DICOM ({type(exc).__name__}: {exc})") from exc
    pid, side = (str(ds.get(k, "")).strip() for k in ("PatientID", "ImageLaterality"))
    view = view_of(ds)
    if not pid or side not in ("L", "R"):
        raise MammographyDataError(f"PatientID/ImageLaterality missing (got {pid!r}/{side!r})")
    rec = records.get((pid, side))
    if rec is None:
        raise MammographyDataError(f"breast {pid} {side} is not in the clinical table")
    if not ds.get("Rows") or not ds.get("Columns"):
        raise MammographyDataError("no image size (Rows/Columns) in the header")
    rel = path.relative_to(root / "dicom").as_posix()
    label = (root / "labels" / rel).with_suffix(".txt")
    boxes = read_yolo_labels(label) if label.is_file() else None
    return MammogramRef(path=path, rel=rel, view=view, record=rec, boxes=boxes)


def open_archive(root: str | Path, *, check_pixels: bool = True) -> Archive:
    """Index a site folder; unreadable/inconsistent files are skipped and listed."""
    root = Path(root)
    if not root.is_dir():
        raise MammographyDataError(f"data folder {root} not found",
                                   hint="create one with: site-agent images synth mammography --out DIR")
    records = read_clinical_table(find_clinical_table(root))
    files = sorted((root / "dicom").rglob("*.dcm")) if (root / "dicom").is_dir() else []
    if not files:
        raise MammographyDataError(f"no .dcm files under {root / 'dicom'}",
                                   hint="a site folder holds clinical.csv and dicom/**/*.dcm")
    images, skipped = [], []
    for path in files:
        try:
            ref = _index_one(path, root, records)
            if check_pixels:
                read_pixels(path)  # a truncated pixel payload only shows when decoded
        except MammographyDataError as exc:
            msg = str(exc).replace(f"cannot read DICOM {path}: ", "")
            skipped.append(f"{path.relative_to(root).as_posix()}: {msg}")
            log.info("skipping %s: %s", path, msg)
            continue
        images.append(ref)
    if not images:
        raise MammographyDataError(f"none of the {len(files)} DICOM files under {root} could be used; "
                                   f"first problem: {skipped[0]}")
    return Archive(root=root, images=images, records=records, skipped=skipped)
