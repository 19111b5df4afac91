"""Report figures drawn by worker processes (coordinator/report/figure_pool.py) are the very PNGs
the report process draws itself, and every placeholder of a page is filled."""

from __future__ import annotations

import re

from coordinator.report import plots
from coordinator.report.figure_pool import deferred


def _figures():
    curves = {"network": ([0, 30, 90, 200], [1.0, 0.9, 0.7, 0.5], [1.0, 0.85, 0.6, 0.4], [1.0, 0.95, 0.8, 0.6]),
              "site_a": ([0, 45, 120], [1.0, 0.8, 0.6], [1.0, 0.7, 0.5], [1.0, 0.9, 0.7])}
    return [("km_png", ("km", curves, {"network": [(0.0, "40"), (90.0, "≥12")]})),
            ("km_png", ("one curve", {"network": curves["network"]}, {"network": [(0.0, "40")]})),
            ("km_png", ("withheld after day 0", {"site_b": ([0.0], [1.0], [1.0], [1.0])}, {}))]


def test_a_worker_draws_the_same_png_and_every_placeholder_is_filled():
    inline = [getattr(plots, name)(*args) for name, args in _figures()]
    assert all(len(p) > 1000 for p in inline)
    with deferred(2) as d:
        tokens = [getattr(plots, name)(*args) for name, args in _figures()]
        assert all(re.fullmatch(r"optima-figure-[0-9a-f]{16}-\d+", t) for t in tokens)
        page = "<p>" + "</p><p>".join(tokens) + "</p>" + tokens[0]  # one figure used twice
        filled = d.fill(page)
    assert filled == "<p>" + "</p><p>".join(inline) + "</p>" + inline[0]
    assert plots.km_png(*_figures()[0][1]) == inline[0]  # outside the block: drawn in place again


def test_one_worker_draws_in_place():
    with deferred(1) as d:
        assert d is None and plots.km_png(*_figures()[1][1]) == plots.km_png(*_figures()[1][1])



def test_a_figure_whose_worker_died_is_drawn_in_place():
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    name, args = _figures()[0]
    inline = plots.km_png(*args)
    with deferred(2) as d:
        token = plots.km_png(*args)
        future, call = d.futures[token]
        assert future.result() == inline
        broken = Future()
        broken.set_exception(BrokenProcessPool("a worker was killed"))
        d.futures[token] = (broken, call)
        assert d.fill(f"<img src={token}>") == f"<img src={inline}>"
