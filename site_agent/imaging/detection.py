"""Lesion detection with ultralytics YOLO, trained from a model YAML, fully offline.

Offline switches (FIELD_NOTES): ``YOLO_OFFLINE=1``, ``YOLO_CONFIG_DIR`` under a temp dir
(never the home directory) holding a copy of matplotlib's DejaVuSans.ttf as
``Ultralytics/Arial.ttf`` and ``Arial.Unicode.ttf`` (its dataset check fetches Arial
otherwise), ``amp=False`` (the AMP check downloads weights on a GPU), ``pretrained=False``
and a model YAML. Images are exported once as preprocessed 8-bit grayscale PNGs and the
data YAML says ``channels: 1``. Evaluation gives mAP50 and mAP50-95 (ultralytics' own
COCO-style computation) on the held-out split.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from site_agent.imaging.preprocess import to_uint8

MODEL_YAMLS = ("yolov8n.yaml", "yolo11n.yaml")


def setup_offline() -> Path:
    """Set the ultralytics offline environment (before its first import); returns the config dir."""
    cfg = Path(os.environ.get("YOLO_CONFIG_DIR") or Path(tempfile.gettempdir()) / "optima-ultralytics")
    os.environ["YOLO_CONFIG_DIR"] = str(cfg)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    os.environ.setdefault("MPLCONFIGDIR", str(Path(tempfile.gettempdir()) / "optima-mpl"))
    fonts = cfg / "Ultralytics"
    fonts.mkdir(parents=True, exist_ok=True)
    import matplotlib

    src = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (fonts / name).is_file():
            shutil.copyfile(src, fonts / name)
    return cfg


@dataclass(frozen=True)
class DetItem:
    """One image for the detector: preprocessed pixels (0..1) and its YOLO rows."""

    key: str  # unique, file-name safe
    image: np.ndarray
    boxes: tuple


def export_dataset(splits: dict[str, list[DetItem]], root: Path) -> Path:
    """Write ``root/images/<split>/*.png`` + ``root/labels/<split>/*.txt`` and ``root/data.yaml``."""
    for split, items in splits.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for it in items:
            cv2.imwrite(str(root / "images" / split / f"{it.key}.png"), to_uint8(it.image))
            rows = "".join(f"{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in it.boxes)
            (root / "labels" / split / f"{it.key}.txt").write_text(rows)
    lines = [f"path: {root.resolve()}", "train: images/train", "val: images/val"]
    if "test" in splits:
        lines.append("test: images/test")
    lines += ["channels: 1", "names:", "  0: lesion", ""]
    data = root / "data.yaml"
    data.write_text("\n".join(lines))
    return data


def train_detector(data_yaml: Path, workdir: Path, *, epochs: int, imgsz: int, device: str, seed: int = 0,
                   batch: int = 8, model_yaml: str = "yolov8n.yaml", patience: int = 20) -> Path:
    """Train from ``model_yaml`` (random init); returns the best weights file."""
    setup_offline()
    from ultralytics import YOLO

    workdir = Path(workdir).resolve()  # ultralytics puts a relative project under ./runs/detect/
    model = YOLO(model_yaml)
    with contextlib.redirect_stdout(sys.stderr):  # its progress bars are not our output
        model.train(data=str(data_yaml), epochs=epochs, imgsz=imgsz, batch=batch, device=_device(device), workers=0,
                    amp=False, pretrained=False, project=str(workdir), name="detect", exist_ok=True, seed=seed,
                    deterministic=True, plots=False, verbose=False, patience=patience, val=True,
                    mosaic=0.0, warmup_epochs=min(3.0, epochs / 10), hsv_h=0.0, hsv_s=0.0, degrees=5.0)
    best = Path(workdir) / "detect" / "weights" / "best.pt"
    return best if best.is_file() else Path(workdir) / "detect" / "weights" / "last.pt"


def evaluate_detector(weights: Path, data_yaml: Path, *, split: str, imgsz: int, device: str,
                      workdir: Path) -> dict[str, float]:
    setup_offline()
    from ultralytics import YOLO

    with contextlib.redirect_stdout(sys.stderr):
        res = YOLO(str(weights)).val(data=str(data_yaml), split=split, imgsz=imgsz, device=_device(device),
                                     batch=16, workers=0, plots=False, verbose=False, project=str(Path(workdir).resolve()),
                                     name=f"val_{split}", exist_ok=True)
    return {"map50": float(res.box.map50), "map50_95": float(res.box.map)}


def detect_best(weights: Path, images: list[np.ndarray], *, imgsz: int, device: str,
                conf: float = 0.01) -> list[tuple[tuple[float, float, float, float], float] | None]:
    """The most confident box (x0, y0, x1, y1 in pixels) and its score per image, or None."""
    setup_offline()
    from ultralytics import YOLO

    model = YOLO(str(weights))
    out = []
    for img in images:
        res = model.predict(to_uint8(img)[..., None], imgsz=imgsz, device=_device(device), conf=conf,
                            verbose=False, max_det=5)[0]
        if res.boxes is None or len(res.boxes) == 0:
            out.append(None)
            continue
        k = int(res.boxes.conf.argmax())
        out.append((tuple(float(v) for v in res.boxes.xyxy[k].tolist()), float(res.boxes.conf[k])))
    return out


def _device(device: str) -> str:
    return "0" if device == "cuda" else "cpu"
