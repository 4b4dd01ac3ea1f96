"""Paper-ready figures: vector + >= 200 dpi PNG, percent throughout, task names on ticks, future cells marked, zoomed
report bars that state seeds and setting, and the stream plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clkit.figures import matrix_figure, save_figure, stream_figure

NAMES = ["classes 0,1", "classes 2,3", "classes 4,5"]
R = np.array([[0.90, 0.50, 0.45], [0.85, 0.95, 0.52], [0.80, 0.90, 0.97]])


def _keep_saved_figure(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """``captured["fig"]`` becomes the last figure saved (so a test can inspect what a plot function wrote)."""
    import matplotlib.pyplot as plt

    captured: dict[str, object] = {}
    original = plt.Figure.savefig

    def keep(self: plt.Figure, *args: object, **kwargs: object) -> None:
        captured["fig"] = self
        original(self, *args, **kwargs)

    monkeypatch.setattr(plt.Figure, "savefig", keep)
    return captured


def test_matrix_figure_percent_task_names_and_hatched_future_cells() -> None:
    from matplotlib.patches import Rectangle

    fig = matrix_figure(R, NAMES, title="t")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0,1", "2,3", "4,5"]
    assert "classes" in ax.get_xlabel() and "classes" in ax.get_ylabel()
    cells = sorted(t.get_text() for t in ax.texts)
    assert cells == sorted(f"{100 * v:.0f}" for v in R.ravel())  # percent in the cells ...
    assert fig.axes[1].get_ylabel() == "accuracy (%)" and fig.axes[1].get_ylim()[1] == 100.0  # ... and on the bar
    hatched = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_hatch()]
    assert sorted((round(p.get_y() + 0.5), round(p.get_x() + 0.5)) for p in hatched) == [(0, 1), (0, 2), (1, 2)]


def test_a_stream_in_progress_leaves_the_rows_not_reached_empty() -> None:
    fig = matrix_figure(R, NAMES, upto=0)
    assert sorted(t.get_text() for t in fig.axes[0].texts) == sorted(f"{100 * v:.0f}" for v in R[0])


def test_save_figure_writes_a_pdf_and_a_png_of_at_least_200_dpi(tmp_path: Path) -> None:
    from PIL import Image

    png, pdf = save_figure(matrix_figure(R, NAMES), tmp_path / "m.png")
    assert pdf.read_bytes().startswith(b"%PDF")
    dpi = Image.open(png).info["dpi"]
    assert min(dpi) >= 199.5


def test_stream_figure_a_line_per_task_from_its_own_experience_and_the_average() -> None:
    runs = [R, R - 0.02, R + 0.02]
    fig = stream_figure(runs, NAMES)
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert len(lines) == 4  # a task each, and the average over the tasks seen
    for j, line in enumerate(lines[:3]):
        assert list(line.get_xdata()) == list(range(j, 3))
        assert np.allclose(line.get_ydata(), 100 * R[j:, j])  # the mean over runs, in percent
    seen = [R[i, : i + 1].mean() * 100 for i in range(3)]
    assert np.allclose(lines[3].get_ydata(), seen)
    assert ax.get_ylabel() == "test accuracy (%)" and "3 runs" in ax.get_title()
    assert len(ax.collections) == 4  # the std bands


def test_report_bars_are_zoomed_and_state_seeds_and_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clkit.cli.aggregate import Group, SweepRun
    from clkit.cli.plots import plot_bars

    def run(strategy: str, acc: float, seed: int) -> SweepRun:
        res = {"strategy": strategy, "scenario": "SplitDigits", "setting": "task-il",
               "evaluation": {"mode": "task-aware"}, "accuracy_matrix": R.tolist(),
               "metrics": {"acc": acc, "bwt": -0.01, "fwt": 0.0, "forgetting": 0.01}}
        return SweepRun(f"{strategy}{seed}", tmp_path, {"strategy": strategy, "scenario": "SplitDigits"}, "done", res)

    groups = [Group({"strategy": s, "scenario": "SplitDigits"}, [run(s, a + 0.01 * k, k) for k in range(5)])
              for s, a in (("Naive", 0.95), ("GPM", 0.97))]

    captured = _keep_saved_figure(monkeypatch)
    files = plot_bars(tmp_path / "bars.png", groups, [])
    assert [f.suffix for f in files] == [".png", ".pdf"]
    acc_ax, bwt_ax = captured["fig"].axes[:2]
    low, high = acc_ax.get_ylim()
    assert 80 < low < 95 and high <= 100  # zoomed on the values, in percent
    assert acc_ax.get_ylabel() == "ACC (%)" and bwt_ax.get_ylabel() == "BWT (pts)"
    assert "5 seeds" in acc_ax.get_title() and "task-il" in acc_ax.get_title() and "task-aware" in acc_ax.get_title()


@pytest.mark.parametrize("plot", ["plot_matrix_grid", "plot_stream_grid"])
def test_report_grids_wrap_many_strategies_into_lines_of_at_most_six_panels(
        plot: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """17 strategies on two scenarios: every (scenario, strategy) group gets exactly one panel, a scenario's panels
    wrap after MAX_PANEL_COLUMNS, and a scenario never shares a line with another (the figure stays a page wide)."""

    from clkit.cli import plots
    from clkit.cli.aggregate import Group, SweepRun

    def run(strategy: str, scenario: str, seed: int) -> SweepRun:
        res = {"strategy": strategy, "scenario": scenario, "setting": "task-il",
               "evaluation": {"mode": "task-aware"}, "accuracy_matrix": R.tolist(),
               "metrics": {"acc": 0.9, "bwt": 0.0, "fwt": 0.0, "forgetting": 0.0}}
        return SweepRun(f"{strategy}{scenario}{seed}", tmp_path, {"strategy": strategy, "scenario": scenario},
                        "done", res)

    strategies = [f"S{k:02d}" for k in range(17)]
    groups = [Group({"strategy": s, "scenario": sc}, [run(s, sc, k) for k in range(2)])
              for sc, names in (("SplitDigits", strategies), ("PermutedDigits", strategies[:4])) for s in names]
    captured = _keep_saved_figure(monkeypatch)
    getattr(plots, plot)(tmp_path / "grid.png", groups, ["scenario"])
    fig = captured["fig"]
    panels = [ax for ax in fig.axes if ax.axison and ax.get_title()]
    assert sorted(ax.get_title() for ax in panels) == sorted(f"{s} (n=2)" for g in groups for s in [g.labels["strategy"]])
    columns = {round(ax.get_position().x0, 3) for ax in panels}
    assert len(columns) == plots.MAX_PANEL_COLUMNS
    # lines: ceil(17 / 6) = 3 for SplitDigits, 1 for PermutedDigits; each line's first panel names its scenario
    rows = sorted({round(ax.get_position().y0, 3) for ax in panels}, reverse=True)
    assert len(rows) == 4
    firsts = [min((ax for ax in panels if round(ax.get_position().y0, 3) == y), key=lambda a: a.get_position().x0)
              for y in rows]
    assert [ax.get_ylabel().split("\n")[0] for ax in firsts] == [
        "SplitDigits", "SplitDigits (cont.)", "SplitDigits (cont.)", "PermutedDigits"]
    width, _ = fig.get_size_inches()
    assert width < 30


def test_report_bars_give_each_setting_one_colour_and_centre_a_scenarios_bars(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings that occur on different scenarios (task orders on one, train sizes on another): the legend's colour
    of a setting is its bars' colour in every panel, and a scenario's bars sit centred on their tick."""
    from matplotlib.colors import to_hex

    from clkit.cli.aggregate import Group, SweepRun
    from clkit.cli.plots import plot_bars

    def group(strategy: str, scenario: str, order: str, sizes: str) -> Group:
        labels = {"strategy": strategy, "scenario": scenario, "task_order": order, "train_sizes": sizes}
        res = {"strategy": strategy, "scenario": scenario, "setting": "task-il", "evaluation": {"mode": "task-aware"},
               "accuracy_matrix": R.tolist(), "metrics": {"acc": 0.9, "bwt": 0.0, "fwt": 0.0, "forgetting": 0.0}}
        return Group(labels, [SweepRun(f"{strategy}{scenario}{order}{sizes}", tmp_path, labels, "done", res)])

    groups = [group(s, "Split", o, "-") for s in ("A", "B") for o in ("[0,1]", "[1,0]")]
    groups += [group(s, "Rotated", "-", z) for s in ("A", "B") for z in ("null", "[50,300]")]
    captured = _keep_saved_figure(monkeypatch)
    plot_bars(tmp_path / "bars.png", groups, ["task_order", "train_sizes"])
    fig = captured["fig"]
    legend = {t.get_text(): to_hex(h.get_facecolor()) for t, h in zip(fig.legends[0].get_texts(),
                                                                        fig.legends[0].legend_handles)}
    assert set(legend) == {"[0,1], -", "[1,0], -", "-, null", "-, [50,300]"} and len(set(legend.values())) == 4
    split_acc, rotated_acc = fig.axes[0], fig.axes[2]
    for ax, hues in ((split_acc, ["[0,1], -", "[1,0], -"]), (rotated_acc, ["-, null", "-, [50,300]"])):
        patches = sorted(ax.patches, key=lambda p: p.get_x())
        assert sorted({to_hex(p.get_facecolor()) for p in patches}) == sorted(legend[h] for h in hues)
        centre = np.mean([p.get_x() + p.get_width() / 2 for p in patches])
        assert abs(centre - 0.5) < 1e-9  # two strategies at ticks 0 and 1, the bars centred on them
