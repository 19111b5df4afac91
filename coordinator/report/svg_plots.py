"""Report figures written as inline SVG text: forest plots and yearly rate panels.

A 20-site report holds ~40 forest plots and 6 panels of yearly rates. Drawn with matplotlib they
cost ~20 CPU s (tick and text layout, PNG encoding); written here as SVG elements they cost
milliseconds, stay sharp at any zoom, and every point carries its numbers as a tooltip. Only the
figure's geometry is computed here: axes map values linearly (or by log10) onto pixels, ticks are
1-2-5 steps (decades on a log axis), and every text that comes from a site (names, outcomes) is
escaped. ``tests/test_svg_plots.py`` reads the numbers back from the drawn positions and tick
labels alone.
"""

from __future__ import annotations

import html
import math

import pandas as pd

FONT = 'font-family="sans-serif"'
SITE, POOLED = "#2b6ca3", "#b4412b"
#: line colours of the rate panels (matplotlib's tab10, so the panels look as they did as PNGs)
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _n(x: float) -> str:
    """A coordinate, to 0.1 px."""
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _v(x: float) -> str:
    """A value in a tooltip."""
    return f"{x:.4g}"


def _finite(*xs) -> bool:
    """Every value a finite number (numpy scalars included; None and text are not)."""
    try:
        return all(not isinstance(x, str) and math.isfinite(float(x)) for x in xs)
    except (TypeError, ValueError):
        return False


class Axis:
    """Values in [lo, hi] onto pixels [p0, p1]; linear, or by log10 (all values > 0)."""

    def __init__(self, lo: float, hi: float, p0: float, p1: float, log: bool = False):
        self.log, self.p0, self.p1 = log, p0, p1
        f = math.log10 if log else float
        self.a, self.b = f(lo), f(hi)

    def __call__(self, x: float) -> float:
        t = math.log10(x) if self.log else x
        return self.p0 + (t - self.a) / (self.b - self.a) * (self.p1 - self.p0)


def padded(lo: float, hi: float, log: bool = False) -> tuple[float, float]:
    """[lo, hi] widened by 5% each side (in log10 on a log axis); a single value gets a width."""
    if log:
        a, b = padded(math.log10(lo), math.log10(hi))
        return 10 ** a, 10 ** b
    if hi <= lo:
        w = abs(lo) * 0.1 or 1.0
        return lo - w, hi + w
    w = (hi - lo) * 0.05
    return lo - w, hi + w


def ticks(lo: float, hi: float, log: bool = False, target: int = 5) -> list[tuple[float, str]]:
    """(value, label) of the ticks inside [lo, hi]: 1-2-5 steps, or decades (with 2s and 5s when
    fewer than three decades show) on a log axis; a log axis too narrow for three of those gets
    1-2-5 steps too (placed by log), so the axis is labelled to its end."""
    if log:
        out = [10.0 ** k for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)]
        if sum(lo <= t <= hi for t in out) < 3:
            out = sorted(t * m for t in out for m in (1, 2, 5))
        kept = [(t, f"{t:g}") for t in out if lo <= t <= hi]
        return kept if len(kept) >= 3 else ticks(lo, hi, target=target)
    raw = (hi - lo) / target
    k = math.floor(math.log10(raw))
    step = min((m * 10.0 ** k for m in (1, 2, 5, 10) if m * 10.0 ** k >= raw), default=10.0 ** (k + 1))
    digits = max(0, -math.floor(math.log10(step)))
    first = math.ceil(lo / step - 1e-9)
    out, i = [], first
    while (t := i * step) <= hi + step * 1e-9:
        out.append((t, f"{t:,.{digits}f}"))
        i += 1
    return out


def _svg(width: float, height: float, title: str, body: list[str]) -> str:
    return (f'<svg role="img" aria-label="{_e(title)}" width="{_n(width)}" '
            f'height="{_n(height)}" viewBox="0 0 {_n(width)} {_n(height)}" style="max-width:100%;height:auto" '
            f'{FONT} font-size="11"><title>{_e(title)}</title>' + "".join(body) + "</svg>")


def _x_axis(ax: Axis, top: float, bottom: float, log: bool, lo: float, hi: float) -> list[str]:
    """Grid lines and tick labels of a horizontal axis, and its base line."""
    out = [f'<line class="axis" x1="{_n(ax.p0)}" x2="{_n(ax.p1)}" y1="{_n(bottom)}" y2="{_n(bottom)}" stroke="#444"/>']
    for t, label in ticks(lo, hi, log):
        x = _n(ax(t))
        out.append(f'<line x1="{x}" x2="{x}" y1="{_n(top)}" y2="{_n(bottom)}" stroke="#ccc"/>'
                   f'<text class="xtick" x="{x}" y="{_n(bottom + 13)}" text-anchor="middle">'
                   f'{_e(label)}</text>')
    return out


