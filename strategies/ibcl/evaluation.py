"""IBCL's options (clean vs. faithful) and its per-stage evaluation: preferences -> HDRs -> sampled models ->
validation selection -> test accuracies and the preference metrics (``docs/methods/ibcl.md``).

Everything here works on a :class:`~strategies.ibcl.credal.KnowledgeBase`, flat parameter vectors and plain
:class:`~clkit.data.TensorData`; the Lightning module only calls :func:`select_stage` and :func:`test_stage`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from clkit.data import TensorData
from strategies.ibcl.bayes import mlp_forward
from strategies.ibcl.credal import KnowledgeBase, PreferenceKind, combination_weights, preferences, stage_seed
from strategies.ibcl.hdr import HDR, Combine, SamplePer, Threshold, build_hdr, paper_alpha
from strategies.ibcl.metrics import (
    average_per_task,
    bt_ibcl,
    oracle_per_task,
    peak_per_task,
    preference_weighted_accuracy,
    select_by_validation,
    weight_rank_correlation,
)

__all__ = ["DEFAULT_D_REL", "IBCLOptions", "StageSelection", "draw_models", "prune_threshold", "reference_preferences",
           "region", "resolve_options", "select_stage", "task_accuracies", "test_stage"]

Features = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class IBCLOptions:
    """Resolved switches (clean default vs. official behaviour) and evaluation sizes."""

    objective: Literal["elbo", "official"] = "elbo"
    init: Literal["standard", "official"] = "standard"
    distance: Literal["w2", "official"] = "w2"
    d: float | None = None  # None: DEFAULT_D_REL * mean prior std * sqrt(P) (see prune_threshold)
    combine: Combine = "mixture"
    threshold: Threshold = "bound"
    alpha: float = 0.01  # paper convention: the HDR has mass 1 - alpha
    sample_per: SamplePer = "coordinate"
    selection: Literal["validation", "test_oracle"] = "validation"
    preference_kind: PreferenceKind = "dirichlet"
    eval_drop_last: bool = False
    eval_batch_size: int = 1024
    num_preferences: int = 10
    num_samples: int = 10
    n_hdr_samples: int = 10_000
    sample_scale: float = 1.0


DEFAULT_D_REL = 0.1
"""Default pruning threshold, per coordinate and in units of the chains' mean prior standard deviation ``s``: a
posterior is pruned when its W2 distance to a stored one is at most ``DEFAULT_D_REL * mean(s_j) * sqrt(P)``
(posteriors, and the distances between them, scale with the prior's width; ``docs/methods/ibcl.md``, "Pruning")."""

_FAITHFUL: dict[str, Any] = {"objective": "official", "init": "official", "distance": "official", "d": 0.01,
                             "combine": "moment_average", "sample_per": "tensor", "selection": "test_oracle",
                             "preference_kind": "normalized_uniform", "eval_drop_last": True, "eval_batch_size": 64}


def resolve_options(*, faithful: bool, alpha: float | None, alpha_convention: Literal["paper", "code"] | None,
                    **flags: Any) -> IBCLOptions:
    """Fill every flag left ``None`` from the mode (``faithful`` -> official behaviour, else clean).

    ``alpha=None`` means the mode's default: paper 0.01 (clean) or the official ``--alpha 0.01`` read in the code
    convention, i.e. paper 0.99 (faithful). ``alpha_convention=None`` is ``"code"`` when faithful.
    """
    defaults = IBCLOptions()
    values: dict[str, Any] = {}
    for name, value in flags.items():
        if value is None:
            value = _FAITHFUL.get(name, getattr(defaults, name)) if faithful else getattr(defaults, name)
        values[name] = value
    convention = alpha_convention or ("code" if faithful else "paper")
    values["alpha"] = paper_alpha(0.01 if alpha is None else alpha, convention)
    opts = IBCLOptions(**values)
    if opts.combine not in ("mixture", "moment_average"):
        raise ValueError(f"combine={opts.combine!r} is not one of ['mixture', 'moment_average']")
    if opts.threshold not in ("bound", "monte_carlo"):
        raise ValueError(f"threshold={opts.threshold!r} is not one of ['bound', 'monte_carlo']")
    if opts.d is not None and opts.d < 0:
        raise ValueError(f"d must be >= 0, got {opts.d}")
    if not 0.0 <= opts.sample_scale <= 1.0:
        raise ValueError(f"sample_scale must lie in [0, 1], got {opts.sample_scale}")
    if min(opts.num_preferences, opts.num_samples, opts.n_hdr_samples, opts.eval_batch_size) < 1:
        raise ValueError(f"num_preferences, num_samples, n_hdr_samples and eval_batch_size must be >= 1, got {opts}")
    return opts


def prune_threshold(opts: IBCLOptions, num_params: int, prior_std: float) -> float:
    """The pruning threshold ``d`` in use: the given one, else ``DEFAULT_D_REL * prior_std * sqrt(P)`` (W2), with
    ``prior_std`` the chains' mean base prior standard deviation."""
    return float(opts.d) if opts.d is not None else DEFAULT_D_REL * prior_std * num_params ** 0.5


def region(kb: KnowledgeBase, preference: Tensor, opts: IBCLOptions,
           generator: torch.Generator | None = None) -> HDR:
    """Preference over tasks ``0..i`` -> convex weights over the KB points -> HDR at level ``opts.alpha``."""
    mus, sigmas = kb.stacked()
    beta = combination_weights(preference, kb.slots, len(kb))
    return build_hdr(beta, mus, sigmas, opts.alpha, combine=opts.combine, threshold=opts.threshold,
                     n_hdr_samples=opts.n_hdr_samples, generator=generator)


def draw_models(hdr: HDR, k: int, opts: IBCLOptions, segments: Sequence[int],
                generator: torch.Generator | None = None) -> Tensor:
    """``k`` parameter vectors from the region, (k, P)."""
    hdr.scale = opts.sample_scale
    return hdr.sample(k, generator=generator, per=opts.sample_per, segments=segments)


@torch.no_grad()
def task_accuracies(thetas: Tensor, datasets: Sequence[TensorData], features: Features, sizes: Sequence[int], *,
                    batch_size: int = 1024, drop_last: bool = False) -> Tensor:
    """Accuracy of every model on every dataset, (n, L); ``drop_last`` mimics the official test loader.

    Binary heads (one logit) predict ``1[sigmoid(z) >= 0.5]``, wider heads the argmax. Datasets that share their
    input tensor (CelebA's attribute tasks share the images) are predicted once.
    """
    out = torch.zeros(thetas.shape[0], len(datasets), dtype=torch.float64)
    Key = tuple[int, tuple[int, ...], int, int]
    keys: list[Key] = []
    parts: dict[Key, tuple[TensorData, int]] = {}
    for data in datasets:
        n = len(data)
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        key = (data.x.data_ptr(), tuple(data.x.shape), stop, id(data.transform))
        keys.append(key)
        parts.setdefault(key, (data, stop))
    cache: dict[Key, Tensor] = {}
    small = [k for k, (d, stop) in parts.items() if d.transform is None and stop <= batch_size]
    if len(small) > 1 and len({parts[k][0].x.shape[1:] for k in small}) == 1:  # small splits: one forward pass
        xs = [parts[k][0].x[: parts[k][1]] for k in small]
        joined = TensorData(torch.cat(xs), torch.zeros(sum(len(x) for x in xs), dtype=torch.long),
                            torch.zeros(sum(len(x) for x in xs), dtype=torch.long))
        preds = _predictions(thetas, joined, len(joined), features, sizes, max(batch_size, len(joined)))
        for k, chunk in zip(small, preds.split([len(x) for x in xs], dim=1)):
            cache[k] = chunk
    for col, (data, key) in enumerate(zip(datasets, keys)):
        if key not in cache:
            cache[key] = _predictions(thetas, data, key[2], features, sizes, batch_size)
        out[:, col] = (cache[key] == data.y[: key[2]].to(thetas.device)).double().mean(-1).cpu()
    return out


def _predictions(thetas: Tensor, data: TensorData, stop: int, features: Features, sizes: Sequence[int],
                 batch_size: int) -> Tensor:
    """Predicted labels of every model on the first ``stop`` samples, (n, stop)."""
    preds = []
    for start in range(0, stop, batch_size):
        x, _, _ = data[start : min(start + batch_size, stop)]  # a slice: views, no copy
        logits = mlp_forward(thetas, features(x.to(thetas.device)), sizes)  # (n, B, out)
        preds.append((logits[..., 0] >= 0).long() if logits.shape[-1] == 1 else logits.argmax(-1))  # (n, B)
    return torch.cat(preds, dim=1) if preds else thetas.new_zeros(thetas.shape[0], 0, dtype=torch.long)


@dataclass
class StageSelection:
    """The models chosen on validation data at one stage (see :func:`select_stage`), before they are tested.

    Preference rows: the stage's ``M`` preferences, then the one-hot preference on each seen task ``0..i``, then the
    uniform one.
    """

    stage: int
    prefs: Tensor
    """(M, L): the stage's preferences."""
    all_prefs: Tensor
    """(M + L + 1, L): the preferences, the L one-hot preferences, the uniform preference."""
    samples: Tensor
    """(M + L + 1, K, P): the models sampled from each preference's HDR."""
    means: Tensor
    """(M + L + 1, P): each HDR's centre."""
    val: Tensor
    """(M + L + 1, K, L): validation accuracy of every sample on every task."""
    selected: list[int]
    """Per preference row, the index of the sample chosen by preference-weighted validation accuracy."""

    def chosen(self, row: int) -> Tensor:
        """(P,): the model selected for preference row ``row``."""
        return self.samples[row, self.selected[row]].clone()

    @property
    def task_models(self) -> Tensor:
        """(L, P): the models selected for the one-hot preferences (row ``l``: task ``l`` alone)."""
        m = self.prefs.shape[0]
        return torch.stack([self.chosen(m + task) for task in range(self.all_prefs.shape[1])])

    @property
    def uniform_model(self) -> Tensor:
        """(P,): the model selected for the uniform preference."""
        return self.chosen(self.all_prefs.shape[0] - 1)


def reference_preferences(n_tasks: int) -> Tensor:
    """(L + 1, L): the one-hot preference on every task, then the uniform one."""
    return torch.cat([torch.eye(n_tasks, dtype=torch.float64),
                      torch.full((1, n_tasks), 1.0 / n_tasks, dtype=torch.float64)])


def select_stage(kb: KnowledgeBase, val_sets: Sequence[TensorData], features: Features, sizes: Sequence[int],
                 segments: Sequence[int], opts: IBCLOptions, *, seed: int) -> StageSelection:
    """Preferences -> HDRs -> ``K`` sampled models each -> one selected per preference on validation data.

    Stage ``i = len(val_sets) - 1``; the ``M`` preferences are a pure function of ``seed`` and the stage; the one-hot
    and uniform preferences (:func:`reference_preferences`) follow them.
    """
    stage, n_tasks, k = len(val_sets) - 1, len(val_sets), opts.num_samples
    prefs = preferences(stage, opts.num_preferences, seed=seed, kind=opts.preference_kind)  # (M, L)
    all_prefs = torch.cat([prefs, reference_preferences(n_tasks)])  # (M + L + 1, L)
    gen = torch.Generator().manual_seed(stage_seed(seed, stage) + 1)
    hdrs = [region(kb, w, opts, gen) for w in all_prefs]
    samples = torch.stack([draw_models(h, k, opts, segments, gen) for h in hdrs])  # (M + L + 1, K, P)
    n_p, p = all_prefs.shape[0], samples.shape[-1]
    val = task_accuracies(samples.reshape(n_p * k, p), list(val_sets), features, sizes,
                          batch_size=opts.eval_batch_size).reshape(n_p, k, n_tasks)  # (n_p K, L) -> (n_p, K, L)
    selected = [select_by_validation(val[i], all_prefs[i]) for i in range(n_p)]
    return StageSelection(stage, prefs, all_prefs, samples, torch.stack([h.mean for h in hdrs]), val, selected)


def test_stage(sel: StageSelection, kb: KnowledgeBase, tests: Sequence[TensorData], features: Features,
               sizes: Sequence[int], opts: IBCLOptions) -> dict[str, Any]:
    """Test the stage's models on the test data of tasks ``0..i``: the preference metrics, as a JSON-able dict."""
    n_p, k, n_tasks = sel.samples.shape[0], sel.samples.shape[1], len(tests)
    flat = sel.samples.reshape(n_p * k, -1)  # (n_p, K, P) -> (n_p K, P)
    test = task_accuracies(torch.cat([flat, sel.means]), list(tests), features, sizes,
                           batch_size=opts.eval_batch_size, drop_last=opts.eval_drop_last)  # (n_p (K + 1), L)
    test_s, test_mean = test[: n_p * k].reshape(n_p, k, n_tasks), test[n_p * k :]
    chosen = torch.stack([test_s[i, sel.selected[i]] for i in range(n_p)])  # (n_p, L)
    chosen_val = torch.stack([sel.val[i, sel.selected[i]] for i in range(n_p)])  # (n_p, L)
    m, prefs = sel.prefs.shape[0], sel.prefs
    oracle = torch.stack([oracle_per_task(test_s[i]) for i in range(m)])  # (M, L)
    reported = chosen[:m] if opts.selection == "validation" else oracle
    per_task = preference_weighted_accuracy(prefs, reported)
    onehot = slice(m, m + n_tasks)
    return {
        "stage": sel.stage, "preferences": prefs.tolist(),
        "selection": "validation" if opts.selection == "validation" else "test-oracle",
        "selected_index": sel.selected[:m], "reported_test_acc": reported.tolist(),
        "reported_val_acc": chosen_val[:m].tolist(),
        "sample_test_acc_mean": test_s[:m].mean(1).tolist(), "sample_test_acc_min": test_s[:m].min(1).values.tolist(),
        "sample_test_acc_max": test_s[:m].max(1).values.tolist(), "mean_model_test_acc": test_mean[:m].tolist(),
        "per_task_acc": per_task.tolist(), "avg_per_task_acc": average_per_task(per_task),
        "peak_per_task_acc": peak_per_task(per_task), "bt_ibcl": bt_ibcl(per_task),
        "val_per_task_acc": preference_weighted_accuracy(prefs, chosen_val[:m]).tolist(),
        "spearman": weight_rank_correlation(prefs, reported),
        "per_task_acc_mean_model": preference_weighted_accuracy(prefs, test_mean[:m]).tolist(),
        "per_task_acc_sample_mean": preference_weighted_accuracy(prefs, test_s[:m].mean(1)).tolist(),
        "task_models": {"test_acc": chosen[onehot].tolist(), "val_acc": chosen_val[onehot].tolist()},
        "uniform_model": {"preference": sel.all_prefs[-1].tolist(), "val_acc": chosen_val[-1].tolist(),
                          "test_acc": chosen[-1].tolist()},
        "kb_size": len(kb), "slots": kb.slots[sel.stage], "nn_distances": kb.nn_distances[sel.stage],
    }
