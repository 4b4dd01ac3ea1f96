"""Report figures: bars of ACC and BWT, a grid of mean accuracy matrices, and stream plots (mean ± std over seeds).

Each takes the groups of :func:`clkit.cli.aggregate.group_runs`: a row of panels per scenario (and, for the
matrices and stream plots, per setting of the other swept keys), strategies along the other axis (wrapped after
:data:`MAX_PANEL_COLUMNS` panels, so a grid of many strategies stays a page wide). Every figure is
written as a 300 dpi PNG and a PDF (:func:`clkit.figures.save_figure`), in percent, and states the number of seeds,
the setting and the evaluation (task-aware or task-agnostic) of what it shows.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from clkit.cli.aggregate import Group
from clkit.figures import FONT, draw_matrix, pyplot, save_figure, short_names

__all__ = ["mean_matrix", "plot_bars", "plot_matrix_grid", "plot_stream_grid"]

BAR_METRICS = (("acc", "ACC (%)"), ("bwt", "BWT (pts)"))


def _unique(items: list[Any]) -> list[Any]:
    return list(dict.fromkeys(items))


def _matrices(group: Group, key: str = "accuracy_matrix") -> list[np.ndarray]:
    mats = [np.array([[math.nan if v is None else v for v in row] for row in r.results[key]], dtype=float)
            for r in group.done if r.results is not None and r.results.get(key) is not None]
    return mats if mats and len({m.shape for m in mats}) == 1 else []


def mean_matrix(group: Group) -> np.ndarray | None:
    """Element-wise mean of the finished runs' (T, T) accuracy matrices; ``None`` if none or if the sizes differ."""
    mats = _matrices(group)
    return np.mean(np.stack(mats), axis=0) if mats else None  # (runs, T, T) -> (T, T)


def _names(group: Group | None) -> list[str] | None:
    """The experiences' names, when every run of the group saw the same ones in the same order (otherwise the
    mean is over stream positions, labelled ``T1 ... Tt``)."""
    if group is None:
        return None
    seen = {tuple(str(p.get("name", "")) for p in (r.results or {}).get("per_experience") or []) for r in group.done}
    return list(seen.pop()) if len(seen) == 1 and () not in seen else None


def _about(groups: list[Group]) -> str:
    """``"5 seeds; task-il, task-aware"``: what a panel's numbers are, from its runs' results."""
    seeds = sorted({len(g.done) for g in groups if g.done})
    n = (f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}") if seeds else "0"
    runs = [r.results for g in groups for r in g.done if r.results is not None]
    settings = _unique([str(r.get("setting", "?")) for r in runs])
    modes = _unique([str((r.get("evaluation") or {}).get("mode", "?")) for r in runs])
    return f"{n} seed{'s' if n != '1' else ''}; {'/'.join(settings)}, {'/'.join(modes)}"


def _zoom(low: float, high: float, floor: float | None = None, ceiling: float | None = None) -> tuple[float, float]:
    span = max(high - low, 1.0)
    lo, hi = low - 0.15 * span, high + 0.15 * span
    if floor is not None:
        lo = max(lo, floor)
    if ceiling is not None:
        hi = min(hi, ceiling)
    return lo, hi


