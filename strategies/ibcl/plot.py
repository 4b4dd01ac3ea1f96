"""Pareto fronts of IBCL for two tasks (the official first-two-task figure).

For each preference over tasks ``(a, b)``, ``n_samples`` models are drawn from the preference's HDR and tested on
both tasks; the preference's model is the one IBCL returns for it (the best sample by preference-weighted
validation accuracy). The front drawn is the true non-dominated set of every plotted model (no model of the plot is
at least as good on both tasks and better on one). A caller's own preference over all seen tasks (``extra``) is
added as one more marked point. The official figure's "estimated Pareto" point (the sample maximising
``acc_a^2 + acc_b^2``, chosen on test data) is kept in the returned dict for comparison, not drawn.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from clkit._io import replace_atomic
from clkit.data import TensorData
from strategies.ibcl.bayes import segment_lengths
from strategies.ibcl.credal import stage_seed
from strategies.ibcl.evaluation import draw_models, region, task_accuracies

if TYPE_CHECKING:
    from strategies.ibcl import IBCL

__all__ = ["OFFICIAL_PREFERENCES", "non_dominated", "pareto_points", "plot_pareto"]

OFFICIAL_PREFERENCES = ((0.1, 0.9), (0.25, 0.75), (0.5, 0.5), (0.75, 0.25), (0.9, 0.1))


def non_dominated(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the points no other point weakly dominates with one strict improvement (maximisation), sorted by
    the first coordinate."""
    pts = torch.as_tensor([list(p) for p in points], dtype=torch.float64)  # (n, 2)
    keep = []
    for i in range(len(pts)):
        ge = (pts >= pts[i]).all(1) & (pts > pts[i]).any(1)
        if not bool(ge.any()):
            keep.append(i)
    uniq: dict[tuple[float, float], int] = {}
    for i in keep:
        uniq.setdefault((float(pts[i, 0]), float(pts[i, 1])), i)
    return sorted(uniq.values(), key=lambda i: (float(pts[i, 0]), -float(pts[i, 1])))


