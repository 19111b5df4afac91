"""Pathology data: GeoJSON parsing, labelling by overlap, patient-level splits, synthetic slides
(read back through tiffslide, labels against the generator's own raster), tissue detection."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw
from shapely.geometry import Polygon, box

from optima_common.errors import PathologyDataError
from site_agent.pathology import CLASSES
from site_agent.pathology.annotations import Annotation, load_geojson, parse_geojson
from site_agent.pathology.splits import patient_splits, read_slide_table, split_counts
from site_agent.pathology.tiling import TilingParams, class_overlaps, tile_slide


def _feature(coords, cls):
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [coords]},
            "properties": {"objectType": "annotation", "classification": cls}}


def test_geojson_qupath_forms_and_unknown_classes(tmp_path):
    sq = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]
    data = {"type": "FeatureCollection", "features": [
        _feature(sq, {"name": "Tumor", "color": [200, 0, 0]}),
        _feature(sq, "Stroma"),  # older exports: classification as a string
        _feature(sq, {"name": "Pen marking"}),  # not one of the 8 classes: skipped
    ]}
    anns, skipped = parse_geojson(data)
    assert [a.label for a in anns] == ["Tumor", "Stroma"] and skipped == 1
    assert anns[0].geometry.area == 100
    (tmp_path / "a.geojson").write_text(json.dumps(data["features"]))  # bare list of features
    assert len(load_geojson(tmp_path / "a.geojson")) == 2
    (tmp_path / "bad.geojson").write_text("{not json")
    with pytest.raises(PathologyDataError, match="not valid JSON"):
        load_geojson(tmp_path / "bad.geojson")
    with pytest.raises(PathologyDataError, match="no geometry"):
        parse_geojson([{"type": "Feature", "properties": {}}])


def test_overlap_fractions_and_labels():
    anns = [Annotation("Tumor", box(0, 0, 154, 256)),  # 60% of the first patch
            Annotation("Stroma", box(154, 0, 512, 256)),
            Annotation("Stroma", box(300, 0, 400, 256))]  # overlaps the other Stroma: not counted twice
    cover = class_overlaps((0, 0, 256, 256), anns)
    assert cover[CLASSES.index("Tumor")] == pytest.approx(154 / 256)
    assert cover[CLASSES.index("Stroma")] == pytest.approx(102 / 256)
    cover2 = class_overlaps((256, 0, 512, 256), anns)
    assert cover2[CLASSES.index("Stroma")] == pytest.approx(1.0)

    class FakeSlide:  # the geometry only: tiling needs no pixels once the tissue mask is given
        dimensions = (512, 256)

    patches = tile_slide(FakeSlide(), anns, TilingParams(min_tissue=0.0), mask=(np.ones((64, 128), bool), 4.0))
    assert [(p.x, CLASSES[p.label]) for p in patches] == [(0, "Tumor"), (256, "Stroma")]
    strict = tile_slide(FakeSlide(), anns, TilingParams(min_overlap=0.7, min_tissue=0.0),
                        mask=(np.ones((64, 128), bool), 4.0))
    assert [p.x for p in strict] == [256]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 10, 20, 100])
def test_patient_splits_never_share_a_patient(n):
    slides = [(f"s{i}", f"p{i % n}") for i in range(3 * n)]  # three slides per patient
    for seed in range(5):
        split = patient_splits([p for _, p in slides], seed=seed)
        assert set(split) == {f"p{i}" for i in range(n)}
        per_patient = {}
        for _, p in slides:
            per_patient.setdefault(p, set()).add(split[p])
        assert all(len(v) == 1 for v in per_patient.values())
        assert "train" in split.values()
    if n == 100:
        assert split_counts(100) == (70, 10, 15)
        assert sorted(split.values()).count("heldout") == 5


def test_slide_table_errors(tmp_path):
    with pytest.raises(PathologyDataError, match="slides.csv"):
        read_slide_table(tmp_path)
    (tmp_path / "slides.csv").write_text("slide_id,patient_id,slide,annotations\ns1,p1,missing.tiff,\n")
    with pytest.raises(PathologyDataError, match="slide file not found"):
        read_slide_table(tmp_path)
    (tmp_path / "slides.csv").write_text("a,b\n1,2\n")
    with pytest.raises(PathologyDataError, match="must have the columns"):
        read_slide_table(tmp_path)


@pytest.fixture(scope="module")
def tiny_site(tmp_path_factory):
    from site_agent.pathology.synth import generate_site

    out = tmp_path_factory.mktemp("site")
    generate_site(out, "site_t", 5, slides=4, width=1024, height=768)
    return out


def _raster(anns, w, h):
    """The generator's own rule: background everywhere, then each annotation painted in order."""
    img = Image.new("L", (w, h), CLASSES.index("Background"))
    draw = ImageDraw.Draw(img)
    for a in anns:
        for poly in getattr(a.geometry, "geoms", [a.geometry]):
            if isinstance(poly, Polygon):
                draw.polygon([(float(x), float(y)) for x, y in poly.exterior.coords], fill=CLASSES.index(a.label))
    return np.asarray(img)