def forest_svg(title: str, rows: list[tuple[str, float, float, float]], pooled: list[tuple[str, float, float, float]],
               xlabel: str, log: bool = True) -> str:
    """Forest plot: a square and its 95% CI per site, pooled estimates as diamonds; log x axis when
    ``log`` and every lower bound is above 0. A row with a non-finite number is labelled, not drawn."""
    items = [(r, False) for r in rows] + [(r, True) for r in pooled]
    drawn = [r for r, _ in items if _finite(*r[1:])]
    log = log and bool(drawn) and all(r[2] > 0 for r in drawn)
    lo, hi = (min(r[2] for r in drawn), max(r[3] for r in drawn)) if drawn else (0.0, 1.0)
    lo, hi = padded(lo, hi, log)
    label_w = min(260, 12 + 6.2 * max([len(str(r[0])) for r, _ in items] + [4]))
    row_h, top = 22, 30
    width, height = 640, top + row_h * len(items) + 44
    ax = Axis(lo, hi, label_w + 10, width - 16, log)
    bottom = top + row_h * len(items)
    body = [f'<text x="{_n(width / 2)}" y="16" text-anchor="middle" font-size="12">{_e(title)}</text>',
            *_x_axis(ax, top, bottom, log, lo, hi),
            f'<text x="{_n((ax.p0 + ax.p1) / 2)}" y="{_n(bottom + 34)}" text-anchor="middle">{_e(xlabel)}</text>']
    for i, ((label, est, l_, h_), is_pooled) in enumerate(items):
        y = top + row_h * (i + 0.5)
        body.append(f'<text class="ylabel" x="{_n(label_w)}" y="{_n(y + 4)}" text-anchor="end">{_e(label)}</text>')
        if not _finite(est, l_, h_):
            continue
        tip = f"<title>{_e(label)}: {_v(est)} ({_v(l_)}–{_v(h_)})</title>"
        x, xl, xh = ax(est), ax(l_), ax(h_)
        if is_pooled:
            body.append(f'<polygon class="pooled" data-row="{i}" points="{_n(xl)},{_n(y)} {_n(x)},{_n(y - 6.6)} '
                        f'{_n(xh)},{_n(y)} {_n(x)},{_n(y + 6.6)}" fill="{POOLED}">{tip}</polygon>')
        else:
            body.append(f'<g class="site" data-row="{i}" stroke="{SITE}">'
                        f'<line x1="{_n(xl)}" x2="{_n(xh)}" y1="{_n(y)}" y2="{_n(y)}"/>'
                        f'<line x1="{_n(xl)}" x2="{_n(xl)}" y1="{_n(y - 4)}" y2="{_n(y + 4)}"/>'
                        f'<line x1="{_n(xh)}" x2="{_n(xh)}" y1="{_n(y - 4)}" y2="{_n(y + 4)}"/>'
                        f'<rect x="{_n(x - 4)}" y="{_n(y - 4)}" width="8" height="8" fill="{SITE}">{tip}</rect></g>')
    return _svg(width, height, title, body)


