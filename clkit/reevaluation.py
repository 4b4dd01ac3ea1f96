"""Re-evaluate a finished run from its checkpoints: the accuracy matrices again, without training.

Each ``checkpoints/exp{i}.pt`` holds the network and the CL memory after experience ``i``; loading them in turn and
evaluating every test and validation split rebuilds row ``i`` of the matrices (row ``-1``, the untrained model, comes
from the strategy's seeded initialisation). On the run's own config this reproduces ``results.json`` (a check that
the published numbers come from the published checkpoints); with other data (``clkit test RUN_DIR --data.* ...``)
it measures the same trained models elsewhere.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import torch

from clkit.data import ContinualDataModule
from clkit.errors import ConfigError
from clkit.loop import CHECKPOINT_FORMAT, StreamRun, TrainerFactory, experience_checkpoints
from clkit.metrics import AccuracyCounts
from clkit.module import ContinualModule
from clkit.results import StreamResult
from clkit.rng import derive_seed, forked_rng

__all__ = ["ReevaluationRun", "reevaluate"]


class ReevaluationRun(StreamRun):
    """A :class:`StreamRun` that loads the checkpoints of ``source`` instead of training.

    Args:
        source: The finished run's directory (its ``checkpoints/exp{i}.pt`` are read; nothing is written there).
        (the rest as :class:`StreamRun`; ``run_dir`` is ignored: a re-evaluation writes no checkpoints)
    """

    def __init__(self, *args: object, source: Path | str, **kwargs: object) -> None:
        kwargs["run_dir"] = None
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.source = Path(source)

    def run(self, resume: bool = False) -> StreamResult:
        start = time.perf_counter()
        paths = experience_checkpoints(self.source / "checkpoints")
        if not paths:
            raise ConfigError(f"{self.source} holds no experience checkpoints (checkpoints/exp<i>.pt) to re-evaluate")
        self.stream.prepare_data()
        self.stream.setup("fit")
        self.spec = spec = self.stream.spec
        strategy = self.strategy
        strategy.bind(spec)
        t = spec.n_experiences
        if len(paths) != t:
            raise ConfigError(f"{self.source} has {len(paths)} experience checkpoint(s) for a stream of {t}: "
                              "re-evaluate a finished run (--resume an unfinished one first), on a stream of as many "
                              "experiences")
        self._test, self._val, self._init = AccuracyCounts(t, t), AccuracyCounts(t, t), AccuracyCounts(3, t)
        self._aware = AccuracyCounts(t, t) if spec.setting == "class-il" else None
        trainer = self._trainer(0)
        with forked_rng(derive_seed(strategy.seed, "evaluation", -1), trainer.strategy.root_device):
            self._evaluate(trainer, row=-1)
        for i, path in enumerate(paths):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            if ckpt.get("format") != CHECKPOINT_FORMAT or int(ckpt.get("experience", -1)) != i:
                raise ConfigError(f"{path} is not experience {i}'s checkpoint of this clkit version")
            try:
                strategy.load_memory_state(ckpt["memory"])
                strategy.load_state_dict(ckpt["state_dict"])
            except (RuntimeError, KeyError) as err:
                raise ConfigError(f"checkpoint {path} does not match this strategy/scenario config: {err}") from None
            strategy.to(trainer.strategy.root_device)
            self._evaluate(trainer, row=i)
            self.per_experience.append({"experience": i, "name": self.stream.experiences[i].name,
                                        "checkpoint": str(path)})
        self.wall_seconds = time.perf_counter() - start
        return self.result()


def reevaluate(strategy: ContinualModule, stream: ContinualDataModule, run_dir: Path | str,
               make_trainer: Optional[TrainerFactory] = None, *, test_passes: int = 1) -> StreamResult:
    """The matrices of the run in ``run_dir`` rebuilt from its checkpoints, for a fresh ``strategy`` built as the
    run's was (same class, arguments and seed) on ``stream`` (the run's, or other data with as many experiences).

    Example:
        >>> again = reevaluate(Naive(seed=0), SplitDigits(), "runs/naive")  # doctest: +SKIP
        >>> again.accuracy_matrix  # equals the run's own  # doctest: +SKIP
    """
    from clkit.loop import trainer_factory

    run = ReevaluationRun(strategy, stream, make_trainer or trainer_factory(), source=run_dir,
                          test_passes=test_passes)
    return run.run()
