"""Synthetic CMMD-layout mammography sites: DICOM images, YOLO boxes, clinical table.

``site-agent images synth mammography --out DIR --site NAME --seed S [--patients N]``
writes ``DIR/clinical.csv``, ``DIR/dicom/<patient>/1-<n>.dcm`` (CC and MLO of each
breast), ``DIR/labels/<patient>/1-<n>.txt`` (one YOLO box, class 0 = lesion) and
``DIR/synth_truth.json`` (the scanner model and class counts). Sites differ on purpose
(non-IID): each site name fixes a scanner (image size, bit depth, gamma, noise, blur,
MONOCHROME1 vs 2, vendor) and a case mix (malignant share, subtype mix, age). The same
site, seed and patient count give byte-identical pixels and tables.
"""

from __future__ import annotations

import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np
from pydantic import BaseModel
from pydicom.uid import generate_uid
from scipy import ndimage

from optima_common.errors import ConfigError
from optima_common.fileio import write_atomic
from site_agent.imaging.clinical import SUBTYPES, BreastRecord, write_clinical_table
from site_agent.imaging.dicom_io import VIEWS, ImageMeta, write_mammogram
from site_agent.imaging.render import LesionSpec, breast_mask, render_lesion, tissue

VENDORS = ("Hologic-like", "GE-like", "Siemens-like", "Fuji-like")


class Scanner(BaseModel):
    vendor: str
    height: int
    width: int
    bits_stored: int
    gamma: float
    noise: float
    blur: float
    photometric: str
    pixel_spacing_mm: float


class CaseMix(BaseModel):
    malignant_share: float
    subtype_probs: list[float]
    mean_age: float


class SynthSummary(BaseModel):
    site: str
    seed: int
    patients: int
    breasts: int
    images: int
    malignant: int
    subtypes: dict[str, int]
    scanner: Scanner
    case_mix: CaseMix


def site_profile(site: str) -> tuple[Scanner, CaseMix]:
    """A site's scanner and case mix, fixed by its name (independent of the seed)."""
    rng = np.random.default_rng(zlib.crc32(site.encode()))
    h = int(rng.choice([384, 416, 448]))
    scanner = Scanner(vendor=str(rng.choice(VENDORS)), height=h, width=int(h * rng.uniform(0.72, 0.8)) // 8 * 8,
                      bits_stored=int(rng.choice([12, 14, 16])), gamma=float(rng.uniform(0.75, 1.3)),
                      noise=float(rng.uniform(0.008, 0.03)), blur=float(rng.uniform(0.0, 0.9)),
                      photometric="MONOCHROME1" if rng.random() < 0.3 else "MONOCHROME2",
                      pixel_spacing_mm=float(rng.choice([0.07, 0.085, 0.1])))
    probs = rng.dirichlet([2.0, 2.0, 2.0, 2.0])
    mix = CaseMix(malignant_share=float(rng.uniform(0.45, 0.7)), subtype_probs=[float(p) for p in probs],
                  mean_age=float(rng.uniform(46, 58)))
    return scanner, mix


def _sample_breasts(patients: int, site: str, mix: CaseMix, rng) -> list[BreastRecord]:
    prefix = "".join(c for c in site.upper() if c.isalnum())[:8] or "SITE"
    records = []
    for i in range(1, patients + 1):
        pid = f"{prefix}-{i:04d}"
        age = int(np.clip(rng.normal(mix.mean_age, 10), 25, 88))  # one age per patient, all breasts
        sides = ["L", "R"] if rng.random() < 0.15 else [str(rng.choice(["L", "R"]))]
        risk = float(np.clip(mix.malignant_share + 0.01 * (age - mix.mean_age), 0.05, 0.95))  # risk rises with age
        for side in sides:
            malignant = rng.random() < risk
            subtype = str(rng.choice(SUBTYPES, p=mix.subtype_probs)) if malignant else None
            abn = str(rng.choice(["calcification", "mass", "both"],
                                 p=[0.25, 0.5, 0.25] if malignant else [0.35, 0.5, 0.15]))
            if subtype == "HER2-enriched" and abn == "mass":
                abn = "both"  # HER2-enriched cancers usually come with calcifications
            records.append(BreastRecord(ID1=pid, LeftRight=side, Age=age, number=2,
                                        abnormality=abn, classification="Malignant" if malignant else "Benign",
                                        subtype=subtype))
    return records