def test_synthetic_site_reads_back_and_labels_match_the_raster(tiny_site):
    from site_agent.pathology.slides import Slide
    from site_agent.pathology.tissue import tissue_mask

    records = read_slide_table(tiny_site)
    assert len(records) == 4 and len({r.patient_id for r in records}) == 3
    truth = json.loads((tiny_site / "synth_truth.json").read_text())
    assert truth["profile"]["class_prior"] and abs(sum(truth["profile"]["class_prior"].values()) - 1) < 1e-3
    agree = total = 0
    for rec in records:
        with Slide(rec.slide) as slide:
            assert slide.dimensions == (1024, 768) and slide.level_downsamples == (1.0, 4.0, 16.0)
            anns = load_geojson(rec.annotations)
            raster = _raster(anns, 1024, 768)
            thumb, scale = slide.thumbnail(512)
            mask = tissue_mask(thumb)
            tissue = np.asarray(Image.fromarray((raster != CLASSES.index("Background")).astype(np.uint8))
                                .resize(mask.shape[::-1], Image.NEAREST)).astype(bool)
            iou = (mask & tissue).sum() / (mask | tissue).sum()
            assert iou > 0.85, f"tissue detection IoU {iou:.2f} on {rec.slide_id}"
            for p in tile_slide(slide, anns, TilingParams(), mask=(mask, scale)):
                window = raster[p.y:p.y + 256, p.x:p.x + 256]
                agree += int(np.bincount(window.ravel(), minlength=8).argmax() == p.label)
                total += 1
            patch = slide.read(256, 256, 128, downsample=2.0)  # level 0 read and resampled
            assert patch.shape == (128, 128, 3) and patch.dtype == np.uint8
    assert total > 10 and agree / total > 0.97


def test_patch_dataset_in_dataloader_workers(tiny_site):
    """Forked workers open their own slide handles (a shared handle corrupts JPEG tile reads)."""
    import torch

    from site_agent.pathology.slides import Slide
    from site_agent.pathology.tiling import PatchDataset

    rec = read_slide_table(tiny_site)[0]
    params = TilingParams(stride=32, min_tissue=0.0)  # many overlapping patches: interleaved reads
    with Slide(rec.slide) as slide:
        patches = tile_slide(slide, load_geojson(rec.annotations), params)
    assert len(patches) > 100
    ds = PatchDataset([rec.slide], patches, params, input_size=32, cache=False)
    direct = torch.stack([ds[i][0] for i in range(len(ds))])  # opens the handle in this process first
    loaded = torch.cat([x for x, _ in torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)])
    assert torch.equal(direct, loaded)


