"""IBCL's options (clean vs. faithful) and its per-stage evaluation: preferences -> HDRs -> sampled models ->
validation selection -> test accuracies and the preference metrics of spec sections 7-8.

Everything here works on a :class:`~strategies.ibcl.credal.KnowledgeBase`, flat parameter vectors and plain
:class:`~clkit.data.TensorData`; the Lightning module only calls :func:`evaluate_stage`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from clkit.data import Experience, TensorData
from strategies.ibcl.bayes import mlp_forward
from strategies.ibcl.credal import KnowledgeBase, PreferenceKind, combination_weights, preferences, stage_seed
from strategies.ibcl.hdr import HDR, Combine, SamplePer, build_hdr, paper_alpha
from strategies.ibcl.metrics import (
    average_per_task,
    bt_ibcl,
    oracle_per_task,
    peak_per_task,
    preference_weighted_accuracy,
    select_by_validation,
)

__all__ = ["IBCLOptions", "draw_models", "evaluate_stage", "region", "resolve_options", "task_accuracies"]

Features = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class IBCLOptions:
    """Resolved switches of spec section 10 (clean default vs. official behaviour) and evaluation sizes."""

    objective: Literal["elbo", "official"] = "elbo"
    init: Literal["standard", "official"] = "standard"
    distance: Literal["w2", "official"] = "w2"
    d: float = 0.0
    combine: Combine = "moment_average"
    alpha: float = 0.01  # paper convention: the HDR has mass 1 - alpha
    sample_per: SamplePer = "coordinate"
    selection: Literal["validation", "test_oracle"] = "validation"
    preference_kind: PreferenceKind = "dirichlet"
    eval_drop_last: bool = False
    eval_batch_size: int = 1024
    num_preferences: int = 10
    num_samples: int = 10
    n_hdr_samples: int = 10_000


_FAITHFUL: dict[str, Any] = {"objective": "official", "init": "official", "distance": "official", "d": 0.01,
                             "sample_per": "tensor", "selection": "test_oracle",
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
    if opts.d < 0:
        raise ValueError(f"d must be >= 0, got {opts.d}")
    if min(opts.num_preferences, opts.num_samples, opts.n_hdr_samples, opts.eval_batch_size) < 1:
        raise ValueError(f"num_preferences, num_samples, n_hdr_samples and eval_batch_size must be >= 1, got {opts}")
    return opts


def region(kb: KnowledgeBase, preference: Tensor, opts: IBCLOptions,
           generator: torch.Generator | None = None) -> HDR:
    """Preference over tasks ``0..i`` -> convex weights over the KB points -> HDR at level ``opts.alpha``."""
    mus, sigmas = kb.stacked()
    beta = combination_weights(preference, kb.slots, len(kb))
    return build_hdr(beta, mus, sigmas, opts.alpha, combine=opts.combine, n_hdr_samples=opts.n_hdr_samples,
                     generator=generator)


def draw_models(hdr: HDR, k: int, opts: IBCLOptions, segments: Sequence[int],
                generator: torch.Generator | None = None) -> Tensor:
    """``k`` parameter vectors from the region, (k, P)."""
    return hdr.sample(k, generator=generator, per=opts.sample_per, segments=segments)


@torch.no_grad()
def task_accuracies(thetas: Tensor, datasets: Sequence[TensorData], features: Features, sizes: Sequence[int], *,
                    batch_size: int = 1024, drop_last: bool = False) -> Tensor:
    """Accuracy of every model on every dataset, (n, L); ``drop_last`` mimics the official test loader.

    Binary heads (one logit) predict ``1[sigmoid(z) >= 0.5]``, wider heads the argmax. Datasets that share their
    input tensor (CelebA's attribute tasks share the images) are predicted once.
    """
    out = torch.zeros(thetas.shape[0], len(datasets), dtype=torch.float64)
    cache: dict[tuple[int, tuple[int, ...], int, int], Tensor] = {}
    for col, data in enumerate(datasets):
        n = len(data)
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        key = (data.x.data_ptr(), tuple(data.x.shape), stop, id(data.transform))
        if key not in cache:
            cache[key] = _predictions(thetas, data, stop, features, sizes, batch_size)
        out[:, col] = (cache[key] == data.y[:stop].to(thetas.device)).double().mean(-1).cpu()
    return out


def _predictions(thetas: Tensor, data: TensorData, stop: int, features: Features, sizes: Sequence[int],
                 batch_size: int) -> Tensor:
    """Predicted labels of every model on the first ``stop`` samples, (n, stop)."""
    preds = []
    for start in range(0, stop, batch_size):
        x, _, _ = data[torch.arange(start, min(start + batch_size, stop))]
        logits = mlp_forward(thetas, features(x.to(thetas.device)), sizes)  # (n, B, out)
        preds.append((logits[..., 0] >= 0).long() if logits.shape[-1] == 1 else logits.argmax(-1))  # (n, B)
    return torch.cat(preds, dim=1) if preds else thetas.new_zeros(thetas.shape[0], 0, dtype=torch.long)


def _split(exp: Experience) -> TensorData:
    return exp.val if exp.val is not None else exp.train


def evaluate_stage(kb: KnowledgeBase, seen: Sequence[Experience], features: Features, sizes: Sequence[int],
                   segments: Sequence[int], opts: IBCLOptions, *, seed: int) -> tuple[dict[str, Any], Tensor]:
    """Spec sections 6-8 at stage ``i = len(seen) - 1``.

    Draws the stage's ``M`` preferences (a pure function of ``seed`` and the stage) plus the uniform one, samples
    ``K`` models from each HDR, selects one per preference on validation data (the training split of a task with
    no validation split), and tests them.

    Returns:
        ``(result, theta)``: a JSON-serialisable dict of the stage's results, and the parameter vector (P,) selected
        for the uniform preference, which fills the accuracy matrix.
    """
    stage, n_tasks, k = len(seen) - 1, len(seen), opts.num_samples
    prefs = preferences(stage, opts.num_preferences, seed=seed, kind=opts.preference_kind)  # (M, L)
    all_prefs = torch.cat([prefs, torch.full((1, n_tasks), 1.0 / n_tasks, dtype=torch.float64)])  # (M+1, L)
    gen = torch.Generator().manual_seed(stage_seed(seed, stage) + 1)
    hdrs = [region(kb, w, opts, gen) for w in all_prefs]
    samples = torch.stack([draw_models(h, k, opts, segments, gen) for h in hdrs])  # (M+1, K, P)
    n_p, p = all_prefs.shape[0], samples.shape[-1]
    flat = samples.reshape(n_p * k, p)  # (M+1, K, P) -> ((M+1)K, P)
    means = torch.stack([h.mean for h in hdrs])  # (M+1, P)
    bs = opts.eval_batch_size
    test = task_accuracies(torch.cat([flat, means]), [e.test for e in seen], features, sizes, batch_size=bs,
                           drop_last=opts.eval_drop_last)  # ((M+1)(K+1), L)
    val = task_accuracies(flat, [_split(e) for e in seen], features, sizes, batch_size=bs)
    val = val.reshape(n_p, k, n_tasks)  # ((M+1)K, L) -> (M+1, K, L)
    test_s, test_mean = test[: n_p * k].reshape(n_p, k, n_tasks), test[n_p * k :]
    sel = [select_by_validation(val[i], all_prefs[i]) for i in range(n_p)]
    selected = torch.stack([test_s[i, sel[i]] for i in range(n_p)])  # (M+1, L)
    m = prefs.shape[0]
    oracle = torch.stack([oracle_per_task(test_s[i]) for i in range(m)])  # (M, L)
    reported = selected[:m] if opts.selection == "validation" else oracle
    per_task = preference_weighted_accuracy(prefs, reported)
    result = {
        "stage": stage, "preferences": prefs.tolist(),
        "selection": "validation" if opts.selection == "validation" else "test-oracle",
        "selected_index": sel[:m], "reported_test_acc": reported.tolist(),
        "sample_test_acc_mean": test_s[:m].mean(1).tolist(), "sample_test_acc_min": test_s[:m].min(1).values.tolist(),
        "sample_test_acc_max": test_s[:m].max(1).values.tolist(), "mean_model_test_acc": test_mean[:m].tolist(),
        "per_task_acc": per_task.tolist(), "avg_per_task_acc": average_per_task(per_task),
        "peak_per_task_acc": peak_per_task(per_task), "bt_ibcl": bt_ibcl(per_task),
        "per_task_acc_mean_model": preference_weighted_accuracy(prefs, test_mean[:m]).tolist(),
        "per_task_acc_sample_mean": preference_weighted_accuracy(prefs, test_s[:m].mean(1)).tolist(),
        "matrix_model": {"preference": all_prefs[m].tolist(), "val_acc": val[m, sel[m]].tolist(),
                         "test_acc": selected[m].tolist()},
        "kb_size": len(kb), "slots": kb.slots[stage], "nn_distances": kb.nn_distances[stage],
    }
    return result, samples[m, sel[m]].clone()
