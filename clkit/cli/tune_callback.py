"""The pruning callback of ``clkit tune`` trials: reports the validation row after each experience to the Optuna
study and stops a trial the pruner gives up on.

The stream loop fills row ``i`` of the validation matrix after experience ``i`` and writes it into the experience
checkpoint ``checkpoints/exp{i}.pt``; when the Trainer of experience ``i + 1`` starts training, this callback reads
that row, reports the objective of the block seen so far (``stream_metrics`` of ``val[:i+1, :i+1]``) as step ``i``
and raises ``optuna.TrialPruned`` if the pruner says so. The test matrix is never read. A run directory without
``trial.json`` (any run that is not a trial) is left alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from clkit.cli.sweep_state import read_json

__all__ = ["TRIAL_FILE", "ValidationPruning", "make_pruner", "validation_objective"]

TRIAL_FILE = "trial.json"


def make_pruner(name: str, startup_trials: int) -> Any:
    """The study's pruner (the driver and every trial's callback build the same one)."""
    import optuna

    if name == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=0)


def validation_objective(counts: dict[str, Any], init: dict[str, Any], rows: int, metric: str) -> float:
    """``metric`` of the validation block after ``rows`` experiences, from the checkpoint's count states."""
    from clkit.metrics import AccuracyCounts, stream_metrics

    val, first = AccuracyCounts(1, 1), AccuracyCounts(1, 1)
    val.load(counts)
    first.load(init)
    return stream_metrics(val.accuracy()[:rows, :rows], first.accuracy()[1, :rows])[metric]


class ValidationPruning(pl.Callback):
    """Report the validation objective after each experience to the trial named by ``RUN_DIR/trial.json``; prune.

    Args:
        metric: The ``stream_metrics`` key the study optimises (``acc``, ``bwt``, ...), on the validation matrix.
    """

    def __init__(self, metric: str = "acc") -> None:
        self.metric = metric

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        index = int(pl_module.current_experience.index)
        run_dir = Path(trainer.default_root_dir)
        info = read_json(run_dir / TRIAL_FILE)
        ckpt_path = run_dir / "checkpoints" / f"exp{index - 1}.pt"
        if index == 0 or info is None or not ckpt_path.is_file():
            return
        import optuna
        import torch

        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        value = validation_objective(ckpt["matrices"]["val"], ckpt["matrices"]["init"], index, self.metric)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        pruner = make_pruner(info.get("pruner", "median"), int(info.get("pruner_startup_trials", 2)))
        study = optuna.load_study(study_name=info["study_name"], storage=info["storage"], pruner=pruner)
        trial = optuna.trial.Trial(study, int(info["trial_id"]))
        trial.report(value, step=index - 1)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after experience {index - 1} at val {self.metric} {value:.4f}")
