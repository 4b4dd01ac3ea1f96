"""Knowledge-base growth of IBCL on streams that repeat their tasks (pruning, ``docs/results/ibcl.md``).

    python scripts/experiments/ibcl_repeats.py --dataset digits --repeats 3 --d_rel 0 0.1 0.2 --out runs/ibcl_repeats

The stream is the dataset's first ``--distinct`` pair tasks repeated ``--repeats`` times (``exact``: the same
training / validation / test tensors each time, as one feature file; ``resampled`` (digits only): ``BinaryDigits``
with the pairs repeated, whose validation split is redrawn per experience, so each repeat trains on a different
85 %). For each threshold ``d = d_rel * mean(prior_stds) * sqrt(P)`` (the default is ``DEFAULT_D_REL``) it trains the dataset's IBCL config and prints the knowledge-base
size after every task (the growth curve), the bound ``m x distinct tasks``, and the final stage's average per-task
validation and test accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "experiments"))

from ibcl_pairs import CONFIGS, DEFAULT_FEATURES, stream  # noqa: E402


def repeated_file(dataset: str, distinct: int, repeats: int, seed: int, features: Path, out: Path) -> Path:
    from clkit.data import Experience, TensorData
    from scenarios.features import save_feature_file

    exps = stream(dataset, seed, features).experiences[:distinct]
    rep = []
    for i in range(distinct * repeats):
        e = exps[i % distinct]
        parts = [TensorData(p.x.flatten(1), p.y, p.t.new_full(p.t.shape, i)) for p in (e.train, e.val, e.test)]
        rep.append(Experience(i, i, e.classes, parts[0], parts[1], parts[2], f"{e.name} (repeat {i // distinct})"))
    return save_feature_file(out, rep, setting="domain-il", task_ids_at_test=False)


def run(dataset: str, mode: str, distinct: int, repeats: int, d_rel: float, seed: int, features: Path,
        work: Path, sets: list[str]) -> dict[str, Any]:
    import yaml

    from clkit.cli.fit import run_fit
    from strategies.ibcl.bayes import num_params

    args = ["--config", str(CONFIGS[dataset]), "--seed_everything", str(seed), "--trainer.enable_progress_bar",
            "false", "--run_dir", str(work / f"run_{mode}_{d_rel}")]
    pairs = [[2 * k, 2 * k + 1] for k in range(distinct)] * repeats
    if mode == "exact":
        path = repeated_file(dataset, distinct, repeats, seed, features, work / f"rep_{dataset}.pt")
        args += ["--data", "scenarios.FeatureStream", "--data.init_args.path", str(path),
                 "--data.init_args.val_fraction", "0.0"]
        width = int(stream(dataset, seed, features).experiences[0].train.x[0].numel())
    else:
        if dataset != "digits":
            raise SystemExit("ibcl_repeats: --mode resampled needs --dataset digits")
        args += ["--data.init_args.pairs", json.dumps(pairs)]
        width = 64
    stds = yaml.safe_load(CONFIGS[dataset].read_text())["model"]["init_args"]["prior_stds"]
    d = d_rel * sum(stds) / len(stds) * num_params((width, 1)) ** 0.5
    overrides = [part for item in sets for part in (f"--{item.partition('=')[0]}", item.partition("=")[2])]
    run_dir = run_fit([*args, "--model.init_args.d", str(d), *overrides])
    res = json.loads((run_dir / "results.json").read_text())["ibcl"]
    last = res["stages"][-1]
    m = len(res["stages"][0]["slots"])
    return {"dataset": dataset, "mode": mode, "d_rel": d_rel, "d": d, "kb_size": res["kb_size"],
            "bound": m * distinct, "slots": [s["slots"] for s in res["stages"]],
            "nn_rms": [s["nn_distances_rms"] for s in res["stages"]],
            "val_avg": sum(last["val_per_task_acc"]) / len(last["val_per_task_acc"]),
            "test_avg": last["avg_per_task_acc"], "seed": seed}


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=tuple(CONFIGS), default="digits")
    p.add_argument("--mode", choices=("exact", "resampled"), default="exact")
    p.add_argument("--distinct", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--d_rel", type=float, nargs="+", default=[0.0, 0.1])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--features", type=Path, default=DEFAULT_FEATURES)
    p.add_argument("--out", type=Path, default=Path("runs/ibcl_repeats"))
    p.add_argument("--set", action="append", default=[], help="config override KEY=VALUE (repeatable)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for d_rel in args.d_rel:
            with tempfile.TemporaryDirectory() as work:
                row = run(args.dataset, args.mode, args.distinct, args.repeats, d_rel, seed, args.features,
                          Path(work), args.set)
            name = f"{args.dataset}_{args.mode}_d{d_rel}_seed{seed}.json"
            (args.out / name).write_text(json.dumps(row) + "\n")
            print(f"{name}: KB sizes {row['kb_size']} (bound {row['bound']}), final val {row['val_avg']:.4f} "
                  f"test {row['test_avg']:.4f}", flush=True)


if __name__ == "__main__":
    main()
