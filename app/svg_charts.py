"""Charts drawn on the server as inline SVG: no script, no build step, nothing to load.

A chart scales to its container (viewBox, width 100%); its text is sized so that it is still
readable scaled down to a phone's 390 px. Every chart has a text alternative (`aria-label`)
and its numbers are in the table beside it, so nothing is only in the picture.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

WIDTH = 480
HEIGHT = 220
LEFT = 62  # room for the value axis' labels
BOTTOM = 28  # room for the day labels
TOP = 10
FONT = 16  # about 12 px on a 390 px phone


@dataclass(frozen=True)
class Series:
    name: str
    colour: str
    values: Sequence[float]


def nice_ceiling(value: float) -> float:
    """The axis' top: 1, 2 or 5 times a power of ten, at or above the largest value."""
    if value <= 0:
        return 1.0
    power = 1.0
    while power * 10 <= value:
        power *= 10
    while power > value:
        power /= 10
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power


def _label(value: float, money: bool) -> str:
    if money:
        if value and value < 0.1:
            return f"${value:.3f}"
        return f"${value:,.2f}" if value < 10 else f"${value:,.0f}"
    return f"{value:,.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def stacked_bars(days: Sequence[date], series: Sequence[Series], label: str,
                 money: bool = False) -> str:
    """One bar per day, the series stacked in it, bottom first."""
    totals = [sum(s.values[i] for s in series) for i in range(len(days))]
    top = nice_ceiling(max(totals, default=0))
    plot_w, plot_h = WIDTH - LEFT - 4, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(1, len(days))
    bar = max(1.0, slot * 0.75)
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img"'
             f' aria-label="{html.escape(label)}" font-size="{FONT}"'
             f' xmlns="http://www.w3.org/2000/svg">',
             f"<title>{html.escape(label)}</title>"]
    for fraction in (0, 0.5, 1):
        y = TOP + plot_h * (1 - fraction)
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - 4}" y1="{y:.1f}" y2="{y:.1f}"'
                     f' stroke="#d8dde6"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#5b6472">'
                     f"{html.escape(_label(top * fraction, money))}</text>")
    for i, day in enumerate(days):
        x = LEFT + i * slot + (slot - bar) / 2
        base: float = TOP + plot_h
        for s in series:
            value = s.values[i]
            if value <= 0:
                continue
            height = plot_h * value / top
            base -= height
            parts.append(f'<rect x="{x:.1f}" y="{base:.1f}" width="{bar:.1f}"'
                         f' height="{height:.1f}" fill="{s.colour}">'
                         f"<title>{day.isoformat()}: {html.escape(s.name)}"
                         f" {html.escape(_label(value, money))}</title></rect>")
    # A few day labels only: first, middle, last, so they never overlap on a phone.
    marks = sorted({0, len(days) // 2, len(days) - 1}) if days else []
    for i in marks:
        x = LEFT + i * slot + slot / 2
        anchor = "start" if i == 0 and len(days) > 1 else "end" if i == len(days) - 1 \
            and len(days) > 1 else "middle"
        parts.append(f'<text x="{x:.1f}" y="{HEIGHT - 6}" text-anchor="{anchor}"'
                     f' fill="#5b6472">{days[i].strftime("%d %b")}</text>')
    parts.append("</svg>")
    return "".join(parts)


def legend(series: Sequence[Series]) -> str:
    items = "".join(f'<li><span class="swatch" style="background:{s.colour}"></span>'
                    f"{html.escape(s.name)}</li>" for s in series)
    return f'<ul class="legend">{items}</ul>'
