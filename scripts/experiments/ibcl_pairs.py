"""IBCL against its baselines on binary pair streams: every method's preference table, seeds, costs.

    python scripts/experiments/ibcl_pairs.py run --dataset digits --method ibcl --seeds 0 1 2 3 4 --out runs/ibcl_pairs
    python scripts/experiments/ibcl_pairs.py table --out runs/ibcl_pairs > table.md

Datasets: ``digits`` (``configs/ibcl_digits.yaml``: scikit-learn's digits, 5 pairs) and ``mnist``
(``configs/ibcl_mnist_pairs.yaml``: 512-d PCA features of MNIST-5k from ``scripts/mnist_pairs_features.py``,
``--features PATH``). Every method sees the same stream, the same preferences (``preferences(stage, M, seed)``, the
function IBCL draws its own from) and selects on the validation splits only.

Methods (one JSON file per method, dataset and seed under ``--out``):

- ``ibcl``: ``clkit fit`` of the dataset's IBCL config (``--set KEY=VALUE`` overrides, e.g.
  ``--set model.init_args.prior_weights=[1.0]``); also the posterior means' test accuracy per task, the knowledge
  base, and the time to generate a model for a new preference (median over 20, one thread).
- ``retrain``: one logistic regression trained per preference (and per one-hot / uniform preference) on the
  preference-weighted loss over the seen tasks' data, Adam, the epoch kept on validation; cost in batch updates.
- ``vcl``: :class:`strategies.VCL` (coreset), its predictive posterior's models for the preferences by IBCL's rule
  (the best of ``K`` draws on preference-weighted validation accuracy).
- ``agem`` / ``gem``: ``strategies.AGEM`` / ``strategies.GEM`` (when this tree lacks them, read from a git ref,
  ``--baselines_ref`` of ``--baselines_repo``, without adding them to the tree); a logistic-regression head
  (2-way softmax over the features); one model serves every preference.
- ``lr``: per-task logistic regression (scikit-learn, ``C`` on validation): what each posterior should reach.

``--grid`` runs a list of IBCL overrides and reports their validation scores (tuning never reads test numbers).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any, Optional

import torch

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {"digits": ROOT / "configs" / "ibcl_digits.yaml", "mnist": ROOT / "configs" / "ibcl_mnist_pairs.yaml"}
DEFAULT_FEATURES = ROOT / "features" / "mnist5k_pairs_pca512.pt"
M = 10  # preferences per stage


# -- data ---------------------------------------------------------------------------------------------------------------
def _config_args(dataset: str, seed: int, features: Path) -> list[str]:
    args = ["--config", str(CONFIGS[dataset]), "--seed_everything", str(seed)]
    if dataset == "mnist":
        args += ["--data.init_args.path", str(features)]
    return args


def stream(dataset: str, seed: int, features: Path) -> Any:
    from clkit.cli.fit import _build_cli

    return _build_cli(_config_args(dataset, seed, features)).datamodule


def _epochs(dataset: str) -> int:
    import yaml

    return int(yaml.safe_load(CONFIGS[dataset].read_text())["trainer"]["max_epochs"])


def _sizes(exps: list[Any]) -> tuple[int, ...]:
    return (int(exps[0].train.x[0].numel()), 1)


def _all_prefs(stage: int, seed: int) -> tuple[torch.Tensor, int]:
    """The stage's preferences (``M`` of them; the single ``[1]`` at stage 0), then the one-hot and uniform ones."""
    from strategies.ibcl.credal import preferences
    from strategies.ibcl.evaluation import reference_preferences

    prefs = preferences(stage, M, seed=seed)
    return torch.cat([prefs, reference_preferences(stage + 1)]), prefs.shape[0]


def _bwt(stages: list[dict[str, Any]]) -> float:
    from strategies.ibcl.metrics import stack_stages, standard_bwt

    return standard_bwt(stack_stages([torch.tensor(s["per_task_acc"]) for s in stages]))


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1)