def _lesion_center(mask: np.ndarray, muscle: np.ndarray, rng) -> tuple[float, float]:
    inside = ndimage.binary_erosion((mask > 0.99) & (muscle < 0.01), iterations=22)
    inside[:, : mask.shape[1] // 10] = False
    ys, xs = np.nonzero(inside)
    if len(ys) == 0:  # tiny breast: fall back to its centroid
        ys, xs = np.nonzero(mask > 0.5)
    k = int(rng.integers(len(ys)))
    return float(ys[k]), float(xs[k])


def render_view(rec: BreastRecord, view: str, scanner: Scanner, rng) -> tuple[np.ndarray, tuple]:
    """Detector pixels (uint16, as the site's scanner stores them) and the lesion box (x0, y0, x1, y1)."""
    h, w = scanner.height, scanner.width
    mask, muscle = breast_mask(h, w, view, rng)
    density = float(np.clip(1.2 - rec.age / 70 + rng.normal(0, 0.15), 0.1, 0.9))
    img = tissue(h, w, mask, density, rng) + 0.3 * muscle
    spec = LesionSpec(malignant=rec.malignant, subtype=rec.subtype, abnormality=rec.abnormality.value)
    box = render_lesion(img, mask, _lesion_center(mask, muscle, rng), spec, rng)
    if scanner.blur > 0:
        img = ndimage.gaussian_filter(img, scanner.blur)
    signal = np.clip(img / 1.3, 0, 1) ** scanner.gamma + rng.normal(0, scanner.noise, img.shape)
    top = 2 ** scanner.bits_stored - 1
    raw = np.clip(signal * top * 0.92 + top * 0.02, 0, top)
    if scanner.photometric == "MONOCHROME1":
        raw = top - raw
    if rec.laterality == "R":  # chest wall on the right for right breasts
        raw = raw[:, ::-1]
        x0, y0, x1, y1 = box
        box = (w - 1 - x1, y0, w - 1 - x0, y1)
    return raw.astype(np.uint16), box


def yolo_line(box: tuple, h: int, w: int, cls: int = 0) -> str:
    x0, y0, x1, y1 = box
    return f"{cls} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}\n"


def synth_site(out: str | Path, site: str, seed: int, patients: int = 80) -> SynthSummary:
    """Write a synthetic site folder; refuses a non-empty ``out`` (nothing half-written on failure)."""
    out = Path(out)
    if patients < 1 or patients > 100_000:
        raise ConfigError("--patients must be between 1 and 100000")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not an empty folder", hint="choose a new folder")
    scanner, mix = site_profile(site)
    rng = np.random.default_rng([seed, zlib.crc32(site.encode())])
    records = _sample_breasts(patients, site, mix, rng)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        counter: dict[str, int] = {}
        for rec in records:
            study, series = (generate_uid(entropy_srcs=[site, str(seed), rec.patient_id, rec.laterality, k])
                             for k in ("study", "series"))
            for view in VIEWS:
                pixels, box = render_view(rec, view, scanner, rng)
                counter[rec.patient_id] = n = counter.get(rec.patient_id, 0) + 1
                meta = ImageMeta(patient_id=rec.patient_id, laterality=rec.laterality, view=view, age=rec.age,
                                 manufacturer=scanner.vendor, pixel_spacing_mm=scanner.pixel_spacing_mm,
                                 bits_stored=scanner.bits_stored, photometric=scanner.photometric)
                write_mammogram(tmp / "dicom" / rec.patient_id / f"1-{n}.dcm", pixels, meta,
                                study_uid=study, series_uid=series)
                label = tmp / "labels" / rec.patient_id / f"1-{n}.txt"
                label.parent.mkdir(parents=True, exist_ok=True)
                label.write_text(yolo_line(box, *pixels.shape))
        write_clinical_table(tmp / "clinical.csv", records)
        mal = [r for r in records if r.malignant]
        summary = SynthSummary(site=site, seed=seed, patients=patients, breasts=len(records),
                               images=2 * len(records), malignant=len(mal),
                               subtypes={s: sum(r.subtype == s for r in mal) for s in SUBTYPES},
                               scanner=scanner, case_mix=mix)
        write_atomic(tmp / "synth_truth.json", summary.model_dump_json(indent=2).encode())
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def summary_line(s: SynthSummary) -> str:
    return (f"wrote synthetic mammography site {s.site} (seed {s.seed}): {s.patients} patients, {s.breasts} breasts, "
            f"{s.images} DICOM images ({s.malignant} malignant breasts; {s.scanner.vendor}, "
            f"{s.scanner.bits_stored}-bit {s.scanner.photometric})")
