"""``resilientdb demo --plot FILE.png``: the timeline as a picture (needs matplotlib).

Top: operations that succeeded per second, for both runs; bottom: errors the application saw
per second. Shaded: the supervisor's states other than connected, and the faults.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from .faults import FaultRecord

__all__ = ["draw"]

_STATE_COLOURS = {"reconnecting": "#f5c242", "failed": "#e0533d", "connecting": "#9ecae1"}


def draw(
    path: str,
    timeline: Sequence[tuple[float, str, list[tuple[int, int]]]],
    states: Sequence[tuple[float, str]],
    faults: Sequence[FaultRecord],
    labels: Sequence[str],
    end: float,
) -> None:
    """Write the timeline to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig: Any
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(11, 6), height_ratios=[3, 2])
    seconds = [t - 0.5 for t, _, _ in timeline]  # each figure covers the second before t
    for i, label in enumerate(labels):
        top.plot(seconds, [c[i][0] for _, _, c in timeline], marker=".", label=label)
        bottom.plot(seconds, [c[i][1] for _, _, c in timeline], marker=".", label=label)
    for ax in (top, bottom):
        for fault in faults:
            ax.axvspan(fault.start, max(fault.end, fault.start + 0.1), color="grey", alpha=0.25)
        bands = [*states, (end, "end")]
        for (start, state), (stop, _) in itertools.pairwise(bands):
            colour = _STATE_COLOURS.get(state)
            if colour is not None:
                ax.axvspan(start, stop, color=colour, alpha=0.35)
    for fault in faults:
        top.annotate(
            fault.name,
            (fault.start, 1.0),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            ha="right",
            fontsize=7,
        )
    top.set_ylabel("operations ok / s")
    bottom.set_ylabel("errors seen / s")
    bottom.set_xlabel("seconds (grey: faults; yellow/red: resilientdb reconnecting/failed)")
    top.legend(loc="lower left")
    top.set_title("resilientdb demo: the same workload through resilientdb and on the raw driver")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
