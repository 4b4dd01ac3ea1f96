"""What picking one stored model per preference can reach at best, with exact posteriors (a diagnostic).

    python scripts/experiments/ibcl_ceiling.py --dataset digits --seeds 0 1 2 3 4

IBCL's default region is the HDR of a mixture of the stored posteriors, so every model it returns sits in one
component's high-density core: for separated components, a preference is served by *one* stored posterior. This
script replaces IBCL's variational chains by exact maximum-likelihood logistic regressions (scikit-learn, C = 1) of
the same three kinds per task ``i`` -- trained on tasks ``0..i`` with weights ``1`` (the VCL chain's target),
``0.5^(i-k)`` (a tempered chain's), and on task ``i`` alone -- and, per preference, picks the best of them by
preference-weighted validation accuracy, as IBCL does. It also trains one logistic regression per preference on the
preference-weighted loss (what the zero-shot models are compared with). Both report the preference-weighted average
per-task test accuracy per stage, for the same preferences as every method.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ibcl_pairs import CONFIGS, DEFAULT_FEATURES, stream  # noqa: E402


def _fit(exps: list[Any], weights: np.ndarray) -> Any:
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([e.train.x.flatten(1).numpy() for e in exps])
    y = np.concatenate([e.train.y.numpy() for e in exps])
    task = np.concatenate([np.full(len(e.train), k) for k, e in enumerate(exps)])
    sizes = np.array([len(e.train) for e in exps])
    w = weights[task] / sizes[task]
    keep = w > 0
    return LogisticRegression(C=1.0, max_iter=5000).fit(x[keep], y[keep], sample_weight=w[keep] / w[keep].mean())


def _acc(model: Any, parts: list[Any]) -> torch.Tensor:
    return torch.tensor([model.score(p.x.flatten(1).numpy(), p.y.numpy()) for p in parts], dtype=torch.float64)


def run(dataset: str, seed: int, features: Path) -> dict[str, Any]:
    from strategies.ibcl.credal import preferences
    from strategies.ibcl.metrics import preference_weighted_accuracy

    exps = stream(dataset, seed, features).experiences
    comps = []
    for i in range(len(exps)):
        k = np.arange(i + 1)
        for w in (np.ones(i + 1), 0.5 ** (i - k), (k == i).astype(float)):
            comps.append((i, _fit(exps[: i + 1], w)))
    picked, trained = [], []
    for stage in range(len(exps)):
        seen = exps[: stage + 1]
        cands = [c for i, c in comps if i <= stage]
        test = torch.stack([_acc(c, [e.test for e in seen]) for c in cands])
        val = torch.stack([_acc(c, [e.val for e in seen]) for c in cands])
        prefs = preferences(stage, 10, seed=seed)
        best = torch.stack([test[int((val @ w).argmax())] for w in prefs])
        picked.append(float(preference_weighted_accuracy(prefs, best).mean()))
        own = torch.stack([_acc(_fit(seen, w.numpy()), [e.test for e in seen]) for w in prefs])
        trained.append(float(preference_weighted_accuracy(prefs, own).mean()))
    return {"dataset": dataset, "seed": seed, "picked_exact": picked, "trained_per_preference": trained}


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=tuple(CONFIGS), default="digits")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--features", type=Path, default=DEFAULT_FEATURES)
    p.add_argument("--out", type=Path, default=Path("runs/ibcl_ceiling"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        row = run(args.dataset, seed, args.features)
        (args.out / f"{args.dataset}_seed{seed}.json").write_text(json.dumps(row) + "\n")
        rows.append(row)
    for key in ("picked_exact", "trained_per_preference"):
        final = [100 * r[key][-1] for r in rows]
        overall = [100 * statistics.mean(r[key]) for r in rows]
        sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
        print(f"{args.dataset} {key}: final stage {statistics.mean(final):.2f} ± {sd(final):.2f}, mean over stages "
              f"{statistics.mean(overall):.2f} ± {sd(overall):.2f} ({len(rows)} seeds)")


if __name__ == "__main__":
    main()