def plot_bars(path: Path, groups: list[Group], hue_columns: list[str], hue_title: str = "") -> list[Path]:
    """ACC and BWT per strategy (bars, error bars = std over seeds, values in percent and points); a row per
    scenario, a colour per setting of ``hue_columns`` (the other swept keys), named ``hue_title`` in the legend. The
    axes are zoomed to the values (ACC's axis does not start at 0; its range is printed on the axis)."""
    plt = pyplot()
    scenarios = _unique([g.labels["scenario"] for g in groups])
    strategies = _unique([g.labels["strategy"] for g in groups])
    hues = _unique([tuple(g.labels[c] for c in hue_columns) for g in groups])
    table = {(g.labels["strategy"], g.labels["scenario"], tuple(g.labels[c] for c in hue_columns)): g for g in groups}
    colours = plt.get_cmap("tab10" if len(hues) <= 10 else "tab20")
    colour = {hue: colours(h % 20) for h, hue in enumerate(hues)}  # one colour per setting across every panel
    hues_of = {sc: [h for h in hues if any((s, sc, h) in table for s in strategies)] for sc in scenarios}
    n_hues = max(len(v) for v in hues_of.values())
    panel_w = min(max(3.2, 0.45 * len(strategies) * n_hues + 1.0), max(8.0, 0.5 * len(strategies) + 1.0))
    fig, axes = plt.subplots(len(scenarios), 2, squeeze=False, figsize=(2 * panel_w + 0.6, 0.8 + 3.0 * len(scenarios)))
    for r, scenario in enumerate(scenarios):
        row_groups = [g for g in groups if g.labels["scenario"] == scenario]
        present = [s for s in strategies if any((s, scenario, hue) in table for hue in hues)]
        row_hues = hues_of[scenario]  # only this scenario's settings: its bars centred on the tick
        width = 0.8 / max(len(row_hues), 1)
        for c, (metric, label) in enumerate(BAR_METRICS):
            ax = axes[r][c]
            lows, highs = [], []
            for h, hue in enumerate(row_hues):
                cells = [(i, g) for i, s in enumerate(present)
                         if (g := table.get((s, scenario, hue))) is not None and g.done]
                stats = [(100 * m, 100 * (s or 0.0)) for m, s in (g.stat(metric) for _, g in cells)]
                lows += [m - s for m, s in stats]
                highs += [m + s for m, s in stats]
                ax.bar([i - 0.4 + width * (h + 0.5) for i, _ in cells], [m for m, _ in stats], width,
                       yerr=[s for _, s in stats], capsize=2, color=colour[hue], error_kw={"linewidth": 0.8})
            tilt = (45 if len(present) > 8 else 30) if len(present) > 3 else 0
            ax.set_xticks(range(len(present)), present, rotation=tilt,
                          ha="right" if len(present) > 3 else "center")
            ax.set_ylabel(label)
            ax.set_title(f"{scenario} ({_about(row_groups)})", fontsize=FONT)
            ax.grid(axis="y", alpha=0.3)
            if lows:
                if metric == "acc":
                    ax.set_ylim(*_zoom(min(lows), max(highs), 0.0, 100.0))
                else:
                    lo, hi = _zoom(min(lows + [0.0]), max(highs + [0.0]))
                    ax.set_ylim(lo, hi)
                    ax.axhline(0.0, color="grey", linewidth=0.8)
    fig.suptitle("mean ± std over seeds", fontsize=FONT + 1)
    if len(hues) > 1:
        from matplotlib.patches import Patch

        handles = [Patch(color=colour[hue]) for hue in hues]
        labels = [", ".join(hue) for hue in hues]
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(hues), 4),
                   title=hue_title or ", ".join(hue_columns), frameon=False)
    fig.tight_layout()
    return save_figure(fig, path)


def _panels(groups: list[Group], row_columns: list[str]) -> tuple[list[tuple[str, ...]], list[str],
                                                                   dict[tuple[tuple[str, ...], str], Group]]:
    rows = _unique([tuple(g.labels[c] for c in row_columns) for g in groups if g.done])
    cols = _unique([g.labels["strategy"] for g in groups if g.done])
    table = {(tuple(g.labels[c] for c in row_columns), g.labels["strategy"]): g for g in groups if g.done}
    return rows, cols, table


MAX_PANEL_COLUMNS = 6


def _lines(rows: list[tuple[str, ...]], cols: list[str], table: dict[tuple[tuple[str, ...], str], Group],
           width: int = MAX_PANEL_COLUMNS) -> list[tuple[tuple[str, ...], list[str], bool]]:
    """The figure's lines of panels: per row setting, its strategies with finished runs, wrapped after ``width``
    panels (a grid of 17 strategies stays a page wide). Each line is ``(row, strategies, first line of row)``."""
    lines = []
    for row in rows:
        present = [s for s in cols if (row, s) in table and _matrices(table[(row, s)])]
        for k in range(0, len(present), width):
            lines.append((row, present[k: k + width], k == 0))
    return lines


def plot_matrix_grid(path: Path, groups: list[Group], row_columns: list[str]) -> list[Path]:
    """A heat map of the mean accuracy matrix (percent) per group: a row per setting of ``row_columns`` (scenario
    and other swept keys), a column per strategy; groups without finished runs get no panel. Cells hold the mean
    (T <= 12), future cells (j > i) are hatched."""
    plt = pyplot()
    rows, cols, table = _panels(groups, row_columns)
    lines = _lines(rows, cols, table)
    n_cols = max((len(line) for _, line, _ in lines), default=1)
    t = max((len(_matrices(g)[0]) for g in table.values() if _matrices(g)), default=1)
    side = max(2.4, 0.45 * t + 1.0)
    fig, axes = plt.subplots(max(len(lines), 1), n_cols, squeeze=False,
                             figsize=(0.9 + side * n_cols + 0.8, 0.9 + side * max(len(lines), 1)))
    image = None
    for r, (row, line, first) in enumerate(lines):
        for c in range(n_cols):
            ax = axes[r][c]
            if c >= len(line):
                ax.set_axis_off()
                continue
            strategy = line[c]
            group = table[(row, strategy)]
            mats = _matrices(group)
            image = draw_matrix(ax, np.mean(np.stack(mats), axis=0), _names(group), labels=(c == 0), cell_font=8)
            ax.set_title(f"{strategy} (n={len(mats)})", fontsize=FONT)
            if c == 0:
                ax.set_ylabel(" / ".join(row) + ("" if first else " (cont.)") + "\n" + (ax.get_ylabel() or ""),
                              fontsize=FONT - 1)
    if not lines:
        axes[0][0].set_axis_off()
    fig.suptitle(f"mean test accuracy matrix (%), {_about(list(table.values()))}\n"
                 "row i = after training task i, column j = test task j; hatched: not yet trained",
                 fontsize=FONT)
    height = fig.get_size_inches()[1]
    fig.tight_layout(rect=(0.0, 0.0, 0.92, 1.0 - 0.6 / height))  # room for the two-line title
    if image is not None:  # beside the first lines, at most 4 inches tall
        bar_h = min(0.6, 4.0 / height)
        bar = fig.colorbar(image, cax=fig.add_axes((0.935, 1.0 - 0.9 / height - bar_h, 0.015, bar_h)))
        bar.set_label("accuracy (%)")
    return save_figure(fig, path)


