"""Report figures as embedded PNG (matplotlib Agg, imported only when a report is written)."""

from __future__ import annotations

import base64
import io
import os
import tempfile
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path

os.environ.setdefault("MPLCONFIGDIR", str(Path(tempfile.gettempdir()) / "optima-mpl"))

#: set by :func:`coordinator.report.figure_pool.deferred`: hands a figure (function name, arguments) to a
#: worker process and returns its placeholder; unset, figures are drawn where they are asked for
DEFER: ContextVar[Callable[[str, tuple], str] | None] = ContextVar("optima_defer_figures", default=None)


def maybe_defer(name: str, args: tuple) -> str | None:
    """The placeholder of figure ``name(*args)`` if figures are being deferred, else None."""
    submit = DEFER.get()
    return None if submit is None else submit(name, args)


def _png(fig) -> str:
    """The figure as a base64 PNG with an adaptive 256-colour palette: line plots need no more
    colours, and the file is about a third of the RGBA one (a 20-site report carries ~50 figures)."""
    import matplotlib.pyplot as plt
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    buf.seek(0)
    with Image.open(buf) as im:
        small = im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
        out = io.BytesIO()
        small.save(out, format="PNG", optimize=True)
    return base64.b64encode(out.getvalue()).decode("ascii")


def forest_png(title: str, rows: list[tuple[str, float, float, float]], pooled: list[tuple[str, float, float, float]],
               xlabel: str, log: bool = True) -> str:
    """Forest plot: one line per site (estimate, lower, upper), pooled estimates as diamonds."""
    if (token := maybe_defer("forest_png", (title, rows, pooled, xlabel, log))) is not None:
        return token
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n = len(rows) + len(pooled)
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * n + 1.1))
    ys = [n - 1 - i for i in range(n)]
    if rows:  # one call for every site: the same pixels as one call per site (rows never overlap), far fewer artists
        est, lo, hi = (np.array([r[k] for r in rows], dtype=float) for k in (1, 2, 3))
        ax.errorbar(est, ys[:len(rows)], xerr=[est - lo, hi - est], fmt="s", color="#2b6ca3", capsize=3)
    for (_label, est_, lo_, hi_), y in zip(pooled, ys[len(rows):], strict=True):
        ax.fill([lo_, est_, hi_, est_], [y, y + 0.3, y, y - 0.3], color="#b4412b")
    forest_axes(ax, title, rows, pooled, xlabel, log)
    return _png(fig)


def forest_axes(ax, title: str, rows: list, pooled: list, xlabel: str, log: bool) -> None:
    """The forest plot's labels, axis scale, title and grid (after its points are drawn)."""
    n = len(rows) + len(pooled)
    ax.set_yticks([n - 1 - i for i in range(n)], [r[0] for r in rows + pooled])
    if log and all(r[2] > 0 for r in rows + pooled):
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)


def km_png(title: str, curves: dict[str, tuple[list[float], list[float], list[float], list[float]]],
           at_risk: dict[str, list[tuple[float, str]]]) -> str:
    """Step KM curves with CI bands and an at-risk table under the axis, as a base64 PNG."""
    if (token := maybe_defer("km_png", (title, curves, at_risk))) is not None:
        return token
    return _png(km_figure(title, curves, at_risk))


def km_figure(title: str, curves: dict[str, tuple[list[float], list[float], list[float], list[float]]],
              at_risk: dict[str, list[tuple[float, str]]]):
    """The matplotlib figure behind :func:`km_png` (tests measure its text layout)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, tab) = plt.subplots(2, 1, figsize=(7, 4.6 + 0.25 * len(at_risk)),
                                  gridspec_kw={"height_ratios": [4, 0.4 + 0.3 * len(at_risk)], "hspace": 0.55},
                                  sharex=True)
    colours: dict[str, str] = {}
    for name, (t, s, lo, hi) in curves.items():
        line, = ax.step(t, s, where="post", label=name)
        colours[name] = line.get_color()
        ax.fill_between(t, lo, hi, step="post", alpha=0.15, color=line.get_color())
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("survival")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    # the x range from every time drawn or written: a curve that stops at day 0 (a small site's
    # curve withheld after the first interval) would otherwise leave a zero-width axis, and the
    # at-risk labels at later times would stretch the tight bounding box beyond any image size
    times = [float(x) for t, *_ in curves.values() for x in t] + [float(t) for c in at_risk.values() for t, _ in c]
    finite = [x for x in times if x == x and abs(x) != float("inf")]
    ax.set_xlim(0, max([1.0, *finite]) * 1.02)
    # the table axis is hidden, so the shared x axis shows its tick labels on the curve panel
    ax.tick_params(labelbottom=True)
    tab.set_axis_off()
    for i, (name, cells) in enumerate(at_risk.items()):
        y = len(at_risk) - i - 0.5
        # the row name sits clear of the day-0 count, which is centred on x = 0
        tab.text(-0.05, y / max(len(at_risk), 1), name, transform=tab.transAxes, ha="right", va="center",
                 fontsize=7, color=colours.get(name, "black"))
        for t, label in cells:
            if not (0 <= t <= ax.get_xlim()[1]):
                continue
            tab.text(t, y / max(len(at_risk), 1), label, transform=tab.get_xaxis_transform(), ha="center",
                     va="center", fontsize=7)
    tab.set_title("number at risk (pooled)", fontsize=7, loc="left")
    ax.set_xlabel("days")
    return fig


def rate_panels_png(w, by: str, title: str) -> str:
    """Small multiples: one panel per outcome, rate by year with a 95% CI band per line
    (``by``: "all" one line, "sex" a line per sex, "age group" a line per age group); "" without any."""
    w = w.dropna(subset=["est"])
    outcomes = sorted(w["outcome"].unique())
    if not outcomes:
        return ""
    if (token := maybe_defer("rate_panels_png", (w, by, title))) is not None:
        return token
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(outcomes))
    rows = -(-len(outcomes) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.4 * rows + 0.5), squeeze=False)
    line_key = {"all": None, "sex": "sex", "age group": "age"}[by]
    for ax, outcome in zip(axes.flat, outcomes):
        g = w[w["outcome"] == outcome]
        groups = [("network", g)] if line_key is None else list(g.groupby(line_key, sort=True))
        for label, gg in groups:
            gg = gg.sort_values("year")
            line, = ax.plot(gg["year"], gg["est"], marker="o", ms=2.5, lw=1.2, label=str(label))
            if {"lo", "hi"} <= set(gg.columns):
                ax.fill_between(gg["year"], gg["lo"], gg["hi"], alpha=0.15, color=line.get_color())
        ax.set_title(outcome, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if line_key is not None:
            ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(outcomes):]:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _png(fig)