# -- methods ------------------------------------------------------------------------------------------------------------
def run_ibcl(dataset: str, seed: int, features: Path, sets: list[str], work: Path) -> dict[str, Any]:
    from clkit.cli.fit import run_fit
    from strategies.ibcl import IBCL
    from strategies.ibcl.credal import preferences
    from strategies.ibcl.evaluation import task_accuracies

    overrides = []
    for item in sets:
        key, _, value = item.partition("=")
        overrides += [f"--{key}", value]
    run_dir = work / f"ibcl_{dataset}_{seed}"
    t0 = time.perf_counter()
    run_fit([*_config_args(dataset, seed, features), *overrides, "--run_dir", str(run_dir),
             "--trainer.enable_progress_bar", "false"])
    wall = time.perf_counter() - t0
    res = json.loads((run_dir / "results.json").read_text())
    ib = res["ibcl"]
    module = IBCL.from_checkpoint(run_dir)
    exps = stream(dataset, seed, features).experiences
    mus, _ = module.kb.stacked()
    test = task_accuracies(mus, [e.test for e in exps], module.features, module.sizes)  # (E, T)
    posterior_acc = [[float(test[e, task]) for e, (t, _) in enumerate(module.kb.origins) if t == task]
                     for task in range(len(exps))]  # chains stored for each task, on that task's test data
    torch.set_num_threads(1)
    new = preferences(len(exps) - 1, 21, seed=10_000 + seed)
    times = []
    for i, w in enumerate(new):
        start = time.perf_counter()
        module.generate_theta(w, seed=i)
        times.append(1000 * (time.perf_counter() - start))
    coverage = _coverage(module, seed)
    stages = [{k: s[k] for k in ("per_task_acc", "avg_per_task_acc", "peak_per_task_acc", "bt_ibcl", "spearman",
                                 "val_per_task_acc", "kb_size", "fit", "task_models", "nn_distances_rms")}
              for s in ib["stages"]]
    return {"stages": stages, "bwt": ib["bwt"][-1], "matrix": res["accuracy_matrix"], "metrics": res["metrics"],
            "evaluation": res.get("evaluation"), "kb_size": ib["kb_size"], "kb_bytes": ib["kb_bytes"],
            "memory_bytes": res["strategy_state_bytes"], "posterior_mean_test_acc": posterior_acc,
            "generate_ms": statistics.median(times[1:]), "wall_seconds": wall, "coverage": coverage,
            "batch_updates": sum(-(-len(e.train) // 32) for e in exps) * _epochs(dataset) * len(module.prior_stds),
            "options": ib["options"], "overrides": sets}


def _coverage(module: Any, seed: int, n: int = 2000) -> dict[str, Any]:
    """Empirical mass of the region for the final stage's preferences, under each preference's mixture, for the
    module's region (default: the mixture HDR) and for the official box at the same alpha."""
    import dataclasses

    from strategies.ibcl.credal import combination_weights, preferences
    from strategies.ibcl.evaluation import region
    from strategies.ibcl.hdr import empirical_coverage

    mus, sigmas = module.kb.stacked()
    gen = torch.Generator().manual_seed(seed)
    box_opts = dataclasses.replace(module.opts, combine="moment_average")
    own, box = [], []
    for w in preferences(module.kb.num_tasks - 1, M, seed=seed):
        beta = combination_weights(w, module.kb.slots, len(module.kb))
        own.append(empirical_coverage(region(module.kb, w, module.opts, gen), beta, mus, sigmas, n, generator=gen))
        box.append(empirical_coverage(region(module.kb, w, box_opts, gen), beta, mus, sigmas, n, generator=gen))
    return {"alpha": module.opts.alpha, "region": module.opts.combine, "draws": n, "region_mass": own,
            "box_mass": box}


def run_retrain(dataset: str, seed: int, features: Path, epochs: int, lr: float) -> dict[str, Any]:
    from strategies.ibcl.baselines import train_preference_model
    from strategies.ibcl.evaluation import task_accuracies
    from strategies.ibcl.metrics import stage_summary

    exps = stream(dataset, seed, features).experiences
    sizes = _sizes(exps)
    stages, updates, t0 = [], [], time.perf_counter()
    matrix = [[None] * len(exps) for _ in exps]
    for stage in range(len(exps)):
        prefs, m = _all_prefs(stage, seed)
        trains, vals = [e.train for e in exps[: stage + 1]], [e.val for e in exps[: stage + 1]]
        fits = [train_preference_model(trains, w, sizes, val_sets=vals, epochs=epochs, lr=lr,
                                       seed=seed * 1000 + stage * 100 + p) for p, w in enumerate(prefs)]
        thetas = torch.stack([f.theta for f in fits])
        test = task_accuracies(thetas, [e.test for e in exps[: stage + 1]], _flat, sizes)
        summary = stage_summary(prefs[:m], test[:m])
        summary["val_per_task_acc"] = stage_summary(prefs[:m], torch.stack([f.val_acc for f in fits[:m]]))[
            "per_task_acc"]
        summary["batch_updates"] = sum(f.batch_updates for f in fits[:m])
        summary["batch_updates_per_preference"] = summary["batch_updates"] / m
        summary["best_epochs"] = [f.best_epoch for f in fits[:m]]
        stages.append(summary)
        updates.append(summary["batch_updates"])
        for j in range(stage + 1):
            matrix[stage][j] = float(test[m + j, j])  # the one-hot model for task j, on task j
    return {"stages": stages, "bwt": _bwt(stages), "matrix": matrix, "batch_updates": sum(updates),
            "wall_seconds": time.perf_counter() - t0, "epochs": epochs, "lr": lr}


def run_vcl(dataset: str, seed: int, features: Path, coreset: int, prior_std: float) -> dict[str, Any]:
    from clkit.loop import fit_stream
    from clkit.optim import spec
    from strategies.ibcl.baselines import select_from_gaussian
    from strategies.ibcl.evaluation import task_accuracies
    from strategies.ibcl.metrics import stage_summary
    from strategies.vcl import VCL

    data = stream(dataset, seed, features)
    module = VCL(prior_std=prior_std, coreset_size=coreset, optimizer=spec("torch.optim.Adam", lr=0.05), seed=seed)
    t0 = time.perf_counter()
    result = fit_stream(module, data, _trainer(_epochs(dataset)))
    exps, sizes = data.experiences, module.sizes
    stages = []
    for stage, (mu, sigma) in enumerate(module.stage_predictive):
        prefs = _all_prefs(stage, seed)[0][: 1 if stage == 0 else M]
        gen = torch.Generator().manual_seed(seed * 7 + stage)
        thetas, val = select_from_gaussian(mu, sigma, prefs, [e.val for e in exps[: stage + 1]], sizes,
                                           num_samples=50, generator=gen)
        test = task_accuracies(thetas, [e.test for e in exps[: stage + 1]], _flat, sizes)
        summary = stage_summary(prefs, test)
        summary["val_per_task_acc"] = stage_summary(prefs, val)["per_task_acc"]
        stages.append(summary)
    extra = module.extra_results(result.accuracy_matrix)["vcl"]
    return {"stages": stages, "bwt": _bwt(stages), "matrix": result.accuracy_matrix.tolist(),
            "metrics": result.metrics, "wall_seconds": time.perf_counter() - t0, "coreset_size": coreset,
            "batch_updates": sum(-(-(len(e.train) - coreset) // 32) for e in exps) * _epochs(dataset)
            + extra["coreset_batch_updates"], "memory_bytes": module.strategy_state_bytes(), "prior_std": prior_std}


def _trainer(epochs: int) -> Any:
    from clkit.loop import quiet_lightning, trainer_factory

    quiet_lightning()
    return trainer_factory(max_epochs=epochs, enable_progress_bar=False, logger=False, enable_checkpointing=False,
                           enable_model_summary=False)


def load_replay_baselines(ref: str, repo: Path) -> types.ModuleType:
    """``strategies.rehearsal``, ``strategies.agem`` and ``strategies.gem``: this tree's if it has them, otherwise
    read from git ``ref`` of ``repo`` without adding them to the tree."""
    import strategies

    if importlib.util.find_spec("strategies.gem") is not None:
        importlib.import_module("strategies.agem")
        return importlib.import_module("strategies.gem")
    subprocess.run(["git", "-C", str(ROOT), "fetch", "-q", str(repo), ref], check=True)
    folder = Path(tempfile.mkdtemp(prefix="clkit_baselines_"))
    for name in ("rehearsal", "agem", "gem"):
        source = subprocess.run(["git", "-C", str(ROOT), "show", f"FETCH_HEAD:strategies/{name}.py"], check=True,
                                capture_output=True, text=True).stdout
        (folder / f"{name}.py").write_text(source)
        spec_ = importlib.util.spec_from_file_location(f"strategies.{name}", folder / f"{name}.py")
        assert spec_ is not None and spec_.loader is not None
        module = importlib.util.module_from_spec(spec_)
        sys.modules[f"strategies.{name}"] = module
        spec_.loader.exec_module(module)
        setattr(strategies, name, module)
    return sys.modules["strategies.gem"]


def run_replay(method: str, dataset: str, seed: int, features: Path, lr: float, buffer: int,
               ref: str, repo: Path) -> dict[str, Any]:
    from torch import nn

    from clkit.loop import fit_stream
    from clkit.optim import spec

    load_replay_baselines(ref, repo)
    cls = sys.modules["strategies.agem"].AGEM if method == "agem" else sys.modules["strategies.gem"].GEM
    data = stream(dataset, seed, features)
    module = cls(backbone=nn.Flatten(), buffer_size=buffer, optimizer=spec("torch.optim.SGD", lr=lr), seed=seed)
    t0 = time.perf_counter()
    result = fit_stream(module, data, _trainer(_epochs(dataset)))
    r = result.accuracy_matrix
    stages = []
    for i in range(r.shape[0]):
        row = r[i, : i + 1]
        stages.append({"per_task_acc": row.tolist(), "avg_per_task_acc": float(row.mean()),
                       "peak_per_task_acc": float(row.max()), "spearman": [None] * (i + 1),
                       "val_per_task_acc": result.val_accuracy_matrix[i, : i + 1].tolist()})
    return {"stages": stages, "bwt": _bwt(stages), "matrix": r.tolist(), "metrics": result.metrics,
            "wall_seconds": time.perf_counter() - t0, "lr": lr, "buffer_size": buffer,
            "batch_updates": sum(-(-len(e.train) // 32) for e in data.experiences) * _epochs(dataset),
            "memory_bytes": module.strategy_state_bytes(), "ref": ref}


def run_lr(dataset: str, seed: int, features: Path) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    exps = stream(dataset, seed, features).experiences
    out = []
    for e in exps:
        best = None
        for c in (0.01, 0.1, 1.0, 10.0, 100.0):
            model = LogisticRegression(C=c, max_iter=5000).fit(e.train.x.flatten(1).numpy(), e.train.y.numpy())
            val = model.score(e.val.x.flatten(1).numpy(), e.val.y.numpy())
            if best is None or val > best[0]:
                best = (val, c, model.score(e.test.x.flatten(1).numpy(), e.test.y.numpy()))
        assert best is not None
        out.append({"val": best[0], "C": best[1], "test": best[2]})
    return {"per_task": out}


# -- tables -------------------------------------------------------------------------------------------------------------
def _ms(values: list[float], scale: float = 100.0) -> str:
    vals = [v * scale for v in values if v is not None]
    if not vals:
        return "n/a"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.2f} ± {sd:.2f}"


def _mean_spearman(stage: dict[str, Any]) -> Optional[float]:
    vals = [v for v in stage["spearman"] if v is not None]
    return statistics.mean(vals) if vals else None


def _runs(out: Path, method: str, dataset: str) -> list[dict[str, Any]]:
    return [json.loads(f.read_text()) for f in sorted(out.glob(f"{method}_{dataset}_seed*.json"))]


def _per_preference_cost(method: str, runs: list[dict[str, Any]]) -> str:
    if method == "retrain":
        return f"{statistics.mean(r['stages'][-1]['batch_updates_per_preference'] for r in runs):,.0f} batch updates"
    if method.startswith("ibcl"):
        return f"0 updates, {statistics.mean(r['generate_ms'] for r in runs):.1f} ms"
    return "0 updates (one model)" if method in ("agem", "gem") else "0 updates (selection)"


def table(out: Path) -> str:
    """The preference table, IBCL's region / memory / timing table and the posterior-fit table (markdown)."""
    lines = ["| data | method | evaluation | seeds | avg per-task acc, final stage | avg per-task acc, mean over "
             "stages | peak, final | standard BWT (pts) | Spearman, final (mean / min over tasks) | training batch "
             "updates | per new preference |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for dataset in ("digits", "mnist"):
        for method, label in LABELS.items():
            runs = _runs(out, method, dataset)
            if not runs:
                continue
            final = [r["stages"][-1] for r in runs]
            avg_all = [statistics.mean(s["avg_per_task_acc"] for s in r["stages"]) for r in runs]
            sp = [_mean_spearman(s) for s in final]
            sp_min = [min((v for v in s["spearman"] if v is not None), default=None) for s in final]
            spear = "n/a (one model for every preference)" if method in ("agem", "gem") else \
                f"{_ms(sp, 1.0)} / {_ms(sp_min, 1.0)}"
            train = statistics.mean(r.get("batch_updates", 0) for r in runs)
            lines.append(f"| {dataset} | {label} | preference models | {len(runs)} | "
                         f"{_ms([s['avg_per_task_acc'] for s in final])} | {_ms(avg_all)} | "
                         f"{_ms([s['peak_per_task_acc'] for s in final])} | {_ms([r['bwt'] for r in runs])} | {spear} | "
                         f"{train:,.0f} | {_per_preference_cost(method, runs)} |")
    lines += ["", "| data | IBCL region | region mass under the mixture (mean, min) | official box's mass | KB size per "
              "task | CL memory (KB + validation splits) | new preference (ms, median) | accuracy matrix (task-aware "
              "one-hot cells): acc / BWT / learning acc |", "|---|---|---|---|---|---|---|---|"]
    for dataset in ("digits", "mnist"):
        for method in ("ibcl", "ibcl_box"):
            runs = _runs(out, method, dataset)
            if not runs:
                continue
            mass = [v for r in runs for v in r["coverage"]["region_mass"]]
            box = [v for r in runs for v in r["coverage"]["box_mass"]]
            kb = [statistics.mean(r["kb_size"][i] for r in runs) for i in range(len(runs[0]["kb_size"]))]
            met = [r["metrics"] for r in runs]
            lines.append(f"| {dataset} | {runs[0]['options']['combine']}, α {runs[0]['coverage']['alpha']} | "
                         f"{statistics.mean(mass):.4f}, {min(mass):.4f} ({len(mass)} regions × "
                         f"{runs[0]['coverage']['draws']} draws) | {statistics.mean(box):.4f} | "
                         f"{', '.join(f'{v:g}' for v in kb)} | {statistics.mean(r['memory_bytes'] for r in runs):,.0f} B | "
                         f"{_ms([r['generate_ms'] for r in runs], 1.0)} | {_ms([m['acc'] for m in met])} / "
                         f"{_ms([m['bwt'] for m in met])} / {_ms([m['learning_acc'] for m in met])} |")
    lines += ["", "| data | task | per-task logistic regression (test, C on validation) | IBCL one-hot model for the "
              "task at its stage (test) | IBCL chains' posterior means on the task (test: best / VCL chain) | chains' "
              "training accuracy at their task |", "|---|---|---|---|---|---|"]
    for dataset in ("digits", "mnist"):
        lr, ib = _runs(out, "lr", dataset), _runs(out, "ibcl", dataset)
        if not lr or not ib:
            continue
        for task in range(len(ib[0]["stages"])):
            onehot = [r["stages"][task]["task_models"]["test_acc"][task][task] for r in ib]
            best = [max(r["posterior_mean_test_acc"][task]) for r in ib if r["posterior_mean_test_acc"][task]]
            first = [r["posterior_mean_test_acc"][task][0] for r in ib if r["posterior_mean_test_acc"][task]]
            fit = [statistics.mean(r["stages"][task]["fit"]["train_acc"]) for r in ib]
            fit_min = [min(r["stages"][task]["fit"]["train_acc"]) for r in ib]
            lines.append(f"| {dataset} | {task} | {_ms([r['per_task'][task]['test'] for r in lr])} | {_ms(onehot)} | "
                         f"{_ms(best)} / {_ms(first)} | mean {_ms(fit)}, min {_ms(fit_min)} |")
    return "\n".join(lines)


LABELS = {"ibcl": "IBCL (zero-shot)", "ibcl_box": "IBCL, official box region", "retrain": "one model per preference",
          "vcl": "VCL + coreset (zero-shot selection)", "agem": "A-GEM", "gem": "GEM"}


def plot(out: Path, png: Path) -> Path:
    """Average per-task test accuracy of the preference models per stage, mean ± std over seeds, per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, dataset in zip(axes, ("digits", "mnist")):
        for method, label in LABELS.items():
            files = sorted(out.glob(f"{method}_{dataset}_seed*.json"))
            if not files:
                continue
            curves = torch.tensor([[s["avg_per_task_acc"] for s in json.loads(f.read_text())["stages"]]
                                   for f in files]) * 100  # (seeds, stages)
            x = torch.arange(1, curves.shape[1] + 1)
            mean, std = curves.mean(0), curves.std(0) if len(files) > 1 else torch.zeros(curves.shape[1])
            ax.errorbar(x, mean, yerr=std, marker="o", ms=4, capsize=3, label=f"{label} ({len(files)} seeds)")
        ax.axhline(94, color="grey", ls=":", lw=1)
        ax.set_title({"digits": "BinaryDigits (64 pixels)", "mnist": "MNIST-5k pairs, 512-d PCA"}[dataset])
        ax.set_xlabel("tasks seen")
        ax.set_xticks(range(1, 6))
    axes[0].set_ylabel("avg per-task acc, preference models (%)")
    axes[1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("command", choices=("run", "table", "plot"))
    p.add_argument("--dataset", choices=tuple(CONFIGS), default="digits")
    p.add_argument("--method", choices=("ibcl", "retrain", "vcl", "agem", "gem", "lr"), default="ibcl")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--out", type=Path, default=Path("runs/ibcl_pairs"))
    p.add_argument("--features", type=Path, default=DEFAULT_FEATURES)
    p.add_argument("--set", action="append", default=[], help="IBCL config override KEY=VALUE (repeatable)")
    p.add_argument("--tag", default="", help="suffix of the method's file names (grid points)")
    p.add_argument("--epochs", type=int, default=30, help="retrain: epochs per preference model")
    p.add_argument("--lr", type=float, default=0.05, help="retrain: Adam lr; agem/gem: SGD lr")
    p.add_argument("--coreset", type=int, default=20, help="vcl: coreset samples per task")
    p.add_argument("--prior_std", type=float, default=1.0, help="vcl: task-0 prior std")
    p.add_argument("--buffer", type=int, default=100, help="agem/gem: memory budget in samples")
    p.add_argument("--png", type=Path, default=Path("docs/results/ibcl_pairs.png"), help="plot: output image")
    p.add_argument("--baselines_ref", default="issue-14")
    p.add_argument("--baselines_repo", type=Path, default=Path("/work/h14"))
    args = p.parse_args(argv)
    if args.command == "table":
        print(table(args.out))
        return
    if args.command == "plot":
        print(plot(args.out, args.png))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        t0 = time.perf_counter()
        if args.method == "ibcl":
            with tempfile.TemporaryDirectory() as work:
                row = run_ibcl(args.dataset, seed, args.features, args.set, Path(work))
        elif args.method == "retrain":
            row = run_retrain(args.dataset, seed, args.features, args.epochs, args.lr)
        elif args.method == "vcl":
            row = run_vcl(args.dataset, seed, args.features, args.coreset, args.prior_std)
        elif args.method in ("agem", "gem"):
            row = run_replay(args.method, args.dataset, seed, args.features, args.lr, args.buffer,
                             args.baselines_ref, args.baselines_repo)
        else:
            row = run_lr(args.dataset, seed, args.features)
        row.update({"dataset": args.dataset, "method": args.method, "seed": seed})
        name = f"{args.method}{args.tag}_{args.dataset}_seed{seed}.json"
        (args.out / name).write_text(json.dumps(row, indent=1, default=float) + "\n")
        final = row["stages"][-1] if "stages" in row else {}
        print(f"{name}: final avg {final.get('avg_per_task_acc', float('nan')):.4f}  "
              f"val {statistics.mean(final['val_per_task_acc']) if 'val_per_task_acc' in final else float('nan'):.4f}"
              f"  ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
