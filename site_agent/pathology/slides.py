"""Whole-slide images through tiffslide (SVS and tiled TIFF; OpenSlide-compatible API)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from optima_common.errors import PathologyDataError


class Slide:
    """A whole-slide image; coordinates are level-0 pixels unless said otherwise."""

    def __init__(self, path: Path):
        import tiffslide

        self.path = Path(path)
        if not self.path.is_file():
            raise PathologyDataError(f"slide not found: {self.path}")
        try:
            self._s = tiffslide.TiffSlide(str(self.path))
            self.dimensions: tuple[int, int] = tuple(self._s.dimensions)
        except Exception as exc:  # noqa: BLE001 - tifffile/tiffslide raise many types for a broken file
            raise PathologyDataError(f"cannot open slide {self.path}: {type(exc).__name__}: {exc}".splitlines()[0],
                                     hint="give an SVS or tiled pyramidal TIFF") from None
        self.level_downsamples: tuple[float, ...] = tuple(float(d) for d in self._s.level_downsamples)

    @property
    def mpp(self) -> float | None:
        """Level-0 microns per pixel (``tiffslide.mpp-x`` or ``openslide.mpp-x``), None if unrecorded."""
        props = self._s.properties
        for key in ("tiffslide.mpp-x", "openslide.mpp-x", "aperio.MPP"):
            v = props.get(key)
            try:
                if v is not None and float(v) > 0:
                    return float(v)
            except (TypeError, ValueError):
                continue
        return None

    def close(self) -> None:
        self._s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def best_level(self, downsample: float) -> int:
        """The level with the largest downsample not above ``downsample`` (then resample)."""
        ok = [i for i, d in enumerate(self.level_downsamples) if d <= downsample + 1e-6]
        return max(ok, key=lambda i: self.level_downsamples[i]) if ok else 0

    def read(self, x: int, y: int, size: int, downsample: float = 1.0) -> np.ndarray:
        """An RGB patch (size x size, uint8) covering ``size*downsample`` level-0 pixels at (x, y)."""
        level = self.best_level(downsample)
        extent = round(size * downsample)
        read = round(extent / self.level_downsamples[level])
        try:
            img = self._s.read_region((int(x), int(y)), level, (read, read), as_array=True)
        except Exception as exc:  # noqa: BLE001 - as above, for a truncated tile
            raise PathologyDataError(f"cannot read region of {self.path}: {type(exc).__name__}: {exc}") from None
        img = np.asarray(img)[..., :3]
        if read != size:
            from PIL import Image

            img = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
        return img

    def thumbnail(self, max_side: int = 1024) -> tuple[np.ndarray, float]:
        """(RGB thumbnail, its downsample from level 0)."""
        w, h = self.dimensions
        scale = max(max(w, h) / max_side, 1.0)
        level = self.best_level(scale)
        lw, lh = self._s.level_dimensions[level]
        img = np.asarray(self._s.read_region((0, 0), level, (lw, lh), as_array=True))[..., :3]
        from PIL import Image

        tw, th = max(1, round(w / scale)), max(1, round(h / scale))
        if (lw, lh) != (tw, th):
            img = np.asarray(Image.fromarray(img).resize((tw, th), Image.BILINEAR))
        return img, w / tw
