"""Figures fit for a paper: the accuracy matrix and the stream plot (accuracy on each task after each experience).

Conventions shared by every clkit figure (runs and reports):

- one unit, **percent**, in cells, axes and colour bars;
- task names (the experiences' ``name``) on the ticks;
- a vector file (PDF) written beside a 300 dpi PNG (:func:`save_figure`);
- font sizes of 8 pt or more at the figure's printed size;
- in an accuracy matrix, the cells of tasks not yet trained (column j > row i) are hatched, and rows not yet
  reached (a figure of a stream in progress) are left empty.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from clkit._io import replace_atomic

__all__ = ["PNG_DPI", "draw_matrix", "matrix_figure", "pyplot", "save_figure", "short_names", "stream_figure"]

PNG_DPI = 300
FONT = 9  # pt; cell text and tick labels never go below 8
CMAP = "viridis"


def pyplot() -> Any:
    """matplotlib's pyplot on the non-interactive Agg backend (no display needed), with clkit's font sizes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": FONT, "axes.titlesize": FONT + 1, "axes.labelsize": FONT,
                         "xtick.labelsize": FONT - 1, "ytick.labelsize": FONT - 1, "legend.fontsize": FONT - 1,
                         "figure.titlesize": FONT + 1, "pdf.fonttype": 42, "ps.fonttype": 42})
    return plt


def save_figure(fig: Any, path: Path | str, *, close: bool = True) -> list[Path]:
    """Write ``fig`` as ``path`` (a PNG at :data:`PNG_DPI`) and as a PDF beside it; atomically; returns both paths."""
    path = Path(path)
    png, pdf = path.with_suffix(".png"), path.with_suffix(".pdf")
    replace_atomic(lambda tmp: fig.savefig(tmp, dpi=PNG_DPI, format="png", bbox_inches="tight"), png)
    replace_atomic(lambda tmp: fig.savefig(tmp, format="pdf", bbox_inches="tight"), pdf)
    if close:
        pyplot().close(fig)
    return [png, pdf]


def short_names(names: Optional[Sequence[str]], t: int) -> list[str]:
    """Tick labels: the experiences' names (``classes 0,1`` -> ``0,1`` when every name shares the prefix), or
    ``T1 ... Tt`` when the names are missing."""
    if not names or len(names) != t:
        return [f"T{j + 1}" for j in range(t)]
    names = [str(n) for n in names]
    words = [n.split(" ", 1) for n in names]
    if all(len(w) == 2 for w in words) and len({w[0] for w in words}) == 1 and len(names) > 1:
        return [w[1] for w in words]  # the shared word goes into the axis label instead
    return names


def _axis_word(names: Optional[Sequence[str]]) -> str:
    if names and len(names) > 1:
        words = [str(n).split(" ", 1) for n in names]
        if all(len(w) == 2 for w in words) and len({w[0] for w in words}) == 1:
            return f" ({words[0][0]})"
    return ""


def _as_array(matrix: Any) -> np.ndarray:
    if hasattr(matrix, "detach"):
        matrix = matrix.detach().cpu().numpy()
    return np.array([[math.nan if v is None else float(v) for v in row] for row in np.asarray(matrix, dtype=object)],
                    dtype=float)


def draw_matrix(ax: Any, matrix: Any, names: Optional[Sequence[str]] = None, *, upto: Optional[int] = None,
                std: Any = None, labels: bool = True, cell_font: float = FONT) -> Any:
    """Draw an accuracy matrix (fractions in [0, 1], shown in percent) on ``ax``; returns the image for a colour bar.

    Args:
        ax: A matplotlib axes.
        matrix: (T, T) accuracies; row i = after training experience i, column j = test experience j.
        names: The experiences' names, for the ticks.
        upto: Rows after this one are left empty (a stream in progress).
        std: (T, T) standard deviations, written under each mean when the cells are large enough.
        labels: Axis labels and tick names (off for inner panels of a grid).
        cell_font: Font size of the cell text (never below 8 pt); no text above 12 tasks.
    """
    m = _as_array(matrix)
    t = m.shape[0]
    last = t - 1 if upto is None else int(upto)
    shown = np.where(np.arange(t)[:, None] <= last, m, np.nan)
    image = ax.imshow(100.0 * shown, vmin=0.0, vmax=100.0, cmap=CMAP, aspect="equal")
    s = None if std is None else _as_array(std)
    if t <= 12:
        for i in range(last + 1):
            for j in range(t):
                v = shown[i, j]
                if math.isnan(v):
                    continue
                text = f"{100 * v:.0f}"
                if s is not None and t <= 6 and not math.isnan(s[i, j]):
                    text += f"\n±{100 * s[i, j]:.0f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=max(8.0, cell_font),
                        color="black" if v > 0.6 else "white", alpha=0.55 if j > i else 1.0)
    for i in range(last + 1):  # tasks not yet trained: hatched
        for j in range(i + 1, t):
            ax.add_patch(_hatch(i, j))
    ticks = short_names(names, t)
    ax.set_xticks(range(t))
    ax.set_yticks(range(t))
    if labels:
        rotate = max(len(n) for n in ticks) > 4
        ax.set_xticklabels(ticks, rotation=45 if rotate else 0, ha="right" if rotate else "center")
        ax.set_yticklabels(ticks)
        word = _axis_word(names)
        ax.set_xlabel(f"test task j{word}")
        ax.set_ylabel(f"after training task i{word}")
    else:
        ax.set_xticklabels([])
        ax.set_yticklabels([])
    ax.tick_params(length=2)
    return image


