"""Benchmark IBCL's zero-shot generation against retraining per preference, and its knowledge-base growth.

    python scripts/bench_ibcl.py [--quick]

Trains IBCL on a synthetic binary domain-IL stream of 512-d features (the protocol's feature width) with a
~100k-parameter head (512-192-16-1 = 101,601 parameters), then

- times generating a model for new preferences (HDR + sampling, plus validation selection of K = 10 samples),
- times retraining one deterministic model of the same head for one preference (preference-weighted loss over the
  seen tasks' data, same epochs and batch size, a plain PyTorch loop: a lower bound on the cost IBCL avoids),
- prints the knowledge-base size per task without pruning (d = 0) and with pruning.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings
from collections.abc import Callable, Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from clkit.data import Experience
from clkit.loop import StreamRun, trainer_factory
from scenarios.ibcl_toy import RotatingBinary
from strategies.ibcl import IBCL
from strategies.ibcl.bayes import num_params, to_sequential
from strategies.ibcl.credal import preferences

HIDDEN = [192, 16]


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def _train_ibcl(stream: RotatingBinary, epochs: int, d: float) -> tuple[IBCL, float]:
    pl.seed_everything(0, verbose=False)
    module = IBCL(hidden=HIDDEN, prior_stds=[1.0, 1.5, 2.0], lr=0.005, d=d, num_preferences=5, num_samples=10)
    start = time.perf_counter()
    StreamRun(module, stream, trainer_factory(max_epochs=epochs)).run()
    return module, time.perf_counter() - start


def _retrain(exps: Sequence[Experience], w: torch.Tensor, epochs: int, batch_size: int) -> float:
    """Seconds to train one 512-192-16-1 model on the preference-weighted loss (plain PyTorch loop)."""
    g = torch.Generator().manual_seed(0)
    x = torch.cat([e.train.x for e in exps])
    y = torch.cat([e.train.y for e in exps]).float()
    weight = torch.cat([torch.full((len(e.train),), float(w[k]) / len(e.train)) for k, e in enumerate(exps)])
    net = to_sequential(torch.randn(num_params([512, *HIDDEN, 1]), generator=g) * 0.05, [512, *HIDDEN, 1])
    opt = torch.optim.Adam(net.parameters(), lr=0.005)
    start = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(batch_size):
            loss = (F.binary_cross_entropy_with_logits(net(x[idx])[:, 0], y[idx], reduction="none")
                    * weight[idx]).sum() / weight[idx].sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return time.perf_counter() - start


def main(quick: bool = False, threads: int | None = None) -> None:
    """Print generation vs. retraining times and knowledge-base sizes (``quick``: a smaller stream).

    ``threads`` sets torch's intra-op threads; on a busy machine one thread avoids OpenMP stalls on tiny ops.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    tasks, samples, epochs, repeats = (3, 300, 2, 10) if quick else (5, 1000, 5, 30)
    stream = RotatingBinary(n_experiences=tasks, angle=36.0, features=512, train_samples=samples,
                            test_samples=samples // 2, label_noise=0.05, seed=0, batch_size=32)
    module, fit_seconds = _train_ibcl(stream, epochs, d=0.0)
    p = num_params(module.sizes)
    print(f"IBCL head {list(module.sizes)}: P = {p:,} parameters per posterior, m = 3 chains; "
          f"{tasks} tasks x {epochs} epochs trained in {fit_seconds:.1f} s ({torch.get_num_threads()} torch threads)")
    prefs = preferences(tasks - 1, repeats, seed=123)  # new preferences, never used during training
    it = iter(range(10**9))

    def pref() -> torch.Tensor:
        return prefs[next(it) % len(prefs)]

    rows = [("HDR mean model (flat vector)", lambda: module.generate_theta(pref(), mode="mean")),
            ("one HDR sample (flat vector)", lambda: module.generate_theta(pref(), mode="sample")),
            ("one HDR sample as nn.Sequential", lambda: module.generate(pref(), mode="sample")),
            ("best of K=10 samples on validation", lambda: module.generate_theta(pref(), mode="select"))]
    print(f"\nzero-shot generation for a new preference (median over {repeats} preferences):")
    for name, fn in rows:
        print(f"  {name:<38} {_median_ms(fn, repeats):8.2f} ms")
    retrain = _retrain(stream.experiences, prefs[0], epochs, batch_size=32)
    steps = epochs * sum(-(-len(e.train) // 32) for e in stream.experiences)
    print(f"  {'retraining one model for it':<38} {1000 * retrain:8.0f} ms  ({steps} batch updates, "
          f"{epochs} epochs over {tasks} tasks' data)")

    print("\nknowledge-base size per task (stored posteriors; m x tasks without pruning):")
    print(f"  d = 0      : {module.extra_results()['ibcl']['kb_size']}  ({module.strategy_state_bytes():,} bytes)")
    dists = [v for row in module.kb.nn_distances[1:] for v in row]
    d = statistics.median(dists)
    pruned, _ = _train_ibcl(stream, epochs, d=d)
    print(f"  d = {d:<7.3f}: {pruned.extra_results()['ibcl']['kb_size']}  ({pruned.strategy_state_bytes():,} bytes; "
          f"d = median nearest-point W2 distance of the unpruned run)")
    print("  posterior fits per task: m = 3 regardless of the number of preferences; generation adds none")

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller stream (seconds)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    cli = parser.parse_args()
    main(quick=cli.quick, threads=cli.threads)
