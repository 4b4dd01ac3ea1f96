"""Cost of GPM / TRGP / CUBER relative to Naive fine-tuning, measured side by side on one stream.

Each round trains every strategy on the same synthetic permuted stream (10 Gaussian-blob classes; by default 784-d
inputs and the PMNIST MLP 784-100-100-10 without biases, or 3x32x32 inputs and the CIFAR-100 AlexNet); the order of
strategies rotates between rounds, and medians over the rounds are reported. Measured on the *second* experience,
where projection (and TRGP scaling / CUBER's regimes) is active; the permutations are unrelated, so CUBER releases
nothing and trains as TRGP:

- ``epoch``: training time per epoch, excluding the experience start/end hooks (the per-step overhead);
- ``start``: the experience-start hook (TRGP's trust-region pass; CUBER adds its relatedness pass);
- ``memory``: the basis update at the experience end (SVDs; CUBER adds its energy profiles), per experience.

Targets: GPM <= 1.3x Naive per epoch, TRGP/CUBER <= 2x.

    python scripts/bench_projection.py           # 5 interleaved rounds, 3 epochs, 4000 samples per experience
    python scripts/bench_projection.py --quick   # seconds
    python scripts/bench_projection.py --net alexnet
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any, Literal

import torch

from clkit.data import ContinualDataModule, Experience, TensorData
from clkit.loop import StreamRun, trainer_factory
from clkit.module import ContinualModule
from clkit.nets import MLP, Backbone
from strategies.naive import Naive
from strategies.projection.cuber import CUBER
from strategies.projection.gpm import GPM
from strategies.projection.nets import AlexNetGPM
from strategies.projection.trgp import TRGP

TARGETS = {"GPM": 1.3, "TRGP": 2.0, "CUBER": 2.0}


class _PermutedBlobs(ContinualDataModule):
    """``n_experiences`` fixed feature permutations of one 10-class Gaussian-blob problem of inputs ``shape``."""

    setting = "domain-il"

    def __init__(self, *, n_experiences: int, n: int, batch_size: int, shape: tuple[int, ...] = (784,)) -> None:
        super().__init__(seed=0, val_fraction=0.0, batch_size=batch_size, eval_batch_size=256)
        self.n_experiences, self.n, self.shape = n_experiences, n, shape

    def build(self) -> list[Experience]:
        g = torch.Generator().manual_seed(0)
        f = math.prod(self.shape)
        centres = torch.randn(10, f, generator=g)  # (C, F)
        y = torch.arange(2 * self.n) % 10  # (2n,)
        x = centres[y] + 2.0 * torch.randn(2 * self.n, f, generator=g)  # (2n, F)
        out = []
        for e in range(self.n_experiences):
            xe = x[:, torch.randperm(f, generator=g)].view(-1, *self.shape)  # (2n, F) -> (2n, *shape)
            t = torch.full_like(y, e)
            out.append(self.make_experience(e, range(10), TensorData(xe[: self.n], y[: self.n], t[: self.n]),
                                            TensorData(xe[self.n :], y[self.n :], t[self.n :])))
        return out


def _factories(net: Literal["mlp", "alexnet"]) -> dict[str, Callable[[], ContinualModule]]:
    def backbone() -> Backbone:
        return MLP(hidden=[100, 100], bias=False) if net == "mlp" else AlexNetGPM()

    sgd = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.01}}
    common: dict[str, Any] = {"optimizer": sgd, "threshold": [0.95, 0.99, 0.99] if net == "mlp" else 0.97,
                              "rep_samples": 300 if net == "mlp" else 125}
    return {
        "Naive": lambda: Naive(backbone=backbone(), optimizer=sgd),
        "GPM": lambda: GPM(backbone=backbone(), **common),
        "TRGP": lambda: TRGP(backbone=backbone(), eps_proj=0.2, trust_samples=300, **common),
        "CUBER": lambda: CUBER(backbone=backbone(), eps_proj=0.2, trust_samples=300, **common),
    }


def _timed(strategy: ContinualModule, name: str, sink: dict[str, list[float]]) -> None:
    """Wrap ``strategy.<name>`` so each call's duration is appended to ``sink[name]``."""
    if not hasattr(strategy, name):
        return
    original = getattr(strategy, name)

    def wrapper(*args: Any) -> Any:
        t0 = time.perf_counter()
        out = original(*args)
        sink.setdefault(name, []).append(time.perf_counter() - t0)
        return out

    setattr(strategy, name, wrapper)


def _measure(make: Callable[[], ContinualModule], stream: ContinualDataModule, epochs: int) -> dict[str, float]:
    torch.manual_seed(0)
    strategy = make()
    hooks: dict[str, list[float]] = {}
    for name in ("on_experience_start", "on_experience_end", "update_memory"):
        _timed(strategy, name, hooks)
    run = StreamRun(strategy, stream, trainer_factory(max_epochs=epochs))
    run.run()
    start, end = hooks["on_experience_start"][1], hooks["on_experience_end"][1]
    fit = run.per_experience[1]["train_seconds"]
    memory = hooks.get("update_memory", [0.0])
    return {"epoch": (fit - start - end) / epochs, "start": start, "memory": statistics.mean(memory)}


def main(quick: bool = False, net: Literal["mlp", "alexnet"] = "mlp", rounds: int | None = None) -> None:
    """Print per-epoch cost ratios to Naive and the memory-update time per experience (medians).

    Args:
        quick: A small stream and one epoch (seconds).
        net: ``"mlp"`` (the PMNIST MLP on 784-d inputs, batch 32) or ``"alexnet"`` (the CIFAR-100 AlexNet on
            3x32x32 inputs, batch 64).
        rounds: Interleaved rounds (each strategy once per round, the order rotating); default 5 (3 with ``quick``).
    """
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    reps, epochs, n = (3, 1, 1000) if quick else (5, 3, 4000)
    reps = rounds or reps
    if net == "alexnet":
        n //= 4
    shape, batch = ((784,), 32) if net == "mlp" else ((3, 32, 32), 64)
    stream = _PermutedBlobs(n_experiences=2, n=n, batch_size=batch, shape=shape)
    factories = _factories(net)
    names = list(factories)
    results: dict[str, list[dict[str, float]]] = {k: [] for k in names}
    for rep in range(reps):
        for name in names[rep % len(names):] + names[: rep % len(names)]:  # rotate the order: no position bias
            results[name].append(_measure(factories[name], stream, epochs))
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("epoch", "start", "memory")}
           for k, v in results.items()}
    base = med["Naive"]["epoch"]
    print(f"stream: 2 experiences x {n} samples, {net} net, batch {batch}, {epochs} epoch(s), median of {reps}")
    print(f"{'strategy':8s} {'s/epoch':>9s} {'x Naive':>8s} {'target':>7s} {'start s':>8s} {'memory s/exp':>13s}")
    for name in names:
        m = med[name]
        target = f"<={TARGETS[name]:.1f}" if name in TARGETS else ""
        print(f"{name:8s} {m['epoch']:9.3f} {m['epoch'] / base:8.2f} {target:>7s} {m['start']:8.3f} "
              f"{m['memory']:13.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small stream, one epoch")
    parser.add_argument("--net", choices=["mlp", "alexnet"], default="mlp")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; 3 with --quick)")
    args = parser.parse_args()
    main(quick=args.quick, net=args.net, rounds=args.rounds)
