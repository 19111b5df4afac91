"""QuPath GeoJSON annotations: polygons with a classification name, in level-0 pixels.

QuPath exports a FeatureCollection (or a bare list of Features); each annotation has
``geometry`` (Polygon or MultiPolygon) and ``properties.classification.name`` (older
exports: ``properties.classification`` as a string, or ``properties.name``). Features whose
class is not one of the task's classes are skipped and counted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry
from shapely.validation import make_valid

from optima_common.errors import PathologyDataError
from optima_common.fileio import write_atomic
from site_agent.pathology import CLASSES

# QuPath's default colours for the classes (RGB), used in written files and overlays
COLOURS = {"Tumor": (200, 0, 0), "Stroma": (150, 200, 150), "Normal ducts": (0, 120, 220),
           "Immune cells": (160, 90, 160), "Adipose": (240, 210, 60), "Necrosis": (60, 60, 60),
           "Complex": (255, 140, 0), "Background": (220, 220, 220)}


@dataclass(frozen=True)
class Annotation:
    label: str
    geometry: BaseGeometry


def _class_name(props: dict) -> str | None:
    cls = props.get("classification")
    if isinstance(cls, dict):
        return cls.get("name")
    if isinstance(cls, str):
        return cls
    return props.get("name")


def parse_geojson(data, *, classes=CLASSES, source: str = "annotations") -> tuple[list[Annotation], int]:
    """(annotations of known classes, number of features skipped)."""
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    else:
        features = data
    if not isinstance(features, list):
        raise PathologyDataError(f"{source}: not a GeoJSON FeatureCollection or list of Features")
    out, skipped = [], 0
    for i, feat in enumerate(features):
        if not isinstance(feat, dict) or not isinstance(feat.get("geometry"), dict):
            raise PathologyDataError(f"{source}: feature {i} has no geometry")
        name = _class_name(feat.get("properties") or {})
        if name not in classes:
            skipped += 1
            continue
        try:
            geom = shape(feat["geometry"])
        except Exception as exc:  # shapely raises several types on malformed coordinates
            raise PathologyDataError(f"{source}: feature {i} has malformed geometry ({exc})") from exc
        if geom.geom_type not in ("Polygon", "MultiPolygon"):
            skipped += 1
            continue
        if not geom.is_valid:
            geom = make_valid(geom)
        out.append(Annotation(name, geom))
    return out, skipped


def load_geojson(path: Path, *, classes=CLASSES) -> list[Annotation]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PathologyDataError(f"annotation file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PathologyDataError(f"{path} is not valid JSON: {exc}", hint="export annotations from QuPath as GeoJSON") from None
    return parse_geojson(data, classes=classes, source=str(path))[0]


def to_geojson(annotations: list[Annotation]) -> dict:
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": f"a{i}", "geometry": mapping(a.geometry),
         "properties": {"objectType": "annotation",
                        "classification": {"name": a.label, "color": list(COLOURS.get(a.label, (0, 0, 0)))}}}
        for i, a in enumerate(annotations)]}


def write_geojson(annotations: list[Annotation], path: Path) -> Path:
    return write_atomic(path, json.dumps(to_geojson(annotations)).encode())
