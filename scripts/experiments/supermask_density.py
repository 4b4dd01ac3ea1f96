"""Seed sweeps of SupSup and ExSSNeT on MNIST-5k (docs/results/supermask.md): one JSON line per run.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python scripts/experiments/supermask_density.py \\
        --method exssnet --density 0.02 --seeds 0 1 2 3 4 --out runs/density.jsonl

Protocol (issue 12's): permuted MNIST-5k (5 tasks, task-IL, 10-way heads) or split MNIST-5k (5 x 2 classes), LeNet
784-300-100 as ``MaskedMLP(hidden=[300, 100], norm=False)``, batch 64, clkit's seeded 10 % validation split. SupSup:
10 epochs, Adam lr 0.01 (weight decay 1e-4 on the scores). ExSSNeT: 10 mask + 10 weight epochs at the method's
default lrs; ``--official``: Adam lr 0.001 in both phases and one top-k per layer (``per_row="none"``), as the
official code and clkit before issue 12. ``--set key=value`` overrides a strategy argument (JSON value),
``--data key=value`` a scenario argument. Each line records the test and validation ACC, the diagonals, the kept
epochs (ExSSNeT) and the task-identification accuracy (task inference), and the wall time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from clkit.loop import fit_stream, trainer_factory
from scenarios.mnist import PermutedMNIST, SplitMNIST
from strategies.supermask import ExSSNeT, MaskedMLP, SupSup

ROOT = "/work/data/mnist5k"
PROTOCOL: dict[str, dict[str, Any]] = {
    "supsup": {"epochs": 10, "args": {"optimizer": {"class_path": "torch.optim.Adam",
                                                    "init_args": {"lr": 0.01, "weight_decay": 1e-4}}}},
    "exssnet": {"epochs": 20, "args": {"mask_epochs": 10, "weight_epochs": 10}},  # lrs: the method's defaults
}
OFFICIAL: dict[str, dict[str, Any]] = {  # issue 12's protocol: the official lrs and one top-k per layer
    "supsup": {"per_row": "none"},
    "exssnet": {"per_row": "none", "mask_lr": 0.001,
                "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.001}}},
}


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _pairs(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = _value(value)
    return out


def stream(name: str, seed: int, val_fraction: float, **kwargs: Any) -> Any:
    common = {"dataset_root": ROOT, "download": False, "n_experiences": 5, "setting": "task-il", "seed": seed,
              "val_fraction": val_fraction, "batch_size": 64, **kwargs}
    return PermutedMNIST(**common) if name == "pmnist" else SplitMNIST(**common)


def unreachable_classes(strategy: Any) -> list[int]:
    """Per learned task, how many of its classes no input reaches through the task's masks (a dead logit)."""
    layers = strategy._masked()
    out = []
    for task in strategy.learned:
        alive = torch.ones(layers[0].weight.shape[1], dtype=torch.bool)
        for layer in layers:
            alive = (layer.bool_mask(task).float() @ alive.float()) > 0  # (out, in) @ (in,) -> (out,)
        out.append(int((~alive[: strategy.classes_per_task[task]]).sum()))
    return out


def run_one(method: str, scenario: str, density: float, seed: int, val_fraction: float, overrides: dict[str, Any],
            data: dict[str, Any], hidden: list[int], norm: bool, official: bool = False) -> dict[str, Any]:
    proto = PROTOCOL[method]
    args = {**proto["args"], **(OFFICIAL[method] if official else {}), "density": density, "seed": seed, **overrides}
    epochs = int(args.pop("epochs", proto["epochs"]))
    cls = SupSup if method == "supsup" else ExSSNeT
    strategy = cls(backbone=MaskedMLP(hidden=hidden, norm=norm), **args)
    t0 = time.perf_counter()
    result = fit_stream(strategy, stream(scenario, seed, val_fraction, **data), trainer_factory(max_epochs=epochs))
    seconds = time.perf_counter() - t0
    acc = result.accuracy_matrix
    val = result.val_accuracy_matrix
    extra = strategy.extra_results(acc)
    row: dict[str, Any] = {
        "method": method, "scenario": scenario, "density": density, "seed": seed, "val_fraction": val_fraction,
        "overrides": overrides, "official": official, "data": data, "hidden": hidden, "norm": norm, "threads": torch.get_num_threads(),
        "acc": float(acc[-1].mean()), "diag": [round(float(v), 4) for v in acc.diagonal()],
        "val_acc": None if val is None else float(val[-1].mean()),
        "val_diag": None if val is None else [round(float(v), 4) for v in val.diagonal()],
        "seconds": round(seconds, 1),
    }
    row["unreachable_classes"] = unreachable_classes(strategy)
    for key in ("kept_epochs", "best_validation", "task_id_accuracy", "free_capacity"):
        if key in extra:
            row[key] = extra[key]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=sorted(PROTOCOL), required=True)
    parser.add_argument("--scenario", choices=["pmnist", "splitmnist"], default="pmnist")
    parser.add_argument("--density", type=float, nargs="+", default=[0.02])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--hidden", type=int, nargs="+", default=[300, 100])
    parser.add_argument("--norm", action="store_true", help="per-task BatchNorm after each hidden layer")
    parser.add_argument("--set", nargs="*", default=[], help="strategy arguments, key=JSON value")
    parser.add_argument("--data", nargs="*", default=[], help="scenario arguments, key=JSON value")
    parser.add_argument("--official", action="store_true",
                        help="the official lrs and one top-k per layer (issue 12's protocol) instead of the defaults")
    parser.add_argument("--tag", default="")
    parser.add_argument("--out", type=Path, required=True)
    a = parser.parse_args()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    for density in a.density:
        for seed in a.seeds:
            row = run_one(a.method, a.scenario, density, seed, a.val_fraction, _pairs(a.set), _pairs(a.data),
                          a.hidden, a.norm, a.official)
            row["tag"] = a.tag
            with a.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps({k: row[k] for k in ("method", "density", "seed", "acc", "val_acc", "seconds")}),
                  flush=True)


if __name__ == "__main__":
    main()
