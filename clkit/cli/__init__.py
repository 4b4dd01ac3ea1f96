"""The ``clkit`` command line: the face layer above the core.

Only this package (besides ``scripts/``) may import ``strategies`` and ``scenarios``, and only to resolve names. Each
command lives in its own module and is imported by name when it runs, so ``clkit report`` does not import torch.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Optional

from clkit.errors import ClkitError, ConfigError

__all__ = ["COMMANDS", "main", "version_line"]

USAGE = """usage: clkit {fit,test,report,sweep,tune,ibcl-generate} ... | clkit --version

  clkit fit [--config CFG.yaml] [--key value ...] [--run_dir DIR] [--resume RUN_DIR] [--print_config]
      run one experiment; without --config, the embedded default (SplitDigits, offline)
  clkit test RUN_DIR [--out FILE] [--key value ...]
      re-evaluate a finished run from its checkpoints (no training); overrides change e.g. the test data
  clkit report RUN_OR_SWEEP_DIR ... [--latex | --csv | --markdown] [--per_run]
      a table of runs: mean ± std over seeds, a column per varying hyper-parameter, unfinished runs listed
  clkit sweep SWEEP.yaml [--key value ...] [--launcher local|submitit|ray] [--workers N] [--shard i/n] [--dry_run]
      run a grid of experiments (--trainer.max_epochs 1 overrides every run)
  clkit tune TUNE.yaml [--key value ...] [--launcher ...] [--n_trials N]
      Optuna search over a space in the grid's dialect, on the validation matrix only
  clkit ibcl-generate --run RUN_DIR --preference W0 W1 ... --out MODEL.pt [--mode select|sample|mean]
      zero-shot model for a task preference from a finished IBCL run (no training)
"""

COMMANDS = {
    "fit": "clkit.cli.fit:run_fit",
    "report": "clkit.cli.report:main",
    "sweep": "clkit.cli.sweep:main",
    "test": "clkit.cli.test:main",
    "tune": "clkit.cli.tune:main",
    "ibcl-generate": "strategies.ibcl.cli:main",
}
"""Command name -> ``module:function`` taking the remaining arguments."""


def version_line() -> str:
    """``clkit 0.2.0 (python 3.11.7, torch 2.14.1, pytorch-lightning 2.6.6, avalanche-lib 0.6.0)``, read from the
    installed distributions (without importing torch)."""
    import platform
    from importlib import metadata

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    from clkit import __version__

    deps = ", ".join(f"{d} {version(d)}" for d in ("torch", "pytorch-lightning", "avalanche-lib"))
    return f"clkit {__version__} (python {platform.python_version()}, {deps})"


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point of the ``clkit`` console script; user errors print one line and exit with code 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if not args or args[0] in ("-h", "--help"):
            print(USAGE)
            return
        if args[0] in ("-V", "--version", "version"):
            print(version_line())
            return
        command, rest = args[0], args[1:]
        if command not in COMMANDS:
            raise ConfigError(f"unknown command {command!r}; valid commands: {', '.join(COMMANDS)}")
        module, _, function = COMMANDS[command].partition(":")
        getattr(importlib.import_module(module), function)(rest)
    except ClkitError as err:
        print(f"clkit: error: {err}", file=sys.stderr)
        raise SystemExit(getattr(err, "exit_code", 2)) from None
    except BrokenPipeError:  # output piped into a reader that stopped (clkit sweep --dry_run | head): end quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush must not fail again
        raise SystemExit(0) from None
