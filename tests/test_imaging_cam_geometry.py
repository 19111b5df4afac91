"""Grad-CAM geometry for mammography ROIs (issue 17), checked against hand-computed cases: the
CAM layer is fine enough for the ROI size, and a ROI's heatmap lands where its crop came from."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from site_agent.imaging.preprocess import crop_roi
from site_agent.imaging.stages import heat_on_image
from site_agent.training.models import build_classifier, gradcam_target


@pytest.mark.parametrize("size,layer,side", [(64, "layer3", 4), (224, "layer4", 7), (128, "layer4", 4),
                                             (32, "layer2", 4), (16, "layer2", 2)])
def test_resnet_cam_layer_is_fine_enough_for_the_input(size, layer, side):
    model = build_classifier("resnet18", 2, in_channels=1).eval()
    name, block, n = gradcam_target(model, size)
    seen = {}
    hook = block.register_forward_hook(lambda m, i, o: seen.__setitem__("shape", tuple(o.shape[-2:])))
    with torch.no_grad():
        model(torch.rand(1, 1, size, size))
    hook.remove()
    assert (name, n) == (layer, side) and seen["shape"] == (side, side)  # the block's real map size


def test_a_2x2_map_cannot_point_inside_a_central_box():
    """The old target (ResNet layer4, 2x2 at 64 px): upsampled bilinearly, each cell's maximum is a
    flat 16x16 corner; np.argmax takes its first pixel, inside the central box 12..52 (a 1.6x
    context crop) only for the bottom-right cell."""
    hits = []
    for k in range(4):
        cam = torch.zeros(1, 1, 2, 2)
        cam.view(-1)[k] = 1.0
        up = torch.nn.functional.interpolate(cam, size=(64, 64), mode="bilinear", align_corners=False)[0, 0].numpy()
        assert (up == up.max()).sum() == 16 * 16
        y, x = np.unravel_index(up.argmax(), up.shape)
        hits.append(bool(12 <= x <= 52 and 12 <= y <= 52))
    assert hits == [False, False, False, True]


def test_heat_lands_on_the_crop_window_hand_computed():
    # box 20x20 at (40, 60): side max(20, 20, 24) * 1.6 = 38.4 -> 38 px; corner round(50 - 19.2) = 31,
    # round(70 - 19.2) = 51: the window is rows 51..88, columns 31..68
    box, shape = (40.0, 60.0, 60.0, 80.0), (200, 150)
    full = heat_on_image(np.ones((64, 64), np.float32), box, 1.6, shape)
    rows, cols = np.nonzero(np.isfinite(full))
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (51, 88, 31, 68)
    one = np.zeros((64, 64), np.float32)
    one[0, 63] = 1.0  # the crop's top-right pixel -> the window's top-right pixel
    full = heat_on_image(one, box, 1.6, shape)
    assert np.unravel_index(np.nanargmax(full), full.shape) == (51, 68)


def test_heat_window_is_clipped_at_the_image_edge():
    # box (0, 0, 10, 10): side 24 * 1.6 = 38.4 -> 38, corner round(5 - 19.2) = -14: rows/cols 0..23 remain
    full = heat_on_image(np.ones((64, 64), np.float32), (0.0, 0.0, 10.0, 10.0), 1.6, (100, 80))
    assert np.isfinite(full).sum() == 24 * 24 and np.isfinite(full[:24, :24]).all()


@pytest.mark.parametrize("spot,box", [((45, 75), (40.0, 60.0, 60.0, 80.0)), ((12, 30), (5.0, 20.0, 25.0, 33.0)),
                                      ((140, 90), (120.0, 70.0, 149.0, 110.0))])
def test_crop_and_heat_mapping_are_inverse(spot, box):
    """A bright spot cut out by crop_roi and used as the heatmap comes back where it was (within
    the resize's one pixel), also for boxes at the image edge."""
    x, y = spot
    img = np.zeros((160, 150), np.float32)
    img[y - 1:y + 2, x - 1:x + 2] = 1.0
    crop = crop_roi(img, box, 64, context=1.6)
    full = heat_on_image(crop, box, 1.6, img.shape)
    py, px = np.unravel_index(np.nanargmax(full), full.shape)
    assert abs(px - x) <= 1 and abs(py - y) <= 1