def plot_stream_grid(path: Path, groups: list[Group], row_columns: list[str]) -> list[Path]:
    """Stream plots per group: accuracy on each task after each experience, and the average over the tasks seen,
    mean ± std (shaded) over seeds; panels laid out as in :func:`plot_matrix_grid`, sharing the y-axis."""
    plt = pyplot()
    rows, cols, table = _panels(groups, row_columns)
    lines = _lines(rows, cols, table)
    n_cols = max((len(line) for _, line, _ in lines), default=1)
    t = max((len(_matrices(g)[0]) for g in table.values() if _matrices(g)), default=1)
    w = max(3.0, 0.45 * t + 1.4)
    height = 0.9 + 2.6 * max(len(lines), 1)
    fig, axes = plt.subplots(max(len(lines), 1), n_cols, squeeze=False, figsize=(0.8 + w * n_cols, height))
    colours = plt.get_cmap("tab10" if t <= 10 else "tab20")
    low: dict[tuple[str, ...], float] = {}  # per row setting: its panels share a y-range
    for r, (row, line, first) in enumerate(lines):
        for c in range(n_cols):
            ax = axes[r][c]
            if c >= len(line):
                ax.set_axis_off()
                continue
            strategy = line[c]
            group = table[(row, strategy)]
            mats = _matrices(group)
            stack = 100 * np.stack(mats)  # (runs, T, T)
            n = stack.shape[1]
            mean = stack.mean(axis=0)
            std = stack.std(axis=0, ddof=1) if len(stack) > 1 else np.zeros_like(mean)
            x = np.arange(n)
            for j in range(n):
                ax.plot(x[j:], mean[j:, j], marker="o", markersize=2.5, linewidth=1.0, color=colours(j % 20))
                ax.fill_between(x[j:], mean[j:, j] - std[j:, j], mean[j:, j] + std[j:, j], color=colours(j % 20),
                                alpha=0.10, linewidth=0)
            seen = np.array([[run[i, : i + 1].mean() for i in range(n)] for run in stack])
            ax.plot(x, seen.mean(axis=0), color="black", linestyle="--", linewidth=1.8)
            low[row] = min(low.get(row, 100.0), float(np.nanmin(mean[np.tril_indices(n)] - std[np.tril_indices(n)])))
            ticks = short_names(_names(group), n)
            ax.set_xticks(x)
            ax.set_xticklabels(ticks, rotation=45 if max(map(len, ticks)) > 4 else 0,
                               ha="right" if max(map(len, ticks)) > 4 else "center")
            ax.grid(axis="y", alpha=0.3)
            ax.set_title(f"{strategy} (n={len(mats)})", fontsize=FONT)
            if c == 0:
                ax.set_ylabel(" / ".join(row) + ("" if first else " (cont.)") + "\ntest accuracy (%)",
                              fontsize=FONT - 1)
    for r, (row, line, _) in enumerate(lines):
        for c in range(len(line)):
            axes[r][c].set_ylim(max(0.0, math.floor((low[row] - 5) / 10) * 10), 101)
    from matplotlib.lines import Line2D

    named = {tuple(n) for g in table.values() if (n := _names(g))}
    # the colour is the task's position in its stream; its name only when every panel's stream has the same names
    same = len(named) == 1
    ticks = short_names(named.pop(), t) if same else [str(j + 1) for j in range(t)]
    handles = [Line2D([], [], color=colours(j % 20), marker="o", markersize=3) for j in range(t)]
    handles.append(Line2D([], [], color="black", linestyle="--"))
    fig.legend(handles, [*ticks, "average (seen)"], loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
               title="task" if same else "task (position in its stream)")
    fig.suptitle(f"accuracy on each task after each experience (colours), average over seen tasks (dashed); "
                 f"mean ± std, {_about(list(table.values()))}", fontsize=FONT)
    fig.supxlabel("after training task", fontsize=FONT)
    fig.tight_layout(rect=(0.0, 0.3 / height, 1.0, 1.0 - 0.5 / height))  # room for the title and the x label
    return save_figure(fig, path)
