"""Report figures as embedded PNG (matplotlib Agg, imported only when a report is written): the
Kaplan-Meier curves with their at-risk tables. Forest plots and yearly rates are SVG text
(:mod:`coordinator.report.svg_plots`)."""

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
