"""The ``clkit`` command: ``fit`` (one experiment), ``report`` (tables of runs), ``sweep`` (grids of runs).

``clkit fit`` is a LightningCLI in OmegaConf mode (``${...}`` interpolation, resolved after command-line
overrides), built with ``run=False``: it parses and instantiates ``model`` (a strategy), ``data`` (a scenario) and
``trainer`` (per-experience settings), then runs :class:`clkit.loop.StreamRun` with a fresh Trainer per experience.
"""

from __future__ import annotations

import copy
import json
import sys
import warnings
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import yaml

from clkit.cli.config_stack import interpolations, replace_on_class_change, restore_interpolations
from clkit.cli.errors import first_line
from clkit.cli.trainers import RUN_DIR, build_loggers, default_logger_dirs, make_trainer_factory, temporary_dir
from clkit.errors import ClkitError, ConfigError, DataError

__all__ = ["run_fit"]

TRAINER_DEFAULTS = {"max_epochs": 5, "enable_checkpointing": False, "enable_model_summary": False}


def _default_config() -> str:
    return str(resources.files("clkit") / "default.yaml")


def _build_cli(args: list[str]) -> Any:
    from pytorch_lightning.cli import LightningCLI, LRSchedulerTypeTuple
    from torch.optim import Optimizer

    import scenarios  # noqa: F401  (imported so that short class names such as --data SplitDigits resolve)
    import strategies  # noqa: F401  (likewise --model GPM)

    class ClkitCLI(LightningCLI):
        def add_arguments_to_parser(self, parser: Any) -> None:
            parser.add_argument("--run_dir", type=Optional[str], default=None,
                                help="output directory (default: runs/<strategy>-<scenario>-seed<seed>-<time>)")
            parser.add_argument("--resume", type=Optional[str], default=None,
                                help="continue the run in this directory after its last completed experience")
            parser.add_argument("--test_passes", type=int, default=1,
                                help="evaluation passes per accuracy-matrix row, over reshuffled batches (for "
                                     "networks that normalise with test-batch statistics)")
            # --optimizer / --lr_scheduler as in LightningCLI; they replace the strategy's own defaults
            parser.add_optimizer_args((Optimizer,))
            parser.add_lr_scheduler_args(LRSchedulerTypeTuple)

        def before_instantiate_classes(self) -> None:
            for key in ("optimizer", "lr_scheduler"):  # a top-level section replaces the strategy's argument
                if self.config.get(key) is not None:
                    self.config.model.init_args[key] = self.config[key]

        def instantiate_trainer(self, **kwargs: Any) -> Any:
            """Keep the user's callbacks as configured (the Trainer built here, only to check the trainer section,
            appends Lightning's progress bar and checkpoint callbacks to the same list)."""
            from pytorch_lightning.callbacks import ModelCheckpoint

            section = self.config_init.get("trainer")
            callbacks = section.get("callbacks") or []
            callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
            self.user_callbacks = copy.deepcopy(callbacks)
            if any(isinstance(c, ModelCheckpoint) for c in callbacks):
                section["enable_checkpointing"] = True  # clkit's default is off; a configured checkpoint turns it on
            section["callbacks"] = list(callbacks)
            return super().instantiate_trainer(**kwargs)

    if not any(a == "--config" or a.startswith("--config=") for a in args):
        args = ["--config", _default_config(), *args]
    for path in _config_files(args):
        check_config_file(path)
    args = _strategy_optimizer_args(args)
    tmp, cleanup = temporary_dir()
    args = default_logger_dirs(replace_on_class_change(args, tmp), tmp)
    printing = next((a for a in args if a == "--print_config" or a.startswith("--print_config=")), None)
    resolved = printing is not None and "resolved" in printing.partition("=")[2].split(",")
    if printing is not None and resolved:
        flags = [f for f in printing.partition("=")[2].split(",") if f != "resolved"]
        args = [("--print_config" + ("=" + ",".join(flags) if flags else "")) if a == printing else a for a in args]
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when sys.argv and args both hold arguments
    try:
        if printing is not None and not resolved:
            return _print_unresolved(lambda: _instantiate(ClkitCLI, args), interpolations(args))
        return _instantiate(ClkitCLI, args)
    except ClkitError:
        raise
    except (ValueError, TypeError, KeyError, ImportError, yaml.YAMLError) as err:
        raise ConfigError(first_line(err)) from None
    except Exception as err:  # jsonargparse's ArgumentError and friends
        if type(err).__name__ in ("ArgumentError", "ParserError", "NSKeyError", "ScannerError",
                                  "MisconfigurationException"):
            raise ConfigError(first_line(err)) from None
        raise
    finally:
        sys.argv = argv
        cleanup()


