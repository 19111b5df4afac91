"""The report's SVG figures (coordinator/report/svg_plots.py), read back the way a reader does:
from the drawn positions and the printed tick labels alone. Each test parses the SVG as XML,
fits the pixel-to-value map from two of its tick labels, and checks that every drawn estimate
and interval sits where the input numbers say, and that text from sites stays text."""

from __future__ import annotations

import math
import random
import xml.etree.ElementTree as ET

import pandas as pd
import pytest

from coordinator.report.svg_plots import forest_svg, rate_panels_svg, ticks


def _tree(svg: str) -> ET.Element:
    root = ET.fromstring(svg)  # well-formed XML, or this raises
    assert root.tag == "svg"
    return root


def _num(label: str) -> float:
    return float(label.replace(",", ""))


def _inverse(pixels: list[float], labels: list[str], log: bool):
    """Pixel -> value, fitted on the outermost two ticks (the figure's code is not consulted)."""
    (p0, v0), (p1, v1) = (pixels[0], _num(labels[0])), (pixels[-1], _num(labels[-1]))
    f = math.log10 if log else float
    a, b = f(v0), f(v1)

    def inv(p: float) -> float:
        t = a + (p - p0) / (p1 - p0) * (b - a)
        return 10 ** t if log else t
    return inv


def _x_ticks(root, cls="xtick"):
    ts = [t for t in root.iter("text") if t.get("class") == cls]
    return [float(t.get("x") if cls == "xtick" else t.get("y")) for t in ts], [t.text for t in ts]


def root_sites(root):
    return [g for g in root.iter("g") if g.get("class") == "site"]


def _close(got: float, want: float, per_px: float, log: bool) -> bool:
    """Equal to within half a pixel (coordinates are written to 0.1 px)."""
    if log:
        return abs(math.log10(got) - math.log10(want)) <= 0.5 * per_px
    return abs(got - want) <= 0.5 * per_px


@pytest.mark.parametrize("k", [1, 2, 20])
@pytest.mark.parametrize("log", [False, True])
def test_every_site_and_pooled_estimate_is_drawn_where_its_numbers_say(k, log):
    rng = random.Random(k * 10 + log)
    rows = [(f"site_{i:02d}", e, e * rng.uniform(0.4, 0.9), e * rng.uniform(1.1, 2.5))
            for i in range(k) for e in [rng.uniform(0.3, 40.0)]]
    pooled = [("pooled (sum)", 1.3, 1.0, 1.7), ("random effects, I²=12%", 1.35, 0.9, 1.8)]
    root = _tree(forest_svg("a title", rows, pooled, "hazard ratio", log))
    px, labels = _x_ticks(root)
    assert len(px) >= 3 and px == sorted(px)
    inv = _inverse(px, labels, log)
    span = (math.log10(_num(labels[-1])) - math.log10(_num(labels[0]))) if log else _num(labels[-1]) - _num(labels[0])
    per_px = span / (px[-1] - px[0])
    ylabels = [t.text for t in root.iter("text") if t.get("class") == "ylabel"]
    assert ylabels == [r[0] for r in rows + pooled]
    sites = [g for g in root.iter("g") if g.get("class") == "site"]
    assert len(sites) == k
    for g in sites:
        _label, est, lo, hi = rows[int(g.get("data-row"))]
        rect = g.find("rect")
        whisker = g.find("line")
        x = float(rect.get("x")) + float(rect.get("width")) / 2
        assert _close(inv(x), est, per_px, log), (inv(x), est)
        assert _close(inv(float(whisker.get("x1"))), lo, per_px, log)
        assert _close(inv(float(whisker.get("x2"))), hi, per_px, log)
        assert rect.find("title").text.startswith(f"{_label}: ")
    diamonds = [p for p in root.iter("polygon") if p.get("class") == "pooled"]
    assert len(diamonds) == 2
    for d in diamonds:
        _label, est, lo, hi = pooled[int(d.get("data-row")) - k]
        xs = [float(pt.split(",")[0]) for pt in d.get("points").split()]
        assert _close(inv(xs[0]), lo, per_px, log) and _close(inv(xs[1]), est, per_px, log)
        assert _close(inv(xs[2]), hi, per_px, log)
    # every drawn x lies inside the tick range's plot area, none outside the picture
    width = float(root.get("width"))
    assert all(0 <= float(g.find("rect").get("x")) <= width for g in sites)