def _hatch(i: int, j: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((j - 0.5, i - 0.5), 1.0, 1.0, fill=False, hatch="///", edgecolor="white", linewidth=0.0,
                     alpha=0.6)


def matrix_figure(matrix: Any, names: Optional[Sequence[str]] = None, *, upto: Optional[int] = None,
                  title: str = "", std: Any = None) -> Any:
    """A figure of one accuracy matrix in percent, with a colour bar and a note on the hatched cells."""
    plt = pyplot()
    t = _as_array(matrix).shape[0]
    side = 2.2 + 0.5 * t
    fig, ax = plt.subplots(figsize=(side + 0.9, side))
    image = draw_matrix(ax, matrix, names, upto=upto, std=std)
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("accuracy (%)")
    if title:
        ax.set_title(title)
    if t > 1:
        fig.text(0.01, 0.005, "hatched: task j not yet trained (j > i)", fontsize=FONT - 1, color="dimgray")
    fig.tight_layout()
    return fig


def stream_figure(matrices: Sequence[Any], names: Optional[Sequence[str]] = None, *, title: str = "") -> Any:
    """The classic CL figure: accuracy on each task after each experience, from the task's own experience on,
    and the average over the tasks seen so far; mean ± std (shaded) over the runs in ``matrices``."""
    plt = pyplot()
    stack = np.stack([_as_array(m) for m in matrices])  # (runs, T, T)
    t = stack.shape[1]
    mean, std = np.nanmean(stack, axis=0), (np.nanstd(stack, axis=0, ddof=1) if len(stack) > 1 else None)
    ticks = short_names(names, t)
    fig, ax = plt.subplots(figsize=(max(5.6, 3.0 + 0.6 * t), 3.4))
    colours = plt.get_cmap("tab10" if t <= 10 else "tab20")
    x = np.arange(t)
    for j in range(t):
        xs = x[j:]
        ax.plot(xs, 100 * mean[j:, j], marker="o", markersize=3, linewidth=1.2, color=colours(j % 20),
                label=ticks[j])
        if std is not None:
            ax.fill_between(xs, 100 * (mean[j:, j] - std[j:, j]), 100 * (mean[j:, j] + std[j:, j]),
                            color=colours(j % 20), alpha=0.15, linewidth=0)
    seen = np.array([[np.nanmean(run[i, : i + 1]) for i in range(t)] for run in stack])  # (runs, T)
    avg = seen.mean(axis=0)
    ax.plot(x, 100 * avg, color="black", linewidth=2.0, linestyle="--", label="average (seen tasks)")
    if len(stack) > 1:
        sd = seen.std(axis=0, ddof=1)
        ax.fill_between(x, 100 * (avg - sd), 100 * (avg + sd), color="black", alpha=0.1, linewidth=0)
    ax.set_xticks(x)
    rotate = max(len(n) for n in ticks) > 4
    ax.set_xticklabels(ticks, rotation=45 if rotate else 0, ha="right" if rotate else "center")
    ax.set_xlabel(f"after training task{_axis_word(names)}")
    ax.set_ylabel("test accuracy (%)")
    low = np.nanmin(100 * stack[:, np.tril_indices(t)[0], np.tril_indices(t)[1]])
    ax.set_ylim(max(0.0, math.floor((low - 5) / 10) * 10), 101)
    ax.grid(axis="y", alpha=0.3)
    runs = len(stack)
    ax.set_title((title + "\n" if title else "") + (f"mean ± std over {runs} runs" if runs > 1 else "one run"),
                 fontsize=FONT)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, title="task")
    fig.tight_layout()
    return fig
