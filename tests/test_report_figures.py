"""Report figures drawn by worker processes (coordinator/report/figure_pool.py) are the very PNGs
the report process draws itself, and every placeholder of a page is filled."""

from __future__ import annotations

import re

import pandas as pd

from coordinator.report import plots
from coordinator.report.figure_pool import deferred


def _figures():
    rows = [(f"site_{i}", 10.0 + i, 8.0 + i, 12.5 + i) for i in range(5)]
    pooled = [("pooled (sum)", 12.0, 11.0, 13.0), ("random effects, I²=12%", 12.1, 10.5, 13.9)]
    curves = {"network": ([0, 30, 90, 200], [1.0, 0.9, 0.7, 0.5], [1.0, 0.85, 0.6, 0.4], [1.0, 0.95, 0.8, 0.6]),
              "site_a": ([0, 45, 120], [1.0, 0.8, 0.6], [1.0, 0.7, 0.5], [1.0, 0.9, 0.7])}
    w = pd.DataFrame({"outcome": ["a", "a", "b", "b"], "year": [2019, 2020, 2019, 2020], "est": [1.0, 2.0, 3.0, None],
                      "lo": [0.5, 1.5, 2.5, None], "hi": [1.5, 2.5, 3.5, None], "age": "0 to 150", "sex": "Both"})
    return [("forest_png", ("title", rows, pooled, "rate", False)), ("forest_png", ("log", rows, pooled, "HR")),
            ("km_png", ("km", curves, {"network": [(0.0, "40"), (90.0, "≥12")]})),
            ("rate_panels_png", (w, "all", "by year"))]


def test_a_worker_draws_the_same_png_and_every_placeholder_is_filled():
    inline = [getattr(plots, name)(*args) for name, args in _figures()]
    assert all(len(p) > 1000 for p in inline)
    with deferred(2) as d:
        tokens = [getattr(plots, name)(*args) for name, args in _figures()]
        assert all(re.fullmatch(r"optima-figure-[0-9a-f]{16}-\d+", t) for t in tokens)
        assert plots.rate_panels_png(pd.DataFrame({"outcome": [], "est": []}), "all", "x") == ""  # none: not deferred
        page = "<p>" + "</p><p>".join(tokens) + "</p>" + tokens[0]  # one figure used twice
        filled = d.fill(page)
    assert filled == "<p>" + "</p><p>".join(inline) + "</p>" + inline[0]
    assert plots.forest_png(*_figures()[0][1]) == inline[0]  # outside the block: drawn in place again


def test_one_worker_draws_in_place():
    with deferred(1) as d:
        assert d is None and plots.km_png(*_figures()[2][1]) == plots.km_png(*_figures()[2][1])



def test_a_figure_whose_worker_died_is_drawn_in_place():
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    name, args = _figures()[0]
    inline = plots.forest_png(*args)
    with deferred(2) as d:
        token = plots.forest_png(*args)
        future, call = d.futures[token]
        assert future.result() == inline
        broken = Future()
        broken.set_exception(BrokenProcessPool("a worker was killed"))
        d.futures[token] = (broken, call)
        assert d.fill(f"<img src={token}>") == f"<img src={inline}>"


def _forest_one_call_per_site(title, rows, pooled, xlabel, log=True):
    """The forest plot's points drawn the straightforward way (one errorbar call per site), as a
    reference; its labels, scale and title by the report's own ``forest_axes``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(rows) + len(pooled)
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * n + 1.1))
    for i, (_label, est, lo, hi) in enumerate(rows + pooled):
        y = n - 1 - i
        if i < len(rows):
            ax.errorbar(est, y, xerr=[[est - lo], [hi - est]], fmt="s", color="#2b6ca3", capsize=3)
        else:
            ax.fill([lo, est, hi, est], [y, y + 0.3, y, y - 0.3], color="#b4412b")
    plots.forest_axes(ax, title, rows, pooled, xlabel, log)
    return plots._png(fig)


def test_the_forest_plot_draws_every_site_in_one_call_with_the_same_pixels():
    import random

    rng = random.Random(7)
    pooled = [("pooled (sum)", 1.3, 1.0, 1.7), ("random effects, I²=12%", 1.35, 0.9, 1.8)]
    for k in (1, 2, 20):
        rows = [(f"site_{i:02d}", e, e * rng.uniform(0.4, 0.9), e * rng.uniform(1.1, 2.0))
                for i in range(k) for e in [rng.uniform(0.5, 3.0)]]
        for log in (False, True):
            assert plots.forest_png("t", rows, pooled, "hazard ratio", log) == \
                _forest_one_call_per_site("t", rows, pooled, "hazard ratio", log), (k, log)
