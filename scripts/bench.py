"""Benchmarks (not tests): speed of the clkit loop and of each method family, measured side by side.

    python scripts/bench.py                  # every section
    python scripts/bench.py --only core      # clkit Naive vs a hand-written PyTorch loop vs Avalanche's Naive
    python scripts/bench.py --quick          # smaller sizes, for a smoke check
    python scripts/bench.py --device cuda    # every section on a GPU (timings between torch.cuda.synchronize())
    python scripts/bench.py --clock cpu      # core: CPU seconds of this process instead of wall time

Timings are interleaved (A, B, C, A, B, C, ...) and the median of ``--repeats`` rounds is reported, so load on a
shared machine hits every contestant alike; the ratios are what to read, not the absolute seconds.
With ``--device cuda`` every contestant's data and model live on the GPU, every timing starts and ends with
``torch.cuda.synchronize()``, and the family sections' stream runs get GPU Trainers.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # scripts/ may import the repo's bench_* modules

from clkit.data import ContinualDataModule, Experience, TensorData

DEVICE = torch.device("cpu")  # set by --device; every contestant runs there
CLOCK = time.perf_counter  # --clock cpu: time.process_time, this process's CPU seconds (robust to a shared machine)
SECTIONS = {"core": None, "projection": "bench_projection", "supermask": "bench_supermask", "ibcl": "bench_ibcl"}


def quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "avalanche"):
        logging.getLogger(name).setLevel(logging.ERROR)


class PermutedTensors(ContinualDataModule):
    """A permuted-MNIST-sized stream of synthetic 784-d inputs, 10 classes (domain-IL), already in tensors."""

    setting = "domain-il"

    def __init__(self, *, n_experiences: int, n_train: int, n_test: int, batch_size: int, seed: int = 0) -> None:
        super().__init__(seed=seed, val_fraction=0.0, batch_size=batch_size, eval_batch_size=1000)
        self.n_experiences, self.n_train, self.n_test = n_experiences, n_train, n_test

    def build(self) -> list[Experience]:
        g = torch.Generator().manual_seed(self.seed)
        w = torch.randn(784, 10, generator=g)  # (784, 10) a fixed labelling rule
        x = torch.rand(self.n_train + self.n_test, 784, generator=g)
        y = (x @ w).argmax(1)  # (N, 784)(784, 10) -> (N, 10) -> (N,)
        exps = []
        for i in range(self.n_experiences):
            xp = x[:, torch.randperm(784, generator=g)]
            t = torch.full_like(y, i)
            train = TensorData(xp[: self.n_train], y[: self.n_train], t[: self.n_train])
            test = TensorData(xp[self.n_train:], y[self.n_train:], t[self.n_train:])
            exps.append(Experience(i, i, tuple(range(10)), train, None, test, f"permutation {i}"))
        return exps


def mlp(width: int = 256) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 10))


def accelerator() -> dict[str, Any]:
    return {"accelerator": "gpu" if DEVICE.type == "cuda" else "cpu", "devices": 1}


def run_clkit(stream: PermutedTensors, epochs: int, lr: float, width: int = 256, fast: bool = True) -> float:
    import pytorch_lightning as pl

    from clkit.loop import StreamRun, trainer_factory
    from clkit.nets import MLP
    from clkit.optim import spec
    from strategies import Naive

    pl.seed_everything(0, verbose=False)
    naive = Naive(backbone=MLP(hidden=[width, width]), optimizer=spec("torch.optim.SGD", lr=lr))
    run = StreamRun(naive, stream, trainer_factory(max_epochs=epochs, **accelerator()), fast_training=fast)
    return float(run.run().accuracy_matrix[-1].mean())


def run_bare_lightning(stream: PermutedTensors, epochs: int, lr: float, width: int = 256) -> float:
    """A minimal LightningModule (no clkit) on the same batches: Lightning's own per-step cost."""
    import pytorch_lightning as pl

    from clkit.data import make_loader

    class Bare(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp(width)

        def training_step(self, batch: Any, batch_idx: int) -> Tensor:
            return F.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=lr)

    torch.manual_seed(0)
    module = Bare()
    for i, exp in enumerate(stream.experiences):
        trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, **accelerator())
        trainer.fit(module, make_loader(exp.train, stream.batch_size, shuffle=True, seed=i))
    return float("nan")


def run_hand(stream: PermutedTensors, epochs: int, lr: float, width: int = 256) -> float:
    """The loop a researcher would write by hand: same model, optimizer, batches, evaluations."""
    torch.manual_seed(0)
    model = mlp(width).to(DEVICE)
    tests = [(e.test.x.to(DEVICE), e.test.y.to(DEVICE)) for e in stream.experiences]

    def evaluate() -> Tensor:
        model.eval()
        with torch.no_grad():
            accs = [torch.cat([(model(x[i:i + 1000]).argmax(1) == y[i:i + 1000])
                               for i in range(0, len(x), 1000)]).float().mean() for x, y in tests]
        model.train()
        return torch.stack(accs)

    evaluate()  # untrained model, as the clkit loop does
    last = torch.zeros(0)
    for i, exp in enumerate(stream.experiences):
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        g = torch.Generator().manual_seed(i)
        x, y = exp.train.x.to(DEVICE), exp.train.y.to(DEVICE)
        for _ in range(epochs):
            for idx in torch.randperm(len(exp.train), generator=g).split(stream.batch_size):
                idx = idx.to(DEVICE)
                loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        last = evaluate()
    return float(last.mean())


