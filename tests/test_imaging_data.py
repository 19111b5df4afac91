"""Mammography data at a site: DICOM round trip, CMMD clinical table, synthetic archive,
bad files skipped with a count and named, YOLO labels, preprocessing (no torch needed)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

pytest.importorskip("pydicom")
pytest.importorskip("cv2")

from site_agent.imaging.clinical import MammographyDataError, read_clinical_table
from site_agent.imaging.dicom_io import (
    ImageMeta,
    open_archive,
    read_pixels,
    read_yolo_labels,
    write_mammogram,
)
from site_agent.imaging.preprocess import (
    crop_roi,
    denoise,
    normalize,
    resize,
    yolo_to_xyxy,
)
from site_agent.imaging.synth import synth_site


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("mammo") / "site_a"
    summary = synth_site(out, "site_a", seed=3, patients=6)
    return out, summary


def test_dicom_round_trip_and_monochrome1(tmp_path):
    import pydicom

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 4095, (40, 30)).astype(np.uint16)
    meta = ImageMeta(patient_id="P1", laterality="L", view="MLO", age=61, bits_stored=12)
    write_mammogram(tmp_path / "a.dcm", pixels, meta, study_uid="1.2.3", series_uid="1.2.3.4")
    ds = pydicom.dcmread(tmp_path / "a.dcm")
    assert (ds.PatientID, ds.ImageLaterality, ds.ViewPosition, ds.Modality, ds.PatientAge) == ("P1", "L", "MLO", "MG", "061Y")
    assert np.array_equal(ds.pixel_array, pixels)
    assert np.array_equal(read_pixels(tmp_path / "a.dcm"), pixels.astype(np.float32))
    inv = ImageMeta(patient_id="P1", laterality="L", view="CC", age=61, bits_stored=12, photometric="MONOCHROME1")
    write_mammogram(tmp_path / "b.dcm", pixels, inv, study_uid="1.2.3", series_uid="1.2.3.5")
    assert np.array_equal(read_pixels(tmp_path / "b.dcm"), 4095.0 - pixels)  # bright = dense again


def test_synthetic_site_matches_its_clinical_table_and_truth(site):
    root, summary = site
    rows = list(csv.DictReader((root / "clinical.csv").open()))
    assert list(rows[0])[:7] == ["ID1", "LeftRight", "Age", "number", "abnormality", "classification", "subtype"]
    records = read_clinical_table(root / "clinical.csv")
    assert len(records) == summary.breasts == len(rows)
    assert sum(r.malignant for r in records.values()) == summary.malignant
    assert all((r.subtype is None) == (not r.malignant) for r in records.values())
    archive = open_archive(root)
    assert len(archive.images) == 2 * summary.breasts and not archive.skipped
    for ref in archive.images:  # tags match the table row; CC and MLO of every breast
        assert ref.record.key in records and ref.view in ("CC", "MLO")
    views = {}
    for ref in archive.images:
        views.setdefault(ref.record.key, set()).add(ref.view)
    assert all(v == {"CC", "MLO"} for v in views.values())
    truth = json.loads((root / "synth_truth.json").read_text())
    assert truth["images"] == len(archive.images)


def test_synth_is_deterministic_and_sites_differ(tmp_path):
    a = synth_site(tmp_path / "a", "site_b", seed=5, patients=2)
    b = synth_site(tmp_path / "b", "site_b", seed=5, patients=2)
    assert a == b
    assert (tmp_path / "a" / "clinical.csv").read_bytes() == (tmp_path / "b" / "clinical.csv").read_bytes()
    pa = sorted((tmp_path / "a" / "dicom").rglob("*.dcm"))
    pb = sorted((tmp_path / "b" / "dicom").rglob("*.dcm"))
    assert [p.read_bytes() for p in pa] == [p.read_bytes() for p in pb]
    c = synth_site(tmp_path / "c", "site_c", seed=5, patients=2)
    assert c.scanner != a.scanner  # per-site scanner model


def test_yolo_labels_frame_the_lesion(site):
    root, _ = site
    refs = open_archive(root).images
    brighter = 0
    for ref in refs:
        assert ref.boxes is not None and len(ref.boxes) == 1
        cls, cx, cy, w, h = ref.boxes[0]
        assert cls == 0 and 0 < w < 0.5 and 0 < h < 0.5
        assert 0 <= cx - w / 2 and cx + w / 2 <= 1 and 0 <= cy - h / 2 and cy + h / 2 <= 1
        img = normalize(read_pixels(ref.path))
        x0, y0, x1, y1 = (int(round(v)) for v in yolo_to_xyxy(ref.boxes[0], *img.shape))
        m = (x1 - x0) // 2 + 1  # a ring of half the box's width around it: the local background
        ya, xa = max(0, y0 - m), max(0, x0 - m)
        ring = img[ya:y1 + m + 1, xa:x1 + m + 1].copy()
        ring[y0 - ya:y1 - ya + 1, x0 - xa:x1 - xa + 1] = np.nan
        brighter += np.percentile(img[y0:y1 + 1, x0:x1 + 1], 95) > np.nanpercentile(ring, 95)
    # lesions are denser than their surroundings (a few benign ones are subtle by design)
    assert brighter >= 0.9 * len(refs)


def test_yolo_label_format_errors(tmp_path):
    good = tmp_path / "g.txt"
    good.write_text("0 0.5 0.5 0.1 0.2\n\n")
    assert read_yolo_labels(good) == ((0, 0.5, 0.5, 0.1, 0.2),)
    for text in ("0 0.5 0.5 0.1\n", "0 1.5 0.5 0.1 0.1\n", "x 0.5 0.5 0.1 0.1\n"):
        good.write_text(text)
        with pytest.raises(MammographyDataError, match="g.txt line 1"):
            read_yolo_labels(good)


def test_corrupt_and_inconsistent_files_are_skipped_named_and_counted(site, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(site[0], root)
    files = sorted((root / "dicom").rglob("*.dcm"))
    files[0].write_bytes(b"not a dicom file at all")  # unreadable
    data = files[1].read_bytes()
    files[1].write_bytes(data[: len(data) // 2])  # truncated pixel data
    stray = root / "dicom" / "X" / "1-1.dcm"  # a patient the clinical table does not know
    stray.parent.mkdir()
    meta = ImageMeta(patient_id="NOBODY", laterality="L", view="CC", age=50)
    write_mammogram(stray, np.zeros((8, 8), np.uint16), meta, study_uid="1.2", series_uid="1.2.1")
    archive = open_archive(root)
    assert len(archive.images) == len(files) - 2
    assert len(archive.skipped) == 3
    joined = "\n".join(archive.skipped)
    assert files[0].relative_to(root).as_posix() in joined and files[1].relative_to(root).as_posix() in joined
    assert "NOBODY L is not in the clinical table" in joined
    assert "skipped 3 file(s)" in archive.summary()


def test_clinical_table_errors_name_file_and_line(tmp_path):
    path = tmp_path / "clinical.csv"
    head = "ID1,LeftRight,Age,number,abnormality,classification,subtype\n"
    path.write_text(head + "P1,L,50,2,mass,Benign,Luminal A\n")
    with pytest.raises(MammographyDataError, match="line 2.*benign breast has no molecular subtype"):
        read_clinical_table(path)
    path.write_text(head + "P1,X,50,2,mass,Benign,\n")
    with pytest.raises(MammographyDataError, match="line 2: LeftRight"):
        read_clinical_table(path)
    path.write_text(head + "P1,L,50,2,mass,Malignant,luminal b\nP1,L,51,2,mass,Benign,\n")
    with pytest.raises(MammographyDataError, match="line 3: breast P1 L is listed twice"):
        read_clinical_table(path)
    path.write_text("ID1,Age\nP1,50\n")
    with pytest.raises(MammographyDataError, match="lacks column"):
        read_clinical_table(path)
    with pytest.raises(MammographyDataError, match="not found"):
        open_archive(tmp_path / "missing")


def test_preprocessing_against_numpy_and_scipy():
    from scipy import ndimage

    rng = np.random.default_rng(1)
    img = np.zeros((50, 40), np.float32)
    img[10:40, 5:35] = rng.uniform(1000, 3000, (30, 30))
    out = normalize(img, 2.0, 98.0)
    lo, hi = np.percentile(img[10:40, 5:35], [2.0, 98.0])  # the breast only, background excluded
    expect = np.clip((img - lo) / (hi - lo), 0, 1)
    expect[img == 0] = 0
    assert np.allclose(out, expect, atol=1e-5)
    noisy = rng.normal(0, 1, (64, 64)).astype(np.float32)
    assert np.allclose(denoise(noisy, 1.0), ndimage.gaussian_filter(noisy, 1.0))
    assert denoise(noisy, 1.0).std() < 0.5 * noisy.std()
    assert resize(img, 25, 20).shape == (25, 20)
    ramp = np.tile(np.arange(100, dtype=np.float32), (100, 1))
    crop = crop_roi(ramp, (40, 40, 60, 60), 30, context=1.5)  # 30x30 window centred on x = 50
    assert crop.shape == (30, 30) and abs(crop.mean() - 49.5) < 0.6
    edge = crop_roi(ramp, (0, 0, 10, 10), 24, context=2.4)  # half outside the image: air (zero) there
    assert edge[:, :5].max() == 0 and edge[-1, -1] > 0


def test_run_defaults_follow_the_seed_study_and_epochs_cap_every_stage():
    from site_agent.imaging.pipeline import MammoConfig

    gpu = MammoConfig.for_device("cuda")
    assert (gpu.backbone, gpu.optimizer, gpu.lr, gpu.batch_size, gpu.cls_epochs) == ("resnet50", "sgd", 1e-4, 32, 100)
    cpu = MammoConfig.for_device("cpu", 5)
    assert (cpu.det_epochs, cpu.cls_epochs) == (5, 5) and cpu.roi_size < gpu.roi_size
    assert MammoConfig.for_device("cpu", 500).cls_epochs == MammoConfig.for_device("cpu").cls_epochs


def test_view_comes_from_view_code_sequence_as_in_cmmd(tmp_path):
    import pydicom
    from pydicom.dataset import Dataset

    from site_agent.imaging.dicom_io import view_of

    pixels = np.zeros((8, 8), np.uint16)
    write_mammogram(tmp_path / "a.dcm", pixels, ImageMeta(patient_id="D1-0001", laterality="R", view="CC", age=50),
                    study_uid="1.2.3", series_uid="1.2.3.9")
    ds = pydicom.dcmread(tmp_path / "a.dcm")
    del ds.ViewPosition  # CMMD leaves ViewPosition empty and codes the view
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "R-10226", "SRT", "medio-lateral oblique"
    ds.ViewCodeSequence = [code]
    assert view_of(ds) == "MLO"
    code.CodeValue, code.CodeMeaning = "", "cranio-caudal"
    assert view_of(ds) == "CC"
    ds.ViewCodeSequence = []
    ds.ViewPosition = "MLO"
    assert view_of(ds) == "MLO"  # the fallback
    del ds.ViewPosition
    assert view_of(ds) == "?"


def _as_cmmd_xlsx(csv_path, xlsx_path):
    """The clinical table as CMMD publishes it: an .xlsx sheet, ints as numbers, NaN as empty."""
    import openpyxl

    rows = list(csv.DictReader(csv_path.open()))
    wb = openpyxl.Workbook()
    ws = wb.active
    cols = ["ID1", "LeftRight", "Age", "number", "abnormality", "classification", "subtype"]
    ws.append(cols)
    for r in rows:
        ws.append([int(r[c]) if c in ("Age", "number") else (r[c] or None) for c in cols])
    wb.save(xlsx_path)
    return rows


def test_cmmd_spreadsheet_read_as_published(site, tmp_path):
    root, _ = site
    rows = _as_cmmd_xlsx(root / "clinical.csv", tmp_path / "CMMD_clinicaldata_revision.xlsx")
    from_xlsx = read_clinical_table(tmp_path / "CMMD_clinicaldata_revision.xlsx")
    from_csv = read_clinical_table(root / "clinical.csv")
    assert len(from_xlsx) == len(rows)
    for key, rec in from_csv.items():
        assert from_xlsx[key].model_dump(exclude={"person_id"}) == rec.model_dump(exclude={"person_id"})
    (tmp_path / "broken.xlsx").write_bytes(b"PK not really a workbook")
    with pytest.raises(MammographyDataError, match="cannot read clinical spreadsheet"):
        read_clinical_table(tmp_path / "broken.xlsx")


def test_images_are_streamed_not_held(site):
    from site_agent.imaging.pipeline import MammoConfig, load_site

    root, _ = site
    s = load_site(root, MammoConfig(backbone="tiny", roi_size=32))
    assert s.images.reads == 0  # nothing decoded by loading the site
    s.images.cache = 3
    rois = s.rois("train")
    for roi in rois:
        roi.image.astype(np.float32)
    assert len(s.images._lru) <= 3 and s.images.reads >= len(rois)