def rate_panels_svg(w: pd.DataFrame, by: str, title: str) -> str:
    """Small multiples: one panel per outcome, rate by year with a 95% CI band per line (``by``:
    "all" one line, "sex" a line per sex, "age group" a line per age group); "" without any."""
    w = w.dropna(subset=["est"])
    outcomes = sorted(w["outcome"].unique())
    if not outcomes:
        return ""
    line_key = {"all": None, "sex": "sex", "age group": "age"}[by]
    # one colour per line label across all panels, and one legend above them (inside a panel it
    # covered the lines)
    labels = [] if line_key is None else sorted(w[line_key].dropna().unique(), key=str)
    colour_of = {label: PALETTE[j % len(PALETTE)] for j, label in enumerate(labels)}
    cols = min(4, len(outcomes))
    pw, ph = 250, 190
    width = pw * cols
    legend, top = _legend(colour_of, width)
    height = top + ph * -(-len(outcomes) // cols)
    body = [f'<text x="{_n(width / 2)}" y="16" text-anchor="middle" font-size="12">{_e(title)}</text>', *legend]
    for k, outcome in enumerate(outcomes):
        g = w[w["outcome"] == outcome]
        ox, oy = pw * (k % cols), top + ph * (k // cols)
        body.append(f'<g class="panel" data-outcome="{_e(outcome)}">'
                    f'<text x="{_n(ox + pw / 2)}" y="{_n(oy + 12)}" text-anchor="middle">{_e(outcome)}</text>')
        vals = [x for c in ("est", "lo", "hi") if c in g.columns for x in g[c] if _finite(x)]
        ylo, yhi = padded(min(vals), max(vals))
        xlo, xhi = padded(float(g["year"].min()), float(g["year"].max()))
        xa, ya = Axis(xlo, xhi, ox + 50, ox + pw - 10), Axis(ylo, yhi, oy + ph - 24, oy + 22)
        body.append(f'<line class="axis" x1="{_n(xa.p0)}" x2="{_n(xa.p0)}" y1="{_n(ya.p1)}" y2="{_n(ya.p0)}" '
                    'stroke="#444"/>')
        for t, label in ticks(ylo, yhi, target=4):
            y = _n(ya(t))
            body.append(f'<line x1="{_n(xa.p0)}" x2="{_n(xa.p1)}" y1="{y}" y2="{y}" stroke="#ddd"/>'
                        f'<text class="ytick" x="{_n(xa.p0 - 4)}" y="{_n(ya(t) + 3)}" '
                        f'text-anchor="end" font-size="9">{_e(label)}</text>')
        body.extend(_year_ticks(xa, ya, g))
        groups = [("network", g)] if line_key is None else list(g.groupby(line_key, sort=True))
        for label, gg in groups:
            gg = gg.sort_values("year")
            colour = colour_of.get(label, PALETTE[0])
            band = [(yr, a, b) for yr, a, b in zip(gg["year"], gg.get("lo", []), gg.get("hi", []), strict=False)
                    if _finite(a, b)]
            if band:
                pts = [(xa(yr), ya(b)) for yr, _, b in band] + [(xa(yr), ya(a)) for yr, a, _ in reversed(band)]
                body.append(f'<polygon points="{" ".join(f"{_n(x)},{_n(y)}" for x, y in pts)}" fill="{colour}" '
                            'fill-opacity="0.15"/>')
            line = " ".join(f"{_n(xa(yr))},{_n(ya(e))}" for yr, e in zip(gg["year"], gg["est"], strict=True))
            body.append(f'<g class="line" data-label="{_e(label)}" stroke="{colour}" fill="{colour}">'
                        f'<polyline points="{line}" fill="none" stroke-width="1.2"/>')
            for row in gg.itertuples(index=False):
                ci = f" ({_v(row.lo)}–{_v(row.hi)})" if _finite(getattr(row, "lo", None), getattr(row, "hi", None)) else ""
                body.append(f'<circle data-year="{int(row.year)}" cx="{_n(xa(row.year))}" cy="{_n(ya(row.est))}" r="2.5">'
                            f"<title>{_e(label)} {int(row.year)}: {_v(row.est)}{ci}</title></circle>")
            body.append("</g>")
        body.append("</g>")
    return _svg(width, height, title, body)


def _legend(colour_of: dict[str, str], width: float) -> tuple[list[str], float]:
    """Rows under the title, each centred: a short line and the label per colour, wrapped to the
    figure's width (none for one line); and where the panels start below them."""
    rows: list[list[tuple[str, str, float]]] = []
    for label, colour in colour_of.items():
        w = 26 + 6 * len(str(label))
        if not rows or sum(x[2] for x in rows[-1]) + w > width - 8:
            rows.append([])
        rows[-1].append((label, colour, w))
    out = []
    for r, row in enumerate(rows):
        x, y = max(4.0, (width - sum(w for *_, w in row)) / 2), 32 + 14 * r
        for label, colour, w in row:
            out.append(f'<g class="legend" data-label="{_e(label)}"><line x1="{_n(x)}" x2="{_n(x + 14)}" '
                       f'y1="{_n(y)}" y2="{_n(y)}" stroke="{colour}" stroke-width="2"/>'
                       f'<text x="{_n(x + 18)}" y="{_n(y + 3.5)}" font-size="10">{_e(label)}</text></g>')
            x += w
    return out, 26 + 14 * len(rows) + (4 if rows else 0)


def _year_ticks(xa: Axis, ya: Axis, g: pd.DataFrame) -> list[str]:
    """The year axis: whole years only, every year or every 2nd, 5th, 10th... so at most six show."""
    years = sorted({int(y) for y in g["year"]})
    step = next(s for s in (1, 2, 5, 10, 20, 50, 100, 10 ** 9) if (years[-1] - years[0]) // s < 6)
    out = [f'<line class="axis" x1="{_n(xa.p0)}" x2="{_n(xa.p1)}" y1="{_n(ya.p0)}" y2="{_n(ya.p0)}" stroke="#444"/>']
    for yr in range(years[0] - years[0] % step, years[-1] + 1, step):
        if yr >= years[0]:
            out.append(f'<text class="xtick" x="{_n(xa(yr))}" y="{_n(ya.p0 + 13)}" text-anchor="middle" '
                       f'font-size="9">{yr}</text>')
    return out
