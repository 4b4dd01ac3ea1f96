"""Sweep plots: a bar chart of acc and bwt (mean ± std over seeds), and a grid of mean accuracy-matrix heat maps.

Both take the groups of :func:`clkit.cli.aggregate.group_runs`: a row of panels per scenario (and, for the heat maps,
per setting of the other swept keys), strategies along the other axis. Files are written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from clkit._io import replace_atomic
from clkit.cli.aggregate import Group

__all__ = ["mean_matrix", "plot_bars", "plot_matrix_grid"]

BAR_METRICS = ("acc", "bwt")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    plt = _pyplot()
    replace_atomic(lambda tmp: fig.savefig(tmp, dpi=110), path)
    plt.close(fig)


def _unique(items: list[Any]) -> list[Any]:
    return list(dict.fromkeys(items))


def mean_matrix(group: Group) -> np.ndarray | None:
    """Element-wise mean of the finished runs' (T, T) accuracy matrices; ``None`` if none or if the sizes differ."""
    mats = [np.asarray(r.results["accuracy_matrix"], dtype=float) for r in group.done if r.results is not None]
    if not mats or len({m.shape for m in mats}) > 1:
        return None
    return np.mean(np.stack(mats), axis=0)  # (runs, T, T) -> (T, T)


def plot_bars(path: Path, groups: list[Group], hue_columns: list[str], hue_title: str = "") -> None:
    """acc and bwt per strategy (bars, error bars = std over seeds); a row per scenario, a colour per setting of
    ``hue_columns`` (the other swept keys), named ``hue_title`` in the legend."""
    plt = _pyplot()
    scenarios = _unique([g.labels["scenario"] for g in groups])
    strategies = _unique([g.labels["strategy"] for g in groups])
    hues = _unique([tuple(g.labels[c] for c in hue_columns) for g in groups])
    table = {(g.labels["strategy"], g.labels["scenario"], tuple(g.labels[c] for c in hue_columns)): g for g in groups}
    width = 0.8 / len(hues)
    fig, axes = plt.subplots(len(scenarios), 2, squeeze=False,
                             figsize=(2.0 + 2 * max(3.0, 0.35 * len(strategies) * len(hues)), 0.6 + 2.8 * len(scenarios)))
    for r, scenario in enumerate(scenarios):
        present = [s for s in strategies if any((s, scenario, hue) in table for hue in hues)]
        for c, metric in enumerate(BAR_METRICS):
            ax = axes[r][c]
            for h, hue in enumerate(hues):
                cells = [(i, g) for i, s in enumerate(present)
                         if (g := table.get((s, scenario, hue))) is not None and g.done]
                stats = [g.stat(metric) for _, g in cells]
                ax.bar([i - 0.4 + width * (h + 0.5) for i, _ in cells], [m for m, _ in stats], width,
                       yerr=[s or 0.0 for _, s in stats], capsize=2, label=", ".join(hue) or None)
            ax.set_xticks(range(len(present)), present, rotation=30, ha="right", fontsize=8)
            ax.set_title(f"{scenario}: {metric}", fontsize=9)
            ax.axhline(0.0, color="grey", linewidth=0.8)
            if metric == "acc":
                ax.set_ylim(0.0, 1.0)
    fig.suptitle("mean ± std over seeds", fontsize=9)
    if len(hues) > 1:
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(len(hues), 4), fontsize=7,
                   title=hue_title or ", ".join(hue_columns), title_fontsize=7)
        fig.tight_layout(rect=(0.0, 0.04 + 0.05 * ((len(hues) + 3) // 4) / len(scenarios), 1.0, 1.0))
    else:
        fig.tight_layout()
    _save(fig, path)


def plot_matrix_grid(path: Path, groups: list[Group], row_columns: list[str]) -> None:
    """A heat map of the mean accuracy matrix per group: a row per setting of ``row_columns`` (scenario and other
    swept keys), a column per strategy; cell text = accuracy in percent (for T <= 10)."""
    plt = _pyplot()
    rows = _unique([tuple(g.labels[c] for c in row_columns) for g in groups])
    cols = _unique([g.labels["strategy"] for g in groups])
    table = {(tuple(g.labels[c] for c in row_columns), g.labels["strategy"]): g for g in groups}
    fig, axes = plt.subplots(len(rows), len(cols), squeeze=False,
                             figsize=(max(5.0, 1.4 + 1.9 * len(cols)), 0.9 + 1.9 * len(rows)))
    image = None
    for r, row in enumerate(rows):
        for c, strategy in enumerate(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(strategy, fontsize=8)
            if c == 0:
                ax.set_ylabel("\n".join(row), fontsize=7)
            group = table.get((row, strategy))
            matrix = None if group is None else mean_matrix(group)
            if matrix is None:
                ax.set_frame_on(False)
                continue
            image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
            if matrix.shape[0] <= 10:
                for (i, j), v in np.ndenumerate(matrix):
                    ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=5,
                            color="black" if v > 0.6 else "white")
    fig.suptitle("mean accuracy matrix over seeds\n(row i = after training experience i, column j = test experience j)",
                 fontsize=8)
    fig.tight_layout(rect=(0.0, 0.0, 0.88, 1.0))
    if image is not None:
        bar = fig.colorbar(image, cax=fig.add_axes((0.9, 0.15, 0.015, 0.65)))
        bar.ax.tick_params(labelsize=7)
        bar.set_label("accuracy", fontsize=7)
    _save(fig, path)
