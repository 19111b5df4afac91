"""Grad-CAM pointing game on annotated tissue regions (issue 17).

A patch is labelled with the class covering most of it; on a patch that its class covers only
partly (a boundary patch, ``overlap`` below ``max_overlap``) the heat map can point inside or
outside the annotated region. For each such test patch, Grad-CAM of the TRUE class is computed,
its maximum is mapped to level-0 slide coordinates, and it is a hit when that point lies inside
the union of the slide's annotations of that class. ``chance`` is the mean share of the patch the
class covers (what a maximum placed uniformly at random would reach). Heat maps stay at the site.
"""

from __future__ import annotations

import numpy as np


def tissue_pointing_game(model, site, ds, *, max_overlap: float = 0.95, max_patches: int = 200,
                         batch: int = 16, seed: int = 0) -> dict:
    """{pointing_game, chance, n, max_overlap} over up to ``max_patches`` boundary test patches."""
    import torch
    from shapely import union_all
    from shapely.geometry import Point

    from site_agent.pathology import CLASSES
    from site_agent.pathology.annotations import load_geojson
    from site_agent.pathology.slides import Slide
    from site_agent.pathology.tiling import resolve_params
    from site_agent.training.explain import gradcam

    idx = [i for i, p in enumerate(ds.patches) if p.label >= 0 and p.overlap < max_overlap]
    if len(idx) > max_patches:
        idx = sorted(np.random.default_rng(seed).choice(idx, max_patches, replace=False).tolist())
    if not idx:
        return {"pointing_game": None, "chance": None, "n": 0, "max_overlap": max_overlap}
    regions: dict[tuple[int, int], object] = {}
    extents: dict[int, float] = {}

    def region(slide: int, label: int):
        if (slide, label) not in regions:
            rec = site.records[slide]
            geoms = [a.geometry for a in load_geojson(rec.annotations) if a.label == CLASSES[label]]
            regions[(slide, label)] = union_all(geoms) if geoms else None
        return regions[(slide, label)]

    def extent(slide: int) -> float:
        if slide not in extents:
            with Slide(site.records[slide].slide) as s:
                extents[slide] = ds.params.size * resolve_params(ds.params, s).downsample
        return extents[slide]

    model = model.cpu().float()
    hits, chance = [], []
    for start in range(0, len(idx), batch):
        part = idx[start:start + batch]
        x = torch.stack([ds[i][0] for i in part])
        maps = gradcam(model, x, [ds.patches[i].label for i in part])
        for i, heat in zip(part, maps):
            p = ds.patches[i]
            r, c = np.unravel_index(int(np.argmax(heat)), heat.shape)
            side = extent(p.slide)
            point = Point(p.x + (c + 0.5) / heat.shape[1] * side, p.y + (r + 0.5) / heat.shape[0] * side)
            geom = region(p.slide, p.label)
            hits.append(bool(geom is not None and geom.covers(point)))
            chance.append(float(p.overlap))
    return {"pointing_game": float(np.mean(hits)), "chance": float(np.mean(chance)), "n": len(hits),
            "max_overlap": max_overlap}