def pareto_points(module: IBCL, tasks: tuple[int, int], data: Sequence[TensorData], *,
                  preferences: Sequence[Sequence[float]] = OFFICIAL_PREFERENCES, n_samples: int = 200,
                  alpha: float | None = None, seed: int = 0,
                  extra: Sequence[float] | None = None) -> dict[str, Any]:
    """Accuracies on tasks ``(a, b)`` of models sampled for preferences that weigh only those two tasks.

    Args:
        module: A trained IBCL (at least ``max(a, b) + 1`` tasks in its knowledge base).
        tasks: The two task indices ``(a, b)``.
        data: Evaluation data of task ``a`` and task ``b`` (usually their test sets).
        preferences: ``(w_a, w_b)`` pairs summing to 1 (default: the official figure's five).
        n_samples: Models per preference (official: 200).
        alpha: HDR level, paper convention (default: the module's; the official figure uses 0.05).
        seed: Seed of the sampling.
        extra: A preference over tasks ``0..i`` whose generated model (:meth:`IBCL.generate_theta`) is added.

    Returns:
        ``{"tasks", "preferences", "samples" (per preference, n x 2), "mean_model" (per preference, 2),
        "selected" (per preference, 2: the model IBCL returns), "estimated_pareto" (per preference, 2),
        "front" (the non-dominated points, sorted), "extra" (None or {"preference", "acc"})}``.
    """
    a, b = tasks
    if a == b or min(a, b) < 0 or max(a, b) >= module.kb.num_tasks or len(data) != 2:
        raise ValueError(f"tasks must be two different tasks among 0..{module.kb.num_tasks - 1} with data for each, "
                         f"got tasks={tasks} and {len(data)} data sets")
    opts = module.opts if alpha is None else dataclasses.replace(module.opts, alpha=alpha)
    gen = torch.Generator().manual_seed(stage_seed(seed, 10_000 + a * 1_000 + b))
    out: dict[str, Any] = {"tasks": [a, b], "alpha": opts.alpha, "preferences": [], "samples": [], "mean_model": [],
                           "selected": [], "estimated_pareto": [], "extra": None}
    val = module._val_data()
    for w_a, w_b in preferences:
        w = torch.zeros(max(a, b) + 1, dtype=torch.float64)
        w[a], w[b] = w_a, w_b
        hdr = region(module.kb, w, opts, gen)
        thetas = draw_models(hdr, n_samples, opts, segment_lengths(module.sizes), gen).to(module.matrix_thetas.dtype)
        thetas = torch.cat([thetas, hdr.mean.to(thetas.dtype).unsqueeze(0)])  # (n + 1, P): samples, then the mean
        acc = task_accuracies(thetas, data, module.features, module.sizes)  # (n + 1, 2)
        best = int(acc[:-1].pow(2).sum(1).argmax())
        val_acc = task_accuracies(thetas[:-1], [val[a], val[b]], module.features, module.sizes)  # (n, 2)
        chosen = int((val_acc.double() @ torch.tensor([w_a, w_b], dtype=torch.float64)).argmax())
        out["preferences"].append([float(w_a), float(w_b)])
        out["samples"].append(acc[:-1].tolist())
        out["mean_model"].append(acc[-1].tolist())
        out["selected"].append(acc[chosen].tolist())
        out["estimated_pareto"].append(acc[best].tolist())
    if extra is not None:
        theta = module.generate_theta(list(extra), seed=seed).unsqueeze(0)
        out["extra"] = {"preference": [float(v) for v in extra],
                        "acc": task_accuracies(theta, data, module.features, module.sizes)[0].tolist()}
    every = [p for group in out["samples"] for p in group] + out["mean_model"] + out["selected"]
    every += [out["extra"]["acc"]] if out["extra"] else []
    out["front"] = [every[i] for i in non_dominated(every)]
    return out


def plot_pareto(points: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Scatter the sampled models per preference, their centres (x), the preference models (*), a caller's
    preference (diamond) and the non-dominated front of all of them (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, b = points["tasks"]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    colors = plt.get_cmap("viridis")
    n = len(points["preferences"])
    for i, (w, samples, mean) in enumerate(zip(points["preferences"], points["samples"], points["mean_model"])):
        xy = torch.tensor(samples)
        c = colors(i / max(1, n - 1))
        ax.scatter(xy[:, 0], xy[:, 1], s=8, alpha=0.35, color=c, label=f"w = ({w[0]:.2f}, {w[1]:.2f})")
        ax.scatter([mean[0]], [mean[1]], marker="x", s=50, color=c)
    chosen = torch.tensor(points["selected"])
    ax.scatter(chosen[:, 0], chosen[:, 1], marker="*", s=120, color="k", zorder=3,
               label="preference models (selected on validation)")
    if points.get("extra"):
        e = points["extra"]
        ax.scatter([e["acc"][0]], [e["acc"][1]], marker="D", s=70, color="tab:orange", zorder=4,
                   label="w = (" + ", ".join(f"{v:.2f}" for v in e["preference"]) + ")")
    front = points["front"]
    ax.step([p[0] for p in front], [p[1] for p in front], "r-", where="pre", lw=1.2,
            label="non-dominated front of the plotted models")
    ax.scatter([p[0] for p in front], [p[1] for p in front], s=14, color="r", zorder=3)
    ax.set_xlabel(f"accuracy on task {a}")
    ax.set_ylabel(f"accuracy on task {b}")
    ax.set_title(title or f"IBCL trade-off between tasks {a} and {b} (alpha = {points['alpha']:.3g}); x = region centre",
                 fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    out = Path(path)
    replace_atomic(lambda tmp: fig.savefig(tmp, dpi=110), out)
    plt.close(fig)
    return out
