"""Added time to first token against arrival rate, one line pair (p50, p99) per target.

    plot.py SERIES.json OUT.png     (run by report.py with a python that has matplotlib)
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLOURS = {"app": "tab:blue", "litellm": "tab:red", "direct (vs nominal)": "tab:gray"}


def main(series_path: str, out_path: str) -> None:
    with open(series_path) as f:
        series = json.load(f)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for name, points in series.items():
        points.sort()
        rates = [p[0] for p in points]
        colour = COLOURS.get(name)
        for index, (label, style) in enumerate((("p50", "-o"), ("p99", "--s")), start=1):
            values = [p[index] for p in points]
            keep = [(r, v) for r, v in zip(rates, values, strict=False) if v is not None]
            if keep:
                ax.plot([r for r, _ in keep], [v for _, v in keep], style, color=colour,
                        label=f"{name} {label}", markersize=4)
    ax.axhline(100, color="black", linewidth=0.8, linestyle=":")
    ax.text(ax.get_xlim()[0], 110, " knee: added p99 = 100 ms", fontsize=8)
    ax.set_yscale("symlog", linthresh=10)
    ax.set_ylim(bottom=-3)  # small negatives are noise of the floor, not a faster target
    ax.set_xlabel("arrival rate (streams/s, Poisson)")
    ax.set_ylabel("added time to first token (ms, over the direct floor)")
    ax.set_title("Added TTFT vs arrival rate (server on one core)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
