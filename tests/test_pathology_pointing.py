"""Grad-CAM pointing game on annotated tissue regions: the heat maximum of a boundary patch is
mapped to slide coordinates and tested against the class's QuPath polygons. Checked with oracle
heat maps placed, by an independent rasterisation of the polygons (shapely ``contains_xy`` on the
patch's pixel centres), inside or outside the region: the game must score 1 and 0."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from shapely import union_all

from site_agent.cli import main
from site_agent.pathology import CLASSES
from site_agent.pathology.annotations import load_geojson
from site_agent.pathology.dataset import load_site
from site_agent.pathology.pointing import tissue_pointing_game
from site_agent.pathology.tiling import TilingParams

SIZE = 24  # model input side: heat maps are SIZE x SIZE


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("pp") / "site"
    assert main(["images", "synth", "pathology", "--out", str(out), "--site", "alpha", "--seed", "3",
                 "--slides", "5", "--width", "1024", "--height", "768"]) == 0
    return load_site(out, TilingParams(), input_size=SIZE, seed=0)


def _inside(site, ds, i) -> np.ndarray:
    """SIZE x SIZE booleans: is the centre of each heat-map pixel inside the patch's class region."""
    p = ds.patches[i]
    geoms = [a.geometry for a in load_geojson(site.records[p.slide].annotations) if a.label == CLASSES[p.label]]
    side = ds.params.size * ds.params.downsample
    centres = (np.arange(SIZE) + 0.5) / SIZE * side
    xx, yy = np.meshgrid(p.x + centres, p.y + centres)
    return shapely.contains_xy(union_all(geoms), xx, yy)


@pytest.mark.parametrize("where", ["inside", "outside"])
def test_oracle_heat_maps_score_one_inside_and_zero_outside(site, monkeypatch, where):
    from torch import nn

    ds = site.datasets["train"]
    boundary = [i for i, p in enumerate(ds.patches) if p.label >= 0 and p.overlap < 0.95]
    mixed = [i for i in boundary if 0 < _inside(site, ds, i).mean() < 1]
    assert len(mixed) >= 5, "the synthetic slides should have patches on region boundaries"
    wanted = {}
    for i in mixed:
        mask = _inside(site, ds, i) if where == "inside" else ~_inside(site, ds, i)
        r, c = np.argwhere(mask)[0]
        heat = np.zeros((SIZE, SIZE), np.float32)
        heat[r, c] = 1.0
        wanted[i] = heat
    calls = iter([])

    def oracle(model, x, targets):
        return np.stack([next(calls) for _ in range(len(x))])

    import site_agent.training.explain as explain

    monkeypatch.setattr(explain, "gradcam", oracle)
    sub = type(ds)(ds.slide_paths, [ds.patches[i] for i in mixed], ds.params, input_size=SIZE)
    calls = iter([wanted[i] for i in mixed])
    out = tissue_pointing_game(nn.Linear(1, 1), site, sub, max_patches=10_000)
    assert out["n"] == len(mixed)
    assert out["pointing_game"] == (1.0 if where == "inside" else 0.0)
    assert out["chance"] == pytest.approx(np.mean([ds.patches[i].overlap for i in mixed]))
    assert 0.5 <= out["chance"] < 0.95