def run_avalanche(stream: PermutedTensors, epochs: int, lr: float, width: int = 256) -> float:
    from avalanche.benchmarks import tensors_benchmark
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.supervised import Naive as AvalancheNaive

    bench = tensors_benchmark([(e.train.x, e.train.y) for e in stream.experiences],
                              [(e.test.x, e.test.y) for e in stream.experiences], task_labels=[0] * len(stream))
    torch.manual_seed(0)
    model = mlp(width)
    strategy = AvalancheNaive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=lr),
                              train_mb_size=stream.batch_size, train_epochs=epochs, eval_mb_size=1000,
                              evaluator=EvaluationPlugin(loggers=[]), device=DEVICE)
    strategy.eval(bench.test_stream)
    for exp in bench.train_stream:
        strategy.train(exp)
        strategy.eval(bench.test_stream)
    return float("nan")


def synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def timed_rounds(contestants: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median wall time per contestant over interleaved rounds."""
    times: dict[str, list[float]] = {k: [] for k in contestants}
    for r in range(repeats):
        for name, fn in contestants.items():
            synchronize()
            t0 = CLOCK()
            fn()
            synchronize()
            times[name].append(CLOCK() - t0)
        print(f"  round {r + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_core(quick: bool, repeats: int, skip_avalanche: bool = False) -> None:
    n_train = 2000 if quick else 10000
    epochs, lr = 1 if quick else 2, 0.05
    run_clkit(PermutedTensors(n_experiences=1, n_train=640, n_test=100, batch_size=64), 1, lr)  # warm-up imports
    run_hand(PermutedTensors(n_experiences=1, n_train=640, n_test=100, batch_size=64), 1, lr)  # (and CUDA kernels)
    for width, batch in ((256, 64), (1024, 128)):
        stream = PermutedTensors(n_experiences=3, n_train=n_train, n_test=1000, batch_size=batch)
        stream.setup()
        steps = 3 * epochs * -(-n_train // batch)
        print(f"core: permuted stream, 3 experiences x {n_train} samples of 784-d, MLP 784-{width}-{width}-10, "
              f"batch {batch}, {epochs} epoch(s) per experience ({steps} steps), SGD lr {lr}, on {DEVICE}; "
              f"{'CPU' if CLOCK is time.process_time else 'wall'} time, median of {repeats} interleaved rounds")
        contestants = {"hand-written": lambda: run_hand(stream, epochs, lr, width),
                       "bare-lightning": lambda: run_bare_lightning(stream, epochs, lr, width),
                       "clkit": lambda: run_clkit(stream, epochs, lr, width),
                       "clkit-slow-path": lambda: run_clkit(stream, epochs, lr, width, fast=False)}
        if not skip_avalanche:
            contestants["avalanche"] = lambda: run_avalanche(stream, epochs, lr, width)
        med = timed_rounds(contestants, repeats)
        base = med["hand-written"]
        for name, sec in med.items():
            print(f"  {name:<15} {sec:7.2f} s  {sec / steps * 1e3:7.3f} ms/step  {sec / base:5.2f}x hand-written")
        print("  (per step: the whole run, evaluations included, divided by its optimizer steps; bare-lightning: a "
              "minimal LightningModule, training only; clkit-slow-path: fast_training=False, Lightning's own step "
              "loop)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {list(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke check")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--no-avalanche", action="store_true", help="core: leave out Avalanche's Naive")
    parser.add_argument("--clock", default="wall", help="core: wall (default) or cpu (this process's CPU time, "
                        "which other jobs on a shared CPU machine do not inflate; refused with --device cuda)")
    args = parser.parse_args()
    global DEVICE, CLOCK
    if args.clock not in ("wall", "cpu") or (args.clock == "cpu" and args.device == "cuda"):
        raise SystemExit(f"bench.py: --clock {args.clock!r} is not valid here; valid: wall, or cpu on --device cpu")
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.device not in ("cpu", "cuda"):
        raise SystemExit(f"bench.py: unknown --device {args.device!r}; valid: cpu, cuda")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench.py: --device cuda, but torch sees no CUDA device (torch.cuda.is_available() is False)")
    DEVICE = torch.device(args.device)
    quiet()
    for section in args.only.split(","):
        if section not in SECTIONS:
            raise SystemExit(f"bench.py: unknown section {section!r}; valid: {', '.join(SECTIONS)}")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for section in args.only.split(","):
        print(f"\n== {section} ==", flush=True)
        module = SECTIONS[section]
        if module is None:
            bench_core(args.quick, args.repeats, args.no_avalanche)
        else:
            on_device(importlib.import_module(module)).main(quick=args.quick)


def on_device(module: Any) -> Any:
    """A family section on ``DEVICE``: its Trainers get the accelerator, and every stream run it times ends with
    ``torch.cuda.synchronize()`` (evaluation already waits for the device's results)."""
    if DEVICE.type != "cuda":
        return module
    from clkit.loop import StreamRun, trainer_factory

    if hasattr(module, "trainer_factory"):
        module.trainer_factory = lambda **kw: trainer_factory(**{**accelerator(), **kw})
    if hasattr(module, "StreamRun") and not getattr(StreamRun.run, "_synchronized", False):
        plain = StreamRun.run

        def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            synchronize()
            try:
                return plain(self, *args, **kwargs)
            finally:
                synchronize()

        run._synchronized = True  # type: ignore[attr-defined]
        StreamRun.run = run  # type: ignore[method-assign]
    return module


if __name__ == "__main__":
    main()
