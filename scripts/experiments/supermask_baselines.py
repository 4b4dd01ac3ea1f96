"""Dense baselines on the supermask density table's stream (docs/results/supermask.md): one JSON line per run.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python scripts/experiments/supermask_baselines.py --method naive \\
        --lr 0.001 0.01 --seeds 0 1 2 3 4 --out runs/baselines.jsonl

The same stream as ``supermask_density.py`` (permuted or split MNIST-5k, 5 tasks, task-IL, batch 64, clkit's seeded
10 % validation split) and the same LeNet 784-300-100 without biases, but dense (``clkit.nets.MLP``) with one linear
head per task: Naive (fine-tuning), EWC (``--ewc-lambda``) and Joint (every experience seen so far, the upper bound),
Adam at ``--lr``, ``--epochs`` epochs per experience. Each line records the test and validation ACC, BWT and the
diagonal.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from clkit.loop import fit_stream, trainer_factory
from clkit.nets import MLP
from scenarios.mnist import PermutedMNIST, SplitMNIST
from strategies import EWC, Joint, Naive

ROOT = "/work/data/mnist5k"


def stream(name: str, seed: int, val_fraction: float) -> Any:
    common = {"dataset_root": ROOT, "download": False, "n_experiences": 5, "setting": "task-il", "seed": seed,
              "val_fraction": val_fraction, "batch_size": 64}
    return PermutedMNIST(**common) if name == "pmnist" else SplitMNIST(**common)


def run_one(method: str, scenario: str, lr: float, seed: int, epochs: int, ewc_lambda: float,
            val_fraction: float) -> dict[str, Any]:
    args: dict[str, Any] = {"backbone": MLP(hidden=[300, 100], bias=False), "seed": seed,
                            "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": lr}}}
    if method == "ewc":
        strategy: Any = EWC(ewc_lambda=ewc_lambda, **args)
    else:
        strategy = Naive(**args) if method == "naive" else Joint(**args)
    t0 = time.perf_counter()
    result = fit_stream(strategy, stream(scenario, seed, val_fraction), trainer_factory(max_epochs=epochs))
    acc, val = result.accuracy_matrix, result.val_accuracy_matrix
    return {"method": method, "scenario": scenario, "lr": lr, "epochs": epochs, "seed": seed,
            "ewc_lambda": ewc_lambda if method == "ewc" else None, "threads": torch.get_num_threads(),
            "acc": float(acc[-1].mean()), "bwt": float(result.metrics["bwt"]),
            "diag": [round(float(v), 4) for v in acc.diagonal()],
            "val_acc": None if val is None else float(val[-1].mean()),
            "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=["naive", "ewc", "joint"], required=True)
    parser.add_argument("--scenario", choices=["pmnist", "splitmnist"], default="pmnist")
    parser.add_argument("--lr", type=float, nargs="+", default=[0.001])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--ewc-lambda", type=float, default=100.0)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--out", type=Path, required=True)
    a = parser.parse_args()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    for lr in a.lr:
        for seed in a.seeds:
            row = run_one(a.method, a.scenario, lr, seed, a.epochs, a.ewc_lambda, a.val_fraction)
            with a.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps({k: row[k] for k in ("method", "lr", "seed", "acc", "val_acc", "seconds")}), flush=True)


if __name__ == "__main__":
    main()