def test_a_log_axis_needs_every_lower_bound_above_zero():
    rows = [("a", 1.0, 0.0, 2.0), ("b", 3.0, 1.0, 5.0)]
    root = _tree(forest_svg("t", rows, [], "x", log=True))
    px, labels = _x_ticks(root)
    values = [_num(v) for v in labels]
    steps = {round(b - a, 9) for a, b in zip(values, values[1:])}
    assert len(steps) == 1  # evenly spaced values: linear, as matplotlib's forest did for a 0 bound
    gaps = [b - a for a, b in zip(px, px[1:])]
    assert max(gaps) - min(gaps) < 0.3


def test_text_from_sites_stays_text_and_non_finite_rows_are_labelled_not_drawn():
    evil = '<script>alert(1)</script> & "quoted" \'x\''
    rows = [(evil, 2.0, 1.0, 3.0), ("infinite", 2.0, 1.0, float("inf")), ("nan", float("nan"), 1.0, 2.0),
            ("ok", 2.5, 2.0, 3.0)]
    svg = forest_svg(f"title {evil}", rows, [], f"x {evil}", log=True)
    assert "<script" not in svg
    root = _tree(svg)
    assert not list(root.iter("script"))
    ylabels = [t.text for t in root.iter("text") if t.get("class") == "ylabel"]
    assert ylabels == [evil, "infinite", "nan", "ok"]
    assert root.find("title").text == f"title {evil}"
    drawn = sorted(int(g.get("data-row")) for g in root.iter("g") if g.get("class") == "site")
    assert drawn == [0, 3]
    assert "inf" not in svg.lower().replace("infinite", "") and "nan" not in svg.replace(">nan<", "")
    import numpy as np

    numpy_row = _tree(forest_svg("t", [("np", np.int64(2), np.float32(1.0), np.float64(3.0)), ("none", None, 1.0, 2.0)],
                                 [], "x", log=False))
    assert [int(g.get("data-row")) for g in root_sites(numpy_row)] == [0]  # numpy numbers drawn, None not
    nothing = _tree(forest_svg("t", [("a", float("nan"), 1.0, 2.0)], [], "x"))  # nothing to draw: still a figure
    assert [t.text for t in nothing.iter("text") if t.get("class") == "ylabel"] == ["a"]


@pytest.mark.parametrize(("lo", "hi", "want"), [
    (0.0, 1.0, ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]),
    (-3.0, 97.0, ["0", "20", "40", "60", "80"]),
    (12_345.0, 98_765.0, ["20,000", "40,000", "60,000", "80,000"]),
    (0.0012, 0.0049, ["0.002", "0.003", "0.004"]),  # the smallest 1-2-5 step at least (hi - lo) / 5
    (0.0012, 0.0029, ["0.0015", "0.0020", "0.0025"]),
])
def test_linear_ticks_are_one_two_five_steps_inside_the_range(lo, hi, want):
    assert [label for _, label in ticks(lo, hi)] == want


def test_log_ticks_are_decades_or_one_two_five_within_few_decades():
    assert [label for _, label in ticks(0.05, 300.0, log=True)] == ["0.1", "1", "10", "100"]
    assert [label for _, label in ticks(0.3, 4.0, log=True)] == ["0.5", "1", "2"]
    # too narrow for three of those (a hazard ratio up to 1.69 would end unlabelled past 1)
    assert [label for _, label in ticks(0.3, 1.69, log=True)] == ["0.5", "1.0", "1.5"]
    assert [label for _, label in ticks(0.95, 1.05, log=True)] == ["0.95", "1.00", "1.05"]


def test_narrow_log_axis_is_labelled_to_its_end_and_places_points_by_log():
    root = _tree(forest_svg("t", [("a", 1.2, 0.8, 1.6)], [("pooled", 1.1, 0.7, 1.5)], "hazard ratio"))
    px, labels = _x_ticks(root)
    assert len(px) >= 3 and _num(labels[-1]) > 1.0
    inv = _inverse(px, labels, True)
    rect = root_sites(root)[0].find("rect")
    assert inv(float(rect.get("x")) + 4) == pytest.approx(1.2, rel=0.01)


def _rates() -> pd.DataFrame:
    rows = []
    for outcome, base in (("death", 100.0), ("relapse <b>", 40.0)):
        for sex, f in (("Female", 1.0), ("Male", 1.5)):
            for year in range(2012, 2024):
                est = base * f + 3 * (year - 2012) if (outcome, year) != ("death", 2015) else None
                rows.append({"outcome": outcome, "sex": sex, "age": "0 to 150", "year": year, "est": est,
                             "lo": None if est is None else est * 0.8, "hi": None if est is None else est * 1.25})
    return pd.DataFrame(rows)