def _instantiate(cli_class: Any, args: list[str]) -> Any:
    from clkit.data import ContinualDataModule
    from clkit.module import ContinualModule

    return cli_class(ContinualModule, ContinualDataModule, subclass_mode_model=True, subclass_mode_data=True,
                     run=False, auto_configure_optimizers=False, save_config_callback=None,
                     seed_everything_default=0, trainer_defaults=TRAINER_DEFAULTS,
                     parser_kwargs={"parser_mode": "omegaconf+", "exit_on_error": False, "allow_abbrev": False},
                     args=args)


def _print_unresolved(build: Any, raw: dict[tuple[str, ...], str]) -> Any:
    """Run ``build`` (which prints the resolved config and exits) and print that config with the interpolations of
    the sources put back (see :mod:`clkit.cli.config_stack`)."""
    import contextlib
    import io

    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            return build()
    except SystemExit as done:
        printed = out.getvalue()
        if done.code in (0, None) and raw:
            config = restore_interpolations(yaml.safe_load(printed), raw)
            printed = yaml.safe_dump(config, sort_keys=False)
        sys.stdout.write(printed)
        raise


def _config_files(args: list[str]) -> list[str]:
    files = [b for a, b in zip(args, args[1:]) if a == "--config"]
    return files + [a.split("=", 1)[1] for a in args if a.startswith("--config=")]


def check_config_file(path: str) -> None:
    """A config file must exist and hold a YAML mapping of known sections; any problem is one line naming the file.

    Raises:
        ConfigError: For a missing, unreadable, empty, malformed or non-mapping file, or an unknown section.
    """
    from clkit.cli.errors import SECTIONS

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config {path}: the file does not exist")
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"--config {path}: cannot read it ({err})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        line = text.splitlines()[mark.line] if mark is not None and mark.line < len(text.splitlines()) else ""
        hint = " (a tab: YAML indents with spaces only)" if "\t" in line else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"--config {path}: invalid YAML{where}: {problem}{hint}") from None
    if data is None:
        raise ConfigError(f"--config {path} is empty; a config maps sections ({', '.join(SECTIONS[:5])}, ...) to "
                          "their settings")
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path} holds a {type(data).__name__}, not a mapping of sections "
                          f"({', '.join(SECTIONS[:5])}, ...)")
    unknown = sorted(str(k) for k in data if k not in SECTIONS)
    if unknown:
        raise ConfigError(f"--config {path}: unknown section(s) {', '.join(repr(k) for k in unknown)}; valid sections: "
                          f"{', '.join(SECTIONS)}")


def _strategy_optimizer_args(args: list[str]) -> list[str]:
    """``--optimizer.lr 0.1`` without ``--optimizer CLASS`` changes the strategy's own optimizer (its
    ``model.init_args.optimizer``); with a class, ``--optimizer`` replaces it, as in LightningCLI."""
    if any(a == "--optimizer" or a.startswith("--optimizer=") for a in args):
        return args
    return [("--model.init_args.optimizer." + a[len("--optimizer."):]) if a.startswith("--optimizer.") else a
            for a in args]


def run_fit(args: list[str]) -> Path:
    """Parse ``clkit fit`` arguments, run the experiment, write the outputs; returns the run directory."""
    from clkit.cli.rundir import RunDirLock, interrupts_as_errors
    from clkit.loop import quiet_lightning

    quiet_lightning()  # a Trainer per experience would repeat Lightning's start-up notes T times
    if str(Path.cwd()) not in sys.path and "" not in sys.path:
        sys.path.append(str(Path.cwd()))  # --model mypkg.MyStrategy from the working directory (after clkit's own)
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")  # losses are per epoch
    warnings.filterwarnings("ignore", message=".*treespec, LeafSpec.*")  # Lightning's use of a torch deprecation
    with interrupts_as_errors():
        cli = _build_cli(args)
        cfg = cli.config
        resume = cfg.get("resume")
        run_dir = Path(resume or cfg.get("run_dir") or _default_run_dir(cli.model, cli.datamodule,
                                                                          cfg.get("seed_everything")))
        if run_dir.exists() and not run_dir.is_dir():
            raise ConfigError(f"{'--resume' if resume else '--run_dir'} {run_dir} is a file, not a run directory")
        if resume and not run_dir.is_dir():
            raise ConfigError(f"--resume {run_dir}: no such run directory")
        try:
            if not _is_rank_zero():  # DDP ranks > 0 run the same command: rank 0 owns the directory
                return _fit(cli, run_dir)
            with RunDirLock(run_dir):
                return _fit(cli, run_dir)
        except OSError as err:  # a read-only or full disk, a path under /sys, ...
            raise DataError(f"cannot write the run directory {run_dir}: {err.strerror or err} "
                            f"({err.filename or run_dir})") from None


