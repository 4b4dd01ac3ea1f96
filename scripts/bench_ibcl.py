"""Benchmark IBCL's zero-shot generation against retraining per preference, and its knowledge-base growth.

    python scripts/bench_ibcl.py [--quick] [--features features/mnist5k_pairs_pca512.pt] [--threads 1]

With ``--features`` (a feature file, e.g. ``scripts/mnist_pairs_features.py``'s), trains the shipped IBCL config of
``configs/ibcl_mnist_pairs.yaml`` on it and times a model for a new preference (the default ``select`` mode: HDR,
``K`` draws, validation selection), median wall and CPU time over 50 new preferences. Otherwise it trains IBCL on a
synthetic binary domain-IL stream of 512-d features (the protocol's feature width) with a ~100k-parameter head
(512-192-16-1 = 101,601 parameters), then

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
NO_MATRIX = torch.zeros(1, 1)  # (IBCL's extra results do not read the test matrix)


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
    module = IBCL(hidden=HIDDEN, prior_stds=[1.0, 1.5, 2.0], optimizer={"class_path": "torch.optim.Adam",
                  "init_args": {"lr": 0.005}}, d=d, num_preferences=5, num_samples=10)
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


def _median_cpu_ms(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall and process-CPU milliseconds of ``fn`` (CPU time is what a shared machine does not inflate)."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(1000 * (time.perf_counter() - w))
        cpu.append(1000 * (time.process_time() - c))
    return statistics.median(wall), statistics.median(cpu)


def bench_features(path: str, threads: int | None, repeats: int = 50) -> None:
    """Train the shipped MNIST-pairs config on the feature file ``path`` and time new preferences' models."""
    import tempfile
    from pathlib import Path

    from clkit.cli.fit import run_fit

    config = Path(__file__).resolve().parents[1] / "configs" / "ibcl_mnist_pairs.yaml"
    with tempfile.TemporaryDirectory() as run_dir:
        start = time.perf_counter()
        run_fit(["--config", str(config), "--data.init_args.path", path, "--run_dir", run_dir,
                 "--trainer.enable_progress_bar", "false"])
        fit_seconds = time.perf_counter() - start
        module = IBCL.from_checkpoint(run_dir)
    if threads is not None:
        torch.set_num_threads(threads)
    stage = module.kb.num_tasks - 1
    prefs = preferences(stage, repeats, seed=123)  # new preferences, never used during training
    it = iter(range(10**9))

    def one(mode: str) -> Callable[[], object]:
        return lambda: module.generate_theta(prefs[next(it) % repeats], mode=mode)  # type: ignore[arg-type]

    print(f"IBCL on {path}: {stage + 1} tasks, KB {len(module.kb)} posteriors of P = {num_params(module.sizes)}, "
          f"K = {module.opts.num_samples}; trained in {fit_seconds:.1f} s; {torch.get_num_threads()} torch threads")
    for mode in ("mean", "sample", "select"):
        wall, cpu = _median_cpu_ms(one(mode), repeats)
        print(f"  new preference, mode {mode:<6}: {wall:7.2f} ms wall, {cpu:7.2f} ms CPU (median of {repeats})")


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
    print(f"  d = 0      : {module.extra_results(NO_MATRIX)['ibcl']['kb_size']}  ({module.strategy_state_bytes():,} bytes)")
    dists = [v for row in module.kb.nn_distances[1:] for v in row]
    d = statistics.median(dists)
    pruned, _ = _train_ibcl(stream, epochs, d=d)
    print(f"  d = {d:<7.3f}: {pruned.extra_results(NO_MATRIX)['ibcl']['kb_size']}  ({pruned.strategy_state_bytes():,} bytes; "
          f"d = median nearest-point W2 distance of the unpruned run)")
    print("  posterior fits per task: m = 3 regardless of the number of preferences; generation adds none")

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller stream (seconds)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--features", default=None, help="time the shipped MNIST-pairs config on this feature file")
    cli = parser.parse_args()
    if cli.features:
        bench_features(cli.features, cli.threads)
    else:
        main(quick=cli.quick, threads=cli.threads)
