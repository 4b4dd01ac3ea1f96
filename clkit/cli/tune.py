"""``clkit tune TUNE.yaml``: an Optuna study over a search space written like a sweep's grid, on the validation
matrix only, through any launcher; then the selected configuration over the final seeds, on test.

A tune file is a sweep file whose ``grid`` is replaced by ``search`` and a ``tune`` section::

    base: configs/ewc.yaml
    overrides: {trainer.max_epochs: 1}
    search:                                   # dotted key -> a list (categorical, as in a grid) or a range
      model.init_args.ewc_lambda: {low: 0.1, high: 10000, log: true}
      model.init_args.optimizer.init_args.lr: [0.01, 0.05]
    tune:
      objective: val_acc                      # val_acc | val_bwt | val_fwt | val_forgetting | val_learning_acc
      n_trials: 16
      sampler: tpe                            # tpe | random | grid (lists only: every combination once)
      seed: 0                                 # the sampler's seed
      pruner: median                          # median | none: on the validation row after each experience
      final_seeds: [0, 1, 2, 3, 4]            # the selected configuration over these seeds, reported on test
    sweep_dir: sweeps/tune_ewc

The study lives in ``SWEEP_DIR/study.db`` (SQLite): a killed ``clkit tune`` resumes where it stopped (trials cut by
the kill are run again from their run directories' checkpoints). Each trial is an ordinary sweep run in
``SWEEP_DIR/<run-id>/`` (the same run id for the same config, so a repeated configuration is not run twice);
``SWEEP_DIR/tune.json`` records the trials and the selection; the final runs are a sweep in ``SWEEP_DIR/final/``.
The objective is read from ``val_metrics`` in each trial's ``results.json``: the test matrix plays no part in the
choice. See ``docs/sweeps.md``.
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clkit.cli.launchers import engine
from clkit.cli.sweep import point_text, task_for
from clkit.cli.sweep_plan import (
    RunSpec,
    SweepSpec,
    _check_key,
    expand,
    load_sweep,
    parse_overrides,
    run_id_for,
    value_label,
)
from clkit.cli.sweep_state import now, read_json, write_index, write_json_atomic
from clkit.cli.tune_callback import TRIAL_FILE, make_pruner
from clkit.errors import ClkitError, ConfigError

__all__ = ["OBJECTIVES", "Dimension", "TuneSettings", "main", "parse_space", "parse_settings", "run_tune"]

OBJECTIVES = {"val_acc": ("acc", "maximize"), "val_bwt": ("bwt", "maximize"), "val_fwt": ("fwt", "maximize"),
              "val_forgetting": ("forgetting", "minimize"), "val_learning_acc": ("learning_acc", "maximize")}
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "none")
SETTINGS = ("objective", "n_trials", "sampler", "seed", "pruner", "pruner_startup_trials", "final_seeds")
CALLBACK = "clkit.cli.tune_callback.ValidationPruning"
STUDY = "clkit"


@dataclass
class Dimension:
    """One searched key: an Optuna distribution; categorical values are offered to Optuna by their labels."""

    key: str
    distribution: Any
    values: dict[str, Any] = field(default_factory=dict)  # label -> value (categorical)

    def value(self, suggested: Any) -> Any:
        return self.values[suggested] if self.values else suggested


@dataclass
class TuneSettings:
    objective: str = "val_acc"
    n_trials: int = 16
    sampler: str = "tpe"
    seed: int = 0
    pruner: str = "median"
    pruner_startup_trials: int = 2
    final_seeds: list[int] = field(default_factory=list)

    @property
    def metric(self) -> str:
        return OBJECTIVES[self.objective][0]

    @property
    def direction(self) -> str:
        return OBJECTIVES[self.objective][1]


def parse_space(search: Any) -> list[Dimension]:
    """The ``search`` section: dotted key -> list (categorical) or ``{low, high, log, step, int}`` (a range).

    Raises:
        ConfigError: Naming the bad key or value.
    """
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if not isinstance(search, dict) or not search:
        raise ConfigError("a tune file needs a non-empty search section (dotted key -> list or {low, high})")
    dims = []
    for key, spec in search.items():
        _check_key(key, "search")
        if isinstance(spec, list):
            if not spec:
                raise ConfigError(f"search.{key} is an empty list")
            labels = [value_label(v, short=False) for v in spec]
            if len(set(labels)) < len(labels):
                raise ConfigError(f"search.{key} repeats a value: {labels}")
            dims.append(Dimension(key, CategoricalDistribution(labels), dict(zip(labels, spec))))
            continue
        if not isinstance(spec, dict) or not {"low", "high"} <= set(spec):
            raise ConfigError(f"search.{key} must be a list of values or a mapping with low and high, got {spec!r}")
        bad = sorted(set(spec) - {"low", "high", "log", "step", "int"})
        if bad:
            raise ConfigError(f"search.{key}: unknown setting(s) {bad}; valid: low, high, log, step, int")
        try:
            if spec.get("int"):
                dist: Any = IntDistribution(int(spec["low"]), int(spec["high"]), log=bool(spec.get("log", False)),
                                            step=int(spec.get("step", 1)))
            else:
                dist = FloatDistribution(float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False)),
                                         step=None if spec.get("step") is None else float(spec["step"]))
        except (ValueError, TypeError) as err:
            raise ConfigError(f"search.{key}: {err}") from None
        dims.append(Dimension(key, dist))
    return dims


def parse_settings(raw: Any, n_trials: int | None = None) -> TuneSettings:
    """The ``tune`` section (command-line ``--n_trials`` on top).

    Raises:
        ConfigError: For an unknown setting, objective, sampler or pruner (naming the valid ones).
    """
    raw = dict(raw or {})
    bad = sorted(set(raw) - set(SETTINGS))
    if bad:
        raise ConfigError(f"tune: unknown setting(s) {bad}; valid: {', '.join(SETTINGS)}")
    if n_trials is not None:
        raw["n_trials"] = n_trials
    s = TuneSettings(**raw)
    if s.objective not in OBJECTIVES:
        raise ConfigError(f"tune.objective {s.objective!r}: tuning reads the validation matrix only; valid: "
                          f"{', '.join(OBJECTIVES)}")
    if s.sampler not in SAMPLERS or s.pruner not in PRUNERS:
        raise ConfigError(f"tune: sampler {s.sampler!r} / pruner {s.pruner!r}; valid samplers: "
                          f"{', '.join(SAMPLERS)}; pruners: {', '.join(PRUNERS)}")
    if int(s.n_trials) < 1:
        raise ConfigError(f"tune.n_trials must be >= 1, got {s.n_trials}")
    s.final_seeds = [int(x) for x in s.final_seeds]
    return s


def _study(optuna: Any, spec: SweepSpec, settings: TuneSettings, dims: list[Dimension]) -> Any:
    storage = f"sqlite:///{(spec.sweep_dir / 'study.db').absolute()}"
    if settings.sampler == "grid" and any(not d.values for d in dims):
        raise ConfigError("tune.sampler grid needs lists for every searched key (ranges have no grid)")
    if settings.sampler in ("random", "grid"):  # grid: every combination is enqueued below, in grid order
        sampler = optuna.samplers.RandomSampler(seed=settings.seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=settings.seed)
    pruner = make_pruner(settings.pruner, settings.pruner_startup_trials)
    study = optuna.create_study(study_name=STUDY, storage=storage, load_if_exists=True, sampler=sampler,
                                pruner=pruner, direction=settings.direction)
    fingerprint = {"objective": settings.objective, "space": {d.key: repr(d.distribution) for d in dims}}
    saved = study.user_attrs.get("fingerprint")
    if saved is None:
        study.set_user_attr("fingerprint", fingerprint)
        if settings.sampler == "grid":
            import itertools

            for combo in itertools.product(*(list(d.values) for d in dims)):
                study.enqueue_trial(dict(zip((d.key for d in dims), combo)))
    elif saved != fingerprint:
        raise ConfigError(f"{spec.sweep_dir}/study.db holds a study of another objective or search space "
                          f"({saved['objective']}, {sorted(saved['space'])}); choose another --sweep_dir")
    return study


def trial_run(spec: SweepSpec, dims: list[Dimension], params: dict[str, Any], metric: str) -> RunSpec:
    """The run of a trial: the base with the trial's values, and the pruning callback among the trainer's."""
    values = {d.key: d.value(params[d.key]) for d in dims}
    one = SweepSpec(spec.path, spec.base, spec.base_name, {}, {**spec.overrides, **values}, spec.sweep_dir)
    run = expand(one)[0]
    config = copy.deepcopy(run.config)
    trainer = config.setdefault("trainer", {})
    trainer["callbacks"] = [*(trainer.get("callbacks") or []),
                            {"class_path": CALLBACK, "init_args": {"metric": metric}}]
    labels = {d.key: str(params[d.key]) if d.values else value_label(values[d.key]) for d in dims}
    return RunSpec(run.index, run_id_for(config), values, labels, config)


def _value(run_dir: Path, metric: str) -> float | None:
    results = read_json(run_dir / "results.json") or {}
    val = results.get("val_metrics")
    return None if not isinstance(val, dict) or val.get(metric) is None else float(val[metric])


class _Driver:
    """The ask / run / tell loop; trials whose configuration is already running or done share its run."""

    def __init__(self, spec: SweepSpec, settings: TuneSettings, dims: list[Dimension], launcher: Any) -> None:
        self.optuna = optuna = engine("optuna")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.spec, self.settings, self.dims, self.launcher = spec, settings, dims, launcher
        self.study = _study(optuna, spec, settings, dims)
        self.storage = f"sqlite:///{(spec.sweep_dir / 'study.db').absolute()}"
        self.waiting: dict[str, list[int]] = {}  # run id -> trial numbers waiting for it
        self.runs: dict[str, RunSpec] = {}
        self.distributions = {d.key: d.distribution for d in dims}

    def _dispatch(self, trial: Any) -> None:
        run = trial_run(self.spec, self.dims, trial.params, self.settings.metric)
        self.runs[run.run_id] = run
        run_dir = self.spec.sweep_dir / run.run_id
        if run.run_id in self.waiting:  # the same configuration is running for another trial
            self.waiting[run.run_id].append(trial.number)
            return
        self.waiting[run.run_id] = [trial.number]
        if (run_dir / "results.json").is_file() or (read_json(run_dir / "status.json") or {}).get("status") == \
                "pruned":
            self._finish(run.run_id, read_json(run_dir / "status.json") or {"status": "done"})
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / TRIAL_FILE, {"storage": self.storage, "study_name": STUDY,
                                                 "trial_id": trial._trial_id, "number": trial.number,
                                                 "pruner": self.settings.pruner,
                                                 "pruner_startup_trials": self.settings.pruner_startup_trials})
        self.launcher.submit({**self._task(run.run_id), "trial": trial.number})

    def _finish(self, run_id: str, record: dict[str, Any]) -> None:
        TrialState = self.optuna.trial.TrialState
        value = _value(self.spec.sweep_dir / run_id, self.settings.metric)
        status = record.get("status")
        for number in self.waiting.pop(run_id, []):
            if status == "pruned":
                self.study.tell(number, state=TrialState.PRUNED)
            elif value is None:
                self.study.tell(number, state=TrialState.FAIL)
            else:
                self.study.tell(number, value)
            shown = "pruned" if status == "pruned" else "failed" if value is None else f"{value:.4f}"
            print(f"clkit tune: trial {number} {shown}  {run_id}  {point_text(self.runs[run_id].labels)}"
                  + (f"\n          error: {record['error']}" if record.get("error") else ""), flush=True)
        if status == "done" and value is None:
            raise ConfigError(f"{run_id} has no validation matrix: tuning needs validation splits (set "
                              "data.init_args.val_fraction > 0)")

    def run(self) -> None:
        TrialState = self.optuna.trial.TrialState
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # cut by a kill
            print(f"clkit tune: trial {trial.number} was cut; running it again (resumes from its checkpoints)")
            self._dispatch(self.optuna.trial.Trial(self.study, trial._trial_id))
        while True:
            started = len([t for t in self.study.get_trials(deepcopy=False) if t.state != TrialState.WAITING])
            while self.launcher.in_flight() < self.launcher.slots and started < self.settings.n_trials:
                if self.settings.sampler == "grid" and not self.study.get_trials(
                        deepcopy=False, states=(TrialState.WAITING,)):
                    break  # every combination asked
                self._dispatch(self.study.ask(self.distributions))
                started += 1
            if not self.launcher.in_flight():
                break
            for record in self.launcher.poll(2.0):
                if record["status"] == "busy":  # another process holds the run: try again in a moment
                    time.sleep(2.0)
                    self.launcher.submit(self._task(record["run_id"]))
                    continue
                self._finish(record["run_id"], record)
            write_index(self.spec, list(self.runs.values()))

    def _task(self, run_id: str) -> dict[str, Any]:
        return task_for(self.spec, self.runs[run_id])

    def summary(self) -> dict[str, Any]:
        TrialState = self.optuna.trial.TrialState
        trials = self.study.get_trials(deepcopy=False)
        rows = []
        for t in trials:
            run = trial_run(self.spec, self.dims, t.params, self.settings.metric) if t.params else None
            rows.append({"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params,
                         "run_id": run.run_id if run else None, "intermediate": {str(k): v for k, v in
                                                                                   t.intermediate_values.items()}})
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        best = self.study.best_trial if complete else None
        return {"objective": self.settings.objective, "direction": self.settings.direction, "reads": "validation",
                "n_trials": self.settings.n_trials, "sampler": self.settings.sampler, "pruner": self.settings.pruner,
                "updated": now(), "trials": rows,
                "selected": None if best is None else {
                    "number": best.number, "value": best.value, "params": best.params,
                    "values": {d.key: d.value(best.params[d.key]) for d in self.dims},
                    "run_id": trial_run(self.spec, self.dims, best.params, self.settings.metric).run_id},
                "final_seeds": self.settings.final_seeds}


def run_tune(spec: SweepSpec, settings: TuneSettings, dims: list[Dimension], launcher: Any) -> dict[str, Any]:
    """Run (or resume) the study, record ``tune.json``, then run the selected configuration over the final seeds.

    Returns the ``tune.json`` content.
    """
    from filelock import FileLock, Timeout

    spec.sweep_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(spec.sweep_dir / ".tune.lock"), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ConfigError(f"another clkit tune is running the study in {spec.sweep_dir}") from None
    try:
        print(f"clkit tune: {settings.n_trials} trials on {settings.objective} (validation matrix) -> "
              f"{spec.sweep_dir}; launcher {launcher.describe()}", flush=True)
        try:
            driver = _Driver(spec, settings, dims, launcher)
            driver.run()
            summary = driver.summary()
            write_json_atomic(spec.sweep_dir / "tune.json", summary)
            selected = summary["selected"]
            if selected is None:
                raise ClkitError(f"no trial finished in {spec.sweep_dir}; see each run's log.txt")
            print(f"clkit tune: selected trial {selected['number']} ({settings.objective} {selected['value']:.4f}): "
                  + " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in selected["params"].items()), flush=True)
            if settings.final_seeds:
                from clkit.cli.sweep import run_sweep

                counts = run_sweep(final_spec(spec, selected["values"], settings.final_seeds), launcher=launcher)
                if counts["failed"]:
                    raise ClkitError(f"{counts['failed']} final run(s) failed; see {spec.sweep_dir / 'final'}")
            return summary
        finally:
            launcher.close()
    finally:
        lock.release()


def final_spec(spec: SweepSpec, values: dict[str, Any], seeds: list[int]) -> SweepSpec:
    """The selected configuration over ``seeds``: an ordinary sweep in ``SWEEP_DIR/final`` (no pruning callback)."""
    return SweepSpec(spec.path, spec.base, spec.base_name, {"seed_everything": list(seeds)},
                     {**spec.overrides, **values}, spec.sweep_dir / "final")


def _parser() -> argparse.ArgumentParser:
    from clkit.cli.sweep import add_launcher_flags

    p = argparse.ArgumentParser(prog="clkit tune", exit_on_error=False, allow_abbrev=False,
                                description="Optuna search on the validation matrix (see docs/sweeps.md). Dotted keys "
                                            "(--trainer.max_epochs 1) override every run's config.")
    p.add_argument("tune_file", help="the tune YAML (base, overrides, search, tune, sweep_dir, launcher)")
    add_launcher_flags(p)
    p.add_argument("--n_trials", "--n-trials", type=int, default=None, help="trials of the study (total)")
    p.add_argument("--sweep_dir", "--sweep-dir", default=None, help="output directory (overrides the file's)")
    return p


def load_tune(path: Path, sweep_dir: str | None = None, overrides: dict[str, Any] | None = None,
              n_trials: int | None = None) -> tuple[SweepSpec, TuneSettings, list[Dimension]]:
    """Read and check a tune file."""
    engine("optuna")
    spec = load_sweep(Path(path), sweep_dir, extra_keys=("search", "tune"))
    if spec.grid:
        raise ConfigError("a tune file has a search section instead of a grid")
    dims = parse_space(spec.extra.get("search"))
    spec.override(overrides or {}, swept=[d.key for d in dims], what="search")
    return spec, parse_settings(spec.extra.get("tune"), n_trials), dims


def main(args: list[str]) -> None:
    """``clkit tune``; raises :class:`ClkitError` (one line, exit code 2) for a bad file or no finished trial."""
    from clkit.cli.errors import parse_subcommand
    from clkit.cli.sweep import LAUNCHER_FLAGS, launcher_for

    overrides, rest = parse_overrides(args)
    ns = parse_subcommand(_parser(), rest, "tune")
    if ns is None:
        return
    spec, settings, dims = load_tune(Path(ns.tune_file), ns.sweep_dir, overrides, ns.n_trials)
    launcher = launcher_for(spec, {k: getattr(ns, k) for k in LAUNCHER_FLAGS}, ns.launcher)
    try:
        run_tune(spec, settings, dims, launcher)
    except (KeyboardInterrupt, SystemExit):
        raise ClkitError(f"interrupted; the study is kept in {spec.sweep_dir / 'study.db'}: run the same command "
                         "again to continue") from None
