"""Gantt charts of simulated (or measured) timelines, one panel per strategy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from edgeci_mqtt.errors import EdgeCIError
from edgeci_mqtt.timeline import ORCHESTRATOR, Interval

__all__ = ["COLOURS", "write_gantt"]

COLOURS = {
    "plan": "#b794f4",
    "auction": "#ecc94b",
    "compute": "#2b6cb0",
    "gateway": "#2b6cb0",
    "receive": "#9ae6b4",
    "send": "#f6ad55",
    "prepare": "#cbd5e0",
    "merge": "#718096",
    "tail": "#c53030",
}


def write_gantt(timelines: Mapping[str, Sequence[Interval]], resources: Sequence[str], path: Path) -> None:
    """One horizontal panel per strategy: the orchestrator, then every device."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError as exc:  # matplotlib is an optional extra
        raise EdgeCIError("Gantt charts need matplotlib: pip install 'edgeci-mqtt[plot]'") from exc
    rows = [ORCHESTRATOR, *resources]
    fig, axes = plt.subplots(len(timelines), 1, figsize=(11, 1.0 + 0.32 * len(rows) * len(timelines)), squeeze=False)
    end = max((i.end for t in timelines.values() for i in t), default=1.0)
    for ax, (name, timeline) in zip(axes[:, 0], timelines.items(), strict=True):
        for interval in timeline:
            y = rows.index(interval.resource)
            lane = {"receive": -0.3, "send": 0.3}.get(interval.kind, 0.0)
            height = 0.25 if interval.kind in ("receive", "send") else 0.55
            ax.barh(
                y + lane,
                (interval.end - interval.start) * 1e3,
                left=interval.start * 1e3,
                height=height,
                color=COLOURS.get(interval.kind, "#000000"),
                linewidth=0,
            )
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, end * 1e3 * 1.02)
        makespan = max((i.end for i in timeline), default=0.0)
        ax.set_title(f"{name}: {makespan * 1e3:.0f} ms", fontsize=9, loc="left")
        ax.tick_params(axis="x", labelsize=7)
    axes[-1, 0].set_xlabel("time (ms)")
    fig.legend(
        handles=[Patch(color=c, label=k) for k, c in COLOURS.items() if k != "gateway"],
        loc="upper right",
        ncol=6,
        fontsize=7,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