def test_rate_panels_draw_each_year_where_its_rate_is():
    w = _rates()
    root = _tree(rate_panels_svg(w, "sex", "pooled incidence by year, by sex"))
    panels = [g for g in root.iter("g") if g.get("class") == "panel"]
    assert [p.get("data-outcome") for p in panels] == ["death", "relapse <b>"]
    for p in panels:
        xpx, xlab = _x_ticks(p)
        ypx, ylab = _x_ticks(p, "ytick")
        assert all(lab.isdigit() for lab in xlab) and len(xlab) <= 6
        year_of, rate_of = _inverse(xpx, xlab, False), _inverse([y - 3 for y in ypx], ylab, False)
        per_px = (_num(ylab[-1]) - _num(ylab[0])) / abs(ypx[-1] - ypx[0])
        lines = [g for g in p.iter("g") if g.get("class") == "line"]
        assert [g.get("data-label") for g in lines] == ["Female", "Male"]
        for g in lines:
            want = w[(w["outcome"] == p.get("data-outcome")) & (w["sex"] == g.get("data-label"))].dropna(subset=["est"])
            circles = g.findall("circle")
            assert [int(c.get("data-year")) for c in circles] == list(want["year"])
            for c, (_, r) in zip(circles, want.iterrows(), strict=True):
                assert abs(year_of(float(c.get("cx"))) - r["year"]) < 0.01
                assert abs(rate_of(float(c.get("cy"))) - r["est"]) <= 0.5 * per_px
    assert rate_panels_svg(w[w["est"].isna()], "all", "x") == ""


def test_rate_panels_keep_one_colour_per_line_and_one_legend_above_the_panels():
    """A panel missing a group ("Female" has no relapse rows) draws "Male" in Male's colour, and
    the legend names each colour once, above every panel's plotting area."""
    w = _rates()
    w = w[~((w["outcome"] == "relapse <b>") & (w["sex"] == "Female"))]
    root = _tree(rate_panels_svg(w, "sex", "by sex"))
    legend = {g.get("data-label"): g.find("line").get("stroke") for g in root.iter("g") if g.get("class") == "legend"}
    assert list(legend) == ["Female", "Male"] and len(set(legend.values())) == 2
    axis_tops = [min(float(ln.get("y1")), float(ln.get("y2"))) for p in root.iter("g") if p.get("class") == "panel"
                 for ln in p.findall("line") if ln.get("class") == "axis" and ln.get("x1") == ln.get("x2")]
    assert axis_tops and max(float(g.find("text").get("y")) for g in root.iter("g")
                             if g.get("class") == "legend") < min(axis_tops)
    for g in root.iter("g"):
        if g.get("class") == "line":
            assert g.get("stroke") == legend[g.get("data-label")]
    assert not [g for g in _tree(rate_panels_svg(w, "all", "all")).iter("g") if g.get("class") == "legend"]


def test_rate_panel_legend_wraps_inside_a_narrow_figure():
    """One outcome (one 250-px panel) and six age groups: the legend wraps into rows, every entry
    inside the figure and above the plotting area."""
    ages = ["0 to 150", "0 to 17", "18 to 39", "40 to 64", "65 to 79", "80 to 150"]
    w = pd.DataFrame([{"outcome": "death", "sex": "Both", "age": a, "year": y, "est": 10.0 + i + y - 2015,
                       "lo": 5.0, "hi": 40.0} for i, a in enumerate(ages) for y in range(2015, 2020)])
    root = _tree(rate_panels_svg(w, "age group", "by age"))
    width = float(root.get("width"))
    entries = [g for g in root.iter("g") if g.get("class") == "legend"]
    assert [g.get("data-label") for g in entries] == sorted(ages)
    ys = {float(g.find("line").get("y1")) for g in entries}
    assert len(ys) > 1  # wrapped
    for g in entries:
        x0, label = float(g.find("line").get("x1")), g.get("data-label")
        assert x0 >= 0 and float(g.find("text").get("x")) + 6 * len(label) <= width
    top = min(float(ln.get("y1")) for ln in root.iter("line") if ln.get("class") == "axis" and ln.get("x1") == ln.get("x2"))
    assert max(ys) + 4 < top
