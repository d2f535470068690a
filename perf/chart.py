"""Draw the benchmark summary as a PNG of grouped bar charts (needs matplotlib)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from perf.report import DISPLAY, Key, Stat, engine_rank

#: Panels: (workload, threads) drawn with their main metric, one bar per engine and size.
PANELS = (
    ("bulk", 1),
    ("bulk_many", 1),
    ("sync_each", 1),
    ("group_commit", 8),
    ("replay_warm", 1),
    ("replay_cold", 1),
    ("reopen", 1),
    ("rss", 1),
)


def available() -> bool:
    """Return whether matplotlib can be imported."""
    return importlib.util.find_spec("matplotlib") is not None


def draw(summary: dict[Key, dict[str, Stat]], path: Path) -> None:
    """Write one bar-chart panel per workload to ``path`` (median bars, min-max whiskers)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    panels = [(w, t) for w, t in PANELS if any(k[0] == w and k[3] == t for k in summary)]
    figure, axes = pyplot.subplots(len(panels), 1, figsize=(10, 3.2 * len(panels)), squeeze=False)
    for axis, (workload, threads) in zip(axes[:, 0], panels, strict=True):
        metric, unit = DISPLAY[workload][0]
        keys = sorted(
            k for k in summary if k[0] == workload and k[3] == threads and metric in summary[k]
        )
        engines = sorted({k[1] for k in keys}, key=lambda e: (engine_rank(e), e))
        sizes = sorted({k[2] for k in keys})
        width = 0.8 / max(1, len(engines))
        for index, engine in enumerate(engines):
            xs, medians, below, above = [], [], [], []
            for position, size in enumerate(sizes):
                stat = summary.get((workload, engine, size, threads), {}).get(metric)
                if stat is not None:
                    xs.append(position + index * width)
                    medians.append(stat.median)
                    below.append(stat.median - stat.low)
                    above.append(stat.high - stat.median)
            axis.bar(xs, medians, width, yerr=[below, above], label=engine, capsize=2)
        axis.set_xticks([p + 0.4 - width / 2 for p in range(len(sizes))], [f"{s} B" for s in sizes])
        axis.set_yscale("log")
        title = f"{workload} ({threads} threads)" if threads > 1 else workload
        axis.set_title(f"{title}: {unit}")
        axis.legend(fontsize="small", ncols=4)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
