"""Task inference without task ids on split MNIST-5k (docs/results/supermask.md): one JSON line per run and mode.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python scripts/experiments/supermask_inference.py --seeds 0 1 2 3 4 \\
        --out runs/inference.jsonl

Trains SupSup as ``configs/supsup_splitmnist.yaml`` (LeNet 784-300-100 with per-task BatchNorm, density 0.05,
Adam lr 1e-3 with weight decay 1e-4, batch 128, 20 epochs, 10 % validation split; ``--scenario digits``:
``configs/supsup_digits.yaml``) once per seed with task ids, then evaluates the final model's test sets with every
task-inference mode and test batch size (one task per batch): the fraction of test batches whose task is
identified and the accuracy with the inferred masks. ``--superfluous s``
trains with ``s`` superfluous outputs (SupSup's G objective for one-shot inference).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from clkit.loop import fit_stream, trainer_factory
from scenarios.digits import SplitDigits
from scenarios.mnist import SplitMNIST
from strategies.supermask import MaskedMLP, SupSup

MODES: list[tuple[str, str]] = [("exhaustive", "batch"), ("oneshot", "batch"), ("oneshot", "mixture"),
                                ("binary", "batch"), ("binary", "mixture")]


def evaluate(strategy: SupSup, stream: Any, mode: str, bn_infer: str, batch_size: int) -> dict[str, Any]:
    """Last-row test accuracy and task-identification rate of ``strategy`` with ``mode`` inference, test batches of
    ``batch_size`` (one task per batch)."""
    strategy.task_inference, strategy.bn_infer = mode, bn_infer  # type: ignore[assignment]
    stream.eval_batch_size = batch_size
    strategy.task_id_hits = {}
    row = len(stream.experiences) - 1
    strategy.eval()
    strategy.on_evaluation_start("test", row)
    accs = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for exp in stream.experiences:
            correct = total = 0
            for x, y, t in stream.eval_loader(exp.test):
                correct += int((strategy.predict(x, t) == y).sum())
                total += len(y)
            accs.append(correct / total)
    strategy.on_evaluation_end("test", row, [])
    ids = strategy.task_id_accuracy()[row]
    return {"mode": mode, "bn_infer": bn_infer, "batch_size": batch_size, "acc": sum(accs) / len(accs), "per_task": [round(a, 4) for a in accs],
            "batches_identified": ids, "seconds": round(time.perf_counter() - t0, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--superfluous", type=int, default=0)
    parser.add_argument("--scenario", choices=["splitmnist", "digits"], default="splitmnist")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 64, 16])
    parser.add_argument("--out", type=Path, required=True)
    a = parser.parse_args()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    for seed in a.seeds:
        kwargs: dict[str, Any] = {"superfluous": a.superfluous} if a.superfluous else {}
        if a.scenario == "splitmnist":  # configs/supsup_splitmnist.yaml
            stream: Any = SplitMNIST(dataset_root="/work/data/mnist5k", download=False, n_experiences=5,
                                     setting="task-il", seed=seed, val_fraction=0.1, batch_size=128)
            hidden, density, lr, epochs = [300, 100], 0.05, 1e-3, 20
        else:  # configs/supsup_digits.yaml
            stream = SplitDigits(n_experiences=5, setting="task-il", seed=seed, val_fraction=0.1, batch_size=32)
            hidden, density, lr, epochs = [256, 256], 0.1, 1e-2, 10
        strategy = SupSup(backbone=MaskedMLP(hidden=hidden, norm=True), density=density, seed=seed,
                          optimizer={"class_path": "torch.optim.Adam", "init_args": {"lr": lr, "weight_decay": 1e-4}},
                          **kwargs)
        t0 = time.perf_counter()
        result = fit_stream(strategy, stream, trainer_factory(max_epochs=epochs))
        train_seconds = round(time.perf_counter() - t0, 1)
        base = {"scenario": a.scenario, "seed": seed, "superfluous": a.superfluous, "task_aware_acc": result.metrics["acc"],
                "train_seconds": train_seconds}
        for batch_size in a.batch_sizes:
            for mode, bn_infer in MODES:
                row = {**base, **evaluate(strategy, stream, mode, bn_infer, batch_size)}
                with a.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps({k: row[k] for k in ("seed", "batch_size", "mode", "bn_infer", "acc",
                                                      "batches_identified")}), flush=True)


if __name__ == "__main__":
    main()
