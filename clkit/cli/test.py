"""``clkit test RUN_DIR [--key value ...]``: re-evaluate a finished run from its checkpoints.

The run's ``config.yaml`` is parsed again (with any overrides, e.g. ``--data.init_args.test_fraction 0.5`` or
``--test_passes 3``), every ``checkpoints/exp{i}.pt`` is loaded in turn and evaluated on every test and validation
split (no training), and the rebuilt matrices are written to ``RUN_DIR/retest.json`` (or ``--out FILE``) with their
largest difference from ``results.json``. Without overrides the difference is 0: the reported numbers come from the
stored models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clkit.errors import ConfigError, DataError

__all__ = ["main"]

USAGE = "usage: clkit test RUN_DIR [--out FILE] [--key value ...] (overrides of the run's config.yaml)"


def _split(args: list[str]) -> tuple[Path, Path | None, list[str]]:
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        raise SystemExit(0)
    if args[0].startswith("-"):
        raise ConfigError(f"clkit test needs a run directory first, got {args[0]!r}; {USAGE}")
    run_dir, rest, out = Path(args[0]), list(args[1:]), None
    for flag in ("--out",):
        if flag in rest:
            k = rest.index(flag)
            if k + 1 >= len(rest):
                raise ConfigError(f"{flag} needs a file path")
            out = Path(rest[k + 1])
            del rest[k:k + 2]
    return run_dir, out, rest


def _max_difference(a: list[list[Any]], b: list[list[Any]]) -> float | None:
    if len(a) != len(b) or any(len(x) != len(y) for x, y in zip(a, b)):
        return None
    diffs = [abs(float(u) - float(v)) for x, y in zip(a, b) for u, v in zip(x, y) if u is not None and v is not None]
    return max(diffs, default=0.0)


def main(args: list[str]) -> None:
    from clkit.cli.fit import _build_cli, _resolved_config
    from clkit.loop import quiet_lightning, trainer_factory
    from clkit.reevaluation import ReevaluationRun
    from clkit.results import write_json

    run_dir, out, overrides = _split(args)
    config, published = run_dir / "config.yaml", run_dir / "results.json"
    if not config.is_file():
        raise DataError(f"{run_dir} is not a clkit run directory (no config.yaml)")
    quiet_lightning()
    cli = _build_cli(["--config", str(config), *overrides])
    section = cli.config_init.get("trainer")
    kept = {k: section[k] for k in ("accelerator", "devices", "precision") if section.get(k) is not None}
    run = ReevaluationRun(cli.model, cli.datamodule, trainer_factory(**kept), source=run_dir,
                          test_passes=int(cli.config.get("test_passes", 1)))
    result = run.run()
    seed = cli.config.get("seed_everything")
    rebuilt = result.results(seed=seed, config=_resolved_config(cli))
    before = json.loads(published.read_text()) if published.is_file() else None
    difference = None if before is None else _max_difference(before["accuracy_matrix"], rebuilt["accuracy_matrix"])
    rebuilt.update({"reevaluated_from": str(run_dir), "overrides": overrides,
                    "max_abs_difference_from_results": difference})
    target = out or run_dir / "retest.json"
    write_json(target, rebuilt)
    m = rebuilt["metrics"]
    same = "" if difference is None else (f"; max |ΔR| vs results.json {difference:.4f}"
                                          + (" (identical)" if difference == 0 else ""))
    print(f"clkit test: {rebuilt['strategy']} on {rebuilt['scenario']}, {len(run.per_experience)} checkpoints: "
          f"acc {m['acc']:.4f}  bwt {m['bwt']:+.4f}  fwt {m['fwt']:+.4f}  forgetting {m['forgetting']:.4f}{same} "
          f"-> {target}")