def _interruption(err: BaseException) -> Exception | None:
    """The :class:`clkit.errors.Interrupted` in ``err``'s cause/context chain, if any: Ctrl-C raises it from a signal
    handler wherever the process is, e.g. inside ``inspect.getfullargspec``, which turns it into a TypeError."""
    from clkit.errors import Interrupted

    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, Interrupted):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def _fit(cli: Any, run_dir: Path) -> Path:
    from clkit.cli.rundir import prepare_run_dir
    from clkit.errors import Interrupted, NonFiniteLossError
    from clkit.loop import StreamRun
    from clkit.results import partial_results, write_json, write_run_outputs

    cfg = cli.config
    seed, resume = cfg.get("seed_everything"), bool(cfg.get("resume"))
    config = _resolved_config(cli, run_dir)
    prepare_run_dir(run_dir, config, resuming=resume, write=_is_rank_zero())
    make_trainer, loggers = _trainer_factory(cli, run_dir)
    loggers.log_config(config)
    run = StreamRun(cli.model, cli.datamodule, make_trainer, run_dir=run_dir, logger=loggers, verbose=True,
                    test_passes=int(cfg.get("test_passes", 1)), about={"config": config})
    status = "failed"
    try:
        try:
            result = run.run(resume=resume)
        except Exception as err:  # a library's `except Exception` may have wrapped a Ctrl-C raised inside it
            interrupted = _interruption(err)
            if interrupted is None:
                raise
            raise interrupted from None
        status = "success"
    except ClkitError as err:
        if not _is_rank_zero():
            raise
        if run.completed:
            write_json(run_dir / "results.partial.json",
                       partial_results(run.result(), run.completed, seed=seed, config=config, error=str(err)))
        if isinstance(err, ConfigError) and not run.completed:
            raise ConfigError(str(err)) from None  # a bad setting, nothing trained: nothing to resume
        advice = f"continue with the same command and --resume {run_dir}"
        if isinstance(err, ConfigError):
            advice = (f"fix the setting, then continue with --resume {run_dir} (a resume may change the optimizer and "
                      "the trainer section)")
        if isinstance(err, NonFiniteLossError) and err.lr:
            advice += f" --optimizer.lr {err.lr / 10:g} (a resume may change the optimizer and the trainer section)"
        done = f"{run.completed} experience(s) finished" + (f", checkpoints in {run_dir / 'checkpoints'}"
                                                            if run.completed else "")
        raised = type(err) if isinstance(err, Interrupted) else ClkitError
        raise raised(f"{err} ({done}; {advice})") from None
    finally:
        loggers.close(status)
    results = result.results(seed=seed, config=config)
    smoke = (config.get("trainer") or {}).get("fast_dev_run")
    if smoke:
        results["fast_dev_run"] = smoke  # a smoke test: clkit report skips it
    resumes = run_dir / "resumes.json"
    if resumes.is_file():
        results["resumes"] = json.loads(resumes.read_text()).get("resumes", [])
    if not _is_rank_zero():  # under DDP every rank holds the same results; one writes them
        return run_dir
    write_run_outputs(run_dir, results)
    (run_dir / "results.partial.json").unlink(missing_ok=True)
    m = results["metrics"]
    if smoke:
        print(f"clkit: fast_dev_run: a smoke test of {results['strategy']} on {results['scenario']} (not a result; "
              f"clkit report skips it) -> {run_dir}")
        return run_dir
    print(f"clkit: {results['strategy']} on {results['scenario']}: acc {m['acc']:.4f}  bwt {m['bwt']:+.4f}  "
          f"fwt {m['fwt']:+.4f}  forgetting {m['forgetting']:.4f}  ({results['wall_seconds']:.1f} s) -> {run_dir}")
    return run_dir


def _is_rank_zero() -> bool:
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def _default_run_dir(model: Any, data: Any, seed: Any) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{type(model).__name__}-{type(data).__name__}-seed{seed}-{stamp}"
    path, n = base, 1
    while path.exists():  # two runs started in the same second
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return path


def _resolved_config(cli: Any, run_dir: Optional[Path] = None) -> dict[str, Any]:
    dumped = cli.parser.dump(cli.config, skip_none=False, skip_check=True)
    if run_dir is not None:
        dumped = dumped.replace(RUN_DIR, str(run_dir))  # loggers placed in the run directory
    config = yaml.safe_load(dumped)
    for key in ("config", "run_dir", "resume", "print_config", "optimizer", "lr_scheduler"):
        config.pop(key, None)  # (--optimizer/--lr_scheduler were merged into model.init_args)
    return config


def _trainer_factory(cli: Any, run_dir: Path) -> tuple[Any, Any]:
    """A Trainer per experience from the ``trainer`` section (see :mod:`clkit.cli.trainers`), and the loggers."""
    section = cli.config_init.get("trainer")
    kwargs = {k: section[k] for k in section.keys() if "." not in k}
    loggers = build_loggers(kwargs.get("logger"), cli.config.get("trainer", {}).get("logger"), run_dir)
    callbacks = getattr(cli, "user_callbacks", None)
    if callbacks is None:
        callbacks = kwargs.get("callbacks") or []
    return make_trainer_factory(kwargs, callbacks, loggers, run_dir), loggers
