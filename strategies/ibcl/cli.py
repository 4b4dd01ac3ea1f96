"""``clkit ibcl-generate``: a model for a preference from a finished IBCL run.

Example::

    clkit ibcl-generate --run runs/ibcl-digits --preference 0.2 0.3 0.5 --out model.pt
    clkit ibcl-generate --run runs/ibcl-digits --preference 0.5 0.5 --mode mean --out model.pt \\
        --pareto 0 1 --plot pareto.png

The run's checkpoint describes the strategy, its backbone and the validation data that ``--mode select`` (the
default) chooses on; the run directory's ``config.yaml`` gives the scenario whose test data the generated model is
tested on and ``--pareto`` plots. The command prints the generated model's accuracy on every task's validation split
(kept in the checkpoint) and, when the scenario can be rebuilt, its test split; ``--pareto A B`` draws the official
two-task preferences and the ``--preference`` model. The model is saved with ``torch.save(model)`` (load it with
``torch.load(path, weights_only=False)``); it maps raw inputs to logits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from clkit.errors import ConfigError
from clkit.nets import Backbone

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clkit ibcl-generate", description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--run", required=True, type=Path, help="run directory of an IBCL run")
    p.add_argument("--checkpoint", type=Path, default=None, help="checkpoint (default: the run's latest)")
    p.add_argument("--preference", type=float, nargs="+", required=True, help="weights over tasks 0..i, sum 1")
    p.add_argument("--out", type=Path, required=True, help="where to save the model (torch.save)")
    p.add_argument("--mode", choices=("select", "sample", "mean"), default="select")
    p.add_argument("--num-samples", type=int, default=None, help="models sampled for --mode select")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: the run's)")
    p.add_argument("--pareto", type=int, nargs=2, default=None, metavar=("A", "B"), help="also plot tasks A, B")
    p.add_argument("--plot", type=Path, default=None, help="Pareto plot path (default: next to --out)")
    return p


def _instantiate(section: Any, base: type) -> Any:
    """Instantiate a ``class_path``/``init_args`` config section with jsonargparse."""
    from jsonargparse import ArgumentParser

    import scenarios  # noqa: F401  (short class names in the run's config resolve)
    import strategies  # noqa: F401

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--obj", type=base)
    return parser.instantiate_classes(parser.parse_object({"obj": section})).obj


def _load_config(run: Path) -> dict[str, Any]:
    path = run / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else {}


def main(argv: list[str] | None = None) -> Path | None:
    """Run the command; returns the path of the saved model (``None`` after ``--help``)."""
    from clkit.cli.errors import parse_subcommand
    from clkit.data import ContinualDataModule
    from strategies.ibcl import IBCL
    from strategies.ibcl.evaluation import task_accuracies
    from strategies.ibcl.generate import model_from_theta
    from strategies.ibcl.plot import pareto_points, plot_pareto

    args = parse_subcommand(_parser(), list(sys.argv[1:] if argv is None else argv), "ibcl-generate")
    if args is None:  # --help
        return None
    config = _load_config(args.run)
    section = (config.get("model") or {}).get("init_args", {}).get("backbone")
    backbone = _instantiate(section, Backbone) if section else None  # (checkpoints name clkit backbones themselves)
    module = IBCL.from_checkpoint(args.checkpoint or args.run, backbone=backbone)
    data = None
    if config.get("data"):
        data = _instantiate(config["data"], ContinualDataModule).experiences
    elif args.pareto:
        raise ConfigError(f"{args.run} has no config.yaml with a data section to test the Pareto front on")
    start = time.perf_counter()
    theta = module.generate_theta(args.preference, mode=args.mode, num_samples=args.num_samples, seed=args.seed)
    seconds = time.perf_counter() - start
    model = model_from_theta(theta, module.sizes, module.backbone)
    tasks = len(args.preference)
    val = task_accuracies(theta.unsqueeze(0), module._val_data()[:tasks], module.features, module.sizes)[0]
    test = None
    if data is not None:
        test = task_accuracies(theta.unsqueeze(0), [e.test for e in data[:tasks]], module.features, module.sizes)[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model, args.out)
    info = {"run": str(args.run), "preference": args.preference, "mode": args.mode, "seconds": seconds,
            "alpha_paper": module.opts.alpha, "combine": module.opts.combine, "kb_size": len(module.kb),
            "val_acc": val.tolist(), "test_acc": None if test is None else test.tolist()}
    args.out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"ibcl-generate: model for preference {args.preference} ({args.mode}, {1000 * seconds:.1f} ms) -> {args.out}")
    for name, acc in (("validation", val), ("test", test)):
        if acc is not None:
            weighted = float(acc.double() @ torch.tensor(args.preference, dtype=torch.float64))
            print(f"ibcl-generate: {name} accuracy per task " + " ".join(f"{v:.4f}" for v in acc.tolist())
                  + f" (preference-weighted {weighted:.4f})")
    if test is None:
        print(f"ibcl-generate: no test accuracy ({args.run} has no config.yaml with a data section)")
    if args.pareto:
        assert data is not None
        a, b = args.pareto
        points = pareto_points(module, (a, b), [data[a].test, data[b].test], seed=args.seed or 0,
                               extra=args.preference if max(a, b) < tasks else None)
        plot = plot_pareto(points, args.plot or args.out.with_name(args.out.stem + f"_pareto_{a}_{b}.png"))
        print(f"ibcl-generate: Pareto plot of tasks {a}, {b} with the preference model -> {plot}")
    return args.out