def test_patches_at_a_fixed_physical_resolution_across_20x_and_40x(tmp_path):
    """The same tissue scanned at 0.5 um/px (20x) and 0.25 um/px (40x): with mpp=0.5 both give
    patches of the same physical field and content; the slide's mpp comes from its properties."""
    import tifffile
    from PIL import Image

    from optima_common.errors import PathologyDataError
    from site_agent.pathology.slides import Slide
    from site_agent.pathology.synth import write_pyramid
    from site_agent.pathology.tiling import (
        Patch,
        PatchDataset,
        TilingParams,
        resolve_params,
    )

    rng = np.random.default_rng(0)
    small = np.asarray(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).resize((512, 512),
                                                                                                Image.BICUBIC))
    big = np.asarray(Image.fromarray(small).resize((1024, 1024), Image.BICUBIC))
    write_pyramid(small, tmp_path / "x20.tiff", mpp=0.5)
    write_pyramid(big, tmp_path / "x40.tiff", mpp=0.25)
    with Slide(tmp_path / "x20.tiff") as a, Slide(tmp_path / "x40.tiff") as b:
        assert a.mpp == pytest.approx(0.5) and b.mpp == pytest.approx(0.25)
        params = TilingParams(size=64, mpp=0.5)
        assert resolve_params(params, a).downsample == pytest.approx(1.0)
        assert resolve_params(params, b).downsample == pytest.approx(2.0)
    patches = [Patch(0, 128, 192, 1, 1.0, 1.0), Patch(1, 256, 384, 1, 1.0, 1.0)]  # one place, level-0 coords
    ds = PatchDataset([tmp_path / "x20.tiff", tmp_path / "x40.tiff"], patches, TilingParams(size=64, mpp=0.5),
                      input_size=64, cache=False)
    pa, pb = ds.image(0).astype(float), ds.image(1).astype(float)
    assert np.abs(pa - pb).mean() < 12  # same field, same scale (JPEG and resampling differ a little)
    fixed = PatchDataset([tmp_path / "x20.tiff", tmp_path / "x40.tiff"], patches, TilingParams(size=64),
                         input_size=64, cache=False)
    assert np.abs(fixed.image(0).astype(float) - fixed.image(1).astype(float)).mean() > 2 * np.abs(pa - pb).mean()
    tifffile.imwrite(tmp_path / "nompp.tiff", small, tile=(256, 256), photometric="rgb")
    with Slide(tmp_path / "nompp.tiff") as c, pytest.raises(PathologyDataError, match="records no microns per pixel"):
        resolve_params(TilingParams(size=64, mpp=0.5), c)


def test_synthetic_slides_vary_per_slide_and_classes_overlap():
    from shapely.geometry import box as sbox

    from site_agent.pathology.synth import render_slide, site_profile

    profile = site_profile("alpha", 1)
    layout = [Annotation("Stroma", sbox(0, 0, 512, 512))]

    def mean_colour(seed, vary):
        rng = np.random.default_rng(seed)
        return render_slide(rng, layout, profile, 512, 512, vary=vary).reshape(-1, 3).mean(0)

    fixed = np.std([mean_colour(s, False) for s in range(4)], axis=0).mean()
    varied = np.std([mean_colour(s, True) for s in range(4)], axis=0).mean()
    assert varied > 2 * fixed and varied > 3.0  # staining batch and scanner differ slide to slide


@pytest.mark.parametrize("seed", range(6))
def test_patient_splits_stratified_over_label_sets(seed):
    """A rare class (two or three patients of 60) reaches the test split, every class reaches
    train, split sizes stay those of split_counts; an unstratified split misses the rare class."""
    rng = np.random.default_rng(seed)
    patients = [f"p{i:02d}" for i in range(60)]
    labels = {p: set(rng.choice([0, 2, 4, 5, 6, 7], size=3, replace=False).tolist()) for p in patients}
    rare = {1: rng.choice(60, 2, replace=False), 3: rng.choice(60, 3, replace=False)}
    for c, who in rare.items():
        for k in who:
            labels[patients[k]].add(c)
    split = patient_splits(patients, seed=seed, labels=labels)
    sizes = [sum(v == s for v in split.values()) for s in ("train", "val", "test")]
    assert tuple(sizes) == split_counts(60)
    for s in ("train", "test"):
        assert set().union(*(labels[p] for p in patients if split[p] == s)) == set(range(8)), s
    assert 3 in set().union(*(labels[p] for p in patients if split[p] == "val"))
    misses = 0  # the plain split (no labels) loses a rare class from test for most seeds
    for s2 in range(20):
        plain = patient_splits(patients, seed=s2)
        misses += not {1, 3} <= set().union(*(labels[p] for p in patients if plain[p] == "test"))
    assert misses >= 10
