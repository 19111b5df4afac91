"""Grad-CAM of a trained pathology model points at the annotated tissue of the patch's class.

A tiny CNN is trained on tiny synthetic slides (four tissue classes, per-slide stain and scanner
variation, blended textures) until it beats the majority class on slides it never saw; on those
slides' boundary patches (the class covers part of the patch) the pointing game of
:func:`tissue_pointing_game` must clear, by a margin, two baselines computed here independently
of it: chance (the share of the patch's heat-map pixels whose centres lie inside the class's
polygons, by shapely ``contains_xy``: where a uniformly random maximum lands) and a constant heat
map (its maximum is the first pixel). The same model before training must not clear chance.
Complements tests/test_pathology_pointing.py, which checks the game's geometry with oracle maps.
"""

from __future__ import annotations

from itertools import chain

import numpy as np
import pytest
import shapely
from shapely import union_all

from site_agent.pathology import CLASSES
from site_agent.pathology.annotations import load_geojson, write_geojson
from site_agent.pathology.dataset import load_site
from site_agent.pathology.pointing import tissue_pointing_game
from site_agent.pathology.synth import (
    render_slide,
    site_profile,
    slide_layout,
    write_pyramid,
)
from site_agent.pathology.tiling import TilingParams

torch = pytest.importorskip("torch")

KEEP = ("Tumor", "Stroma", "Adipose", "Necrosis")
SIDE, PATCH, INPUT = 512, 64, 32  # slide side, patch side (level 0), model input side
MARGIN = 0.12


def _slides(out, seed: int, n: int):
    profile = site_profile("expl", 0)
    profile = profile.model_copy(update={"class_prior": {c: float(c in KEEP) for c in profile.class_prior}})
    rng = np.random.default_rng(seed)
    rows = ["slide_id,patient_id,slide,annotations"]
    for i in range(n):
        anns = slide_layout(rng, profile, SIDE, SIDE)
        write_pyramid(render_slide(rng, anns, profile, SIDE, SIDE), out / "slides" / f"s{i}.tiff")
        write_geojson(anns, out / "annotations" / f"s{i}.geojson")
        rows.append(f"s{i},p{i},slides/s{i}.tiff,annotations/s{i}.geojson")
    (out / "slides.csv").write_text("\n".join(rows) + "\n")
    return load_site(out, TilingParams(size=PATCH), input_size=INPUT, seed=0)


def _inside(site, p) -> np.ndarray:
    """INPUT x INPUT booleans: is each heat-map pixel's centre inside the class's polygons."""
    geoms = [a.geometry for a in load_geojson(site.records[p.slide].annotations) if a.label == CLASSES[p.label]]
    centres = (np.arange(INPUT) + 0.5) / INPUT * PATCH
    xx, yy = np.meshgrid(p.x + centres, p.y + centres)
    return shapely.contains_xy(union_all(geoms), xx, yy)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from site_agent.training.loop import TrainConfig, fit, predict
    from site_agent.training.models import build_classifier

    root = tmp_path_factory.mktemp("expl")
    train, unseen = _slides(root / "train", 1, 16), _slides(root / "unseen", 2, 6)
    ref = unseen.datasets["train"]  # every patch of the unseen slides, whatever split they drew
    ds = type(ref)(ref.slide_paths, list(chain(*(d.patches for d in unseen.datasets.values()))), ref.params,
                   input_size=INPUT)
    torch.manual_seed(0)
    model = build_classifier("tiny", len(CLASSES))
    before = tissue_pointing_game(model, unseen, ds, max_patches=10_000)
    cfg = TrainConfig(epochs=5, batch_size=32, lr=3e-3, device="cpu", seed=0, patience=5,
                      bn_recalibration_batches=20)
    fit(model, train.datasets["train"], train.datasets["val"], cfg, root / "model.pt")
    pred = predict(model, ds, cfg)
    return {"site": unseen, "ds": ds, "model": model, "before": before, "pred": pred}


def test_trained_model_beats_majority_class_on_unseen_slides(trained):
    pred = trained["pred"]
    accuracy = float((pred.probs.argmax(1) == pred.labels).mean())
    majority = np.bincount(pred.labels).max() / len(pred.labels)
    assert len(pred.labels) >= 100
    assert accuracy >= majority + 0.3, (accuracy, majority)


def test_gradcam_points_inside_the_class_region_and_untrained_does_not(trained):
    site, ds = trained["site"], trained["ds"]
    boundary = [i for i, p in enumerate(ds.patches) if p.overlap < 0.95]
    inside = [_inside(site, ds.patches[i]) for i in boundary]
    chance = float(np.mean([m.mean() for m in inside]))  # a uniformly random maximum
    constant = float(np.mean([m[0, 0] for m in inside]))  # argmax of a constant map: the first pixel
    assert len(boundary) >= 60 and 0.5 < chance < 0.9

    after = tissue_pointing_game(trained["model"], site, ds, max_patches=10_000)
    assert after["n"] == len(boundary)
    assert after["chance"] == pytest.approx(chance, abs=0.03)  # the game's own chance: mean patch overlap
    assert after["pointing_game"] >= max(chance, constant) + MARGIN, (after, chance, constant)
    before = trained["before"]
    assert before["n"] == len(boundary)
    assert before["pointing_game"] < chance + MARGIN / 2, (before, chance)
