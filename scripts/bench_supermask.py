"""Benchmark the supermask family: cost per epoch against Naive, mask memory per task, a 100-task stream.

    python scripts/bench_supermask.py [--quick]

1. Training time per epoch of SupSup and ExSSNeT relative to Naive on the same synthetic image stream (a masked
   CNN against the plain CNN of the same widths), runs interleaved, median of at least 3; the target for ExSSNeT
   is at most 2x. ExSSNeT's epochs include its per-epoch validation and best-state snapshots, as Naive's include
   validation.
2. Mask memory per task: packed bits (8 weights per byte) against float32 scores, for the masked GEMResNet18
   (nf=20, 32x32 inputs) and the default masked MLP.
3. A 100-experience toy stream with ExSSNeT (20 with --quick): training time per experience at the start and the
   end of the stream, CL memory growth per task, free capacity at the end.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings
from typing import Any

import pytorch_lightning as pl
import torch

from clkit.data import ContinualDataModule, Experience, TensorData
from clkit.loop import StreamRun, trainer_factory
from scenarios.toy import ToySplit
from strategies.naive import Naive
from strategies.supermask.exssnet import ExSSNeT
from strategies.supermask.nets import MaskedGEMResNet18
from strategies.supermask.supsup import MaskedCNN, MaskedMLP, SupSup


class _RandomImages(ContinualDataModule):
    """Task-IL stream of random (3, 32, 32) images with learnable labels (the label shifts the mean)."""

    setting = "task-il"
    task_ids_at_test = True

    def __init__(self, *, n_experiences: int = 2, samples: int = 512, side: int = 32, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_experiences, self.samples, self.side = n_experiences, samples, side

    def build(self) -> list[Experience]:
        g = torch.Generator().manual_seed(self.seed)
        out = []
        for i in range(self.n_experiences):
            y = torch.randint(0, 2, (self.samples,), generator=g)
            x = torch.randn(self.samples, 3, self.side, self.side, generator=g) + 0.5 * y.view(-1, 1, 1, 1)
            t = torch.full((self.samples,), i)
            n_test = self.samples // 4
            train = TensorData(x[n_test:], y[n_test:], t[n_test:])
            test = TensorData(x[:n_test], y[:n_test], t[:n_test])
            out.append(self.make_experience(i, [2 * i, 2 * i + 1], train, test))
        return out


def _epoch_seconds(make: Any, stream: ContinualDataModule, epochs: int) -> float:
    """Training seconds per epoch on the last experience (the one where ExSSNeT masks gradients)."""
    pl.seed_everything(0, verbose=False)
    run = StreamRun(make(), stream, trainer_factory(max_epochs=epochs))
    run.run()
    last = run.per_experience[-1]
    return last["train_seconds"] / max(1, last["epochs"])


def bench_cost(quick: bool) -> None:
    repeats, epochs = (3, 2) if quick else (5, 4)
    stream = _RandomImages(n_experiences=2, samples=256 if quick else 768, seed=0, val_fraction=0.1, batch_size=64)
    channels = [32, 64, 128]
    makers: dict[str, Any] = {
        "Naive": lambda: Naive(lr=0.01, optimizer="adam"),
        "SupSup": lambda: SupSup(backbone=MaskedCNN(channels=channels), density=0.1, lr=0.01),
        "ExSSNeT": lambda: ExSSNeT(backbone=MaskedCNN(channels=channels), density=0.1, mask_epochs=epochs // 2,
                                   weight_epochs=epochs - epochs // 2, mask_lr=0.01, weight_lr=0.001),
    }
    times: dict[str, list[float]] = {name: [] for name in makers}
    for _ in range(repeats):  # interleaved, so drifting machine load hits every strategy alike
        for name, make in makers.items():
            times[name].append(_epoch_seconds(make, stream, epochs))
    base = statistics.median(times["Naive"])
    print(f"\n1. training time per epoch, median of {repeats} interleaved runs (CNN 32-64-128, 3x32x32, batch 64)")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"   {name:8s} {1000 * med:8.1f} ms/epoch   x{med / base:.2f} of Naive")


def bench_memory() -> None:
    print("\n2. mask memory per task (packed bits vs float32 scores)")
    for label, backbone, shape in [("masked GEMResNet18 nf=20", MaskedGEMResNet18(nf=20), (3, 32, 32)),
                                   ("masked MLP 256-256, 784 in", MaskedMLP(hidden=[256, 256]), (1, 28, 28))]:
        backbone.build(shape)
        n = sum(p.numel() for p in backbone.parameters())
        packed = sum((p.numel() + 7) // 8 for p in backbone.parameters())
        print(f"   {label:28s} {n:>9,d} masked weights: {packed / 1e3:8.1f} KB/task packed, "
              f"{4 * n / 1e6:6.2f} MB/task as float scores (x{4 * n / packed:.0f})")


class _Recording(ExSSNeT):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state_bytes: list[int] = []

    def on_experience_end(self, experience: Experience) -> None:
        super().on_experience_end(experience)
        self.state_bytes.append(self.strategy_state_bytes())


def bench_long_stream(quick: bool) -> None:
    n = 20 if quick else 100
    stream = ToySplit(n_experiences=n, classes_per_experience=2, samples_per_class=32, setting="task-il", seed=0)
    strategy = _Recording(density=0.05, mask_epochs=1, weight_epochs=1, mask_lr=0.05, weight_lr=0.01)
    start = time.perf_counter()
    run = StreamRun(strategy, stream, trainer_factory(max_epochs=2))
    acc = run.run()
    wall = time.perf_counter() - start
    train = [e["train_seconds"] for e in run.per_experience]
    k = max(1, n // 10)
    growth = [b - a for a, b in zip(strategy.state_bytes, strategy.state_bytes[1:])]
    capacity = strategy.extra_results()["free_capacity"]
    print(f"\n3. {n}-experience toy stream, ExSSNeT density 0.05, 1+1 epochs, default masked MLP 256-256")
    print(f"   wall {wall:.1f} s (incl. testing all {n} experiences after each one); training s/experience: "
          f"first {k} {statistics.mean(train[:k]):.3f}, last {k} {statistics.mean(train[-k:]):.3f}")
    print(f"   CL memory: {strategy.state_bytes[0]:,d} B after task 1, {strategy.state_bytes[-1]:,d} B after task {n}; "
          f"growth per task {min(growth):,d}-{max(growth):,d} B (packed masks + per-task BN statistics)")
    print(f"   final acc {float(acc[-1].mean()):.3f}, bwt {float((acc[-1, :-1] - acc.diagonal()[:-1]).mean()):+.4f}, "
          f"free capacity per layer {', '.join(f'{c:.2f}' for c in capacity)}")


def main(quick: bool = False) -> None:
    """Run the three benchmarks and print their tables; ``quick`` shrinks them to about a minute."""
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: one thread is faster and steadier than two on a shared 2-core machine
    try:
        print(f"torch {torch.__version__}, 1 intra-op thread, quick={quick}")
        bench_cost(quick)
        bench_memory()
        bench_long_stream(quick)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (about a minute)")
    main(quick=parser.parse_args().quick)
