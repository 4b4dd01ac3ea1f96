"""Sweep files: a base ``clkit fit`` config plus a grid of dotted keys, expanded into one resolved config per run.

A sweep file::

    base: configs/quickstart.yaml     # a path (relative to the working directory, else to the sweep file),
                                      # an inline fit config, or absent (the embedded default of ``clkit fit``)
    overrides:                        # optional: dotted key -> one value, applied to every run
      trainer.max_epochs: 2
    grid:                             # dotted key -> list of values; the full cross product, first key outermost
      model: [{class_path: strategies.Naive}, {class_path: strategies.GPM}]
      seed_everything: [0, 1, 2]
    sweep_dir: sweeps/example         # optional; default sweeps/<sweep file stem>
    launcher: {name: local, workers: 2}   # optional (see clkit.cli.launchers); flags override it

Values are merged into the base in order of key depth (``model`` before ``model.init_args.lr``). A value that names
a different ``class_path`` than the node it replaces takes the node's place whole, so init args of one class never
leak into another; with the same ``class_path`` the init args are merged. Interpolations (``${seed_everything}``)
are resolved with OmegaConf after merging.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from clkit.errors import ConfigError

__all__ = [
    "RunSpec",
    "SweepSpec",
    "class_name",
    "expand",
    "load_sweep",
    "merge_value",
    "parse_overrides",
    "run_id_for",
    "value_label",
]

SWEEP_KEYS = ("base", "overrides", "grid", "sweep_dir", "launcher")
FIT_SECTIONS = ("seed_everything", "model", "data", "trainer")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
SWEEP_DEFAULTS = {"trainer.enable_progress_bar": False}  # progress bars only clutter per-run logs


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its position in the grid, id, grid values (raw and as labels) and resolved config."""

    index: int
    run_id: str
    grid: dict[str, Any]
    labels: dict[str, str]
    config: dict[str, Any]

    @property
    def names(self) -> dict[str, str]:
        """``{"strategy": ..., "scenario": ...}``: the class names of the run's model and data."""
        return {"strategy": class_name(self.config, "model"), "scenario": class_name(self.config, "data")}


@dataclass
class SweepSpec:
    """A parsed sweep file."""

    path: Path | None
    base: dict[str, Any]
    base_name: str
    grid: dict[str, list[Any]]
    overrides: dict[str, Any] = field(default_factory=dict)
    sweep_dir: Path = Path("sweeps/sweep")
    launcher: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    """Other top-level sections the caller allowed (``clkit tune``: ``search``, ``tune``)."""

    def override(self, overrides: dict[str, Any], swept: list[str] | None = None, what: str = "grid") -> None:
        """Apply command-line overrides (after the file's); a key the grid sweeps (or the keys ``swept`` by the
        section ``what``, e.g. a tune file's search) cannot be overridden.

        Raises:
            ConfigError: For a swept key or a key outside the fit config's sections.
        """
        keys = list(self.grid) if swept is None else swept
        for key in overrides:
            _check_key(key, "override")
            clash = [g for g in keys if g == key or g.startswith(key + ".") or key.startswith(g + ".")]
            if clash:
                raise ConfigError(f"--{key}: the {what} sweeps {clash[0]}; change the {what} instead of overriding it")
        self.overrides = {**self.overrides, **overrides}


def _read_yaml(path: Path, what: str) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {path} is not valid YAML: {str(err).splitlines()[0]}") from None


def _load_base(base: Any, sweep_path: Path | None) -> tuple[dict[str, Any], str]:
    if base is None:
        path = Path(str(resources.files("clkit") / "default.yaml"))
        return _read_yaml(path, "default config"), "clkit default"
    if isinstance(base, dict):
        return copy.deepcopy(base), "inline"
    if not isinstance(base, str):
        raise ConfigError(f"base must be a path or a mapping (an inline fit config), got {base!r}")
    tried = [Path(base)]
    if sweep_path is not None and not Path(base).is_absolute():
        tried.append(sweep_path.parent / base)
    for path in tried:
        if path.is_file():
            loaded = _read_yaml(path, "base config")
            if not isinstance(loaded, dict):
                raise ConfigError(f"base config {path} must be a mapping, got {type(loaded).__name__}")
            return loaded, str(base)
    raise ConfigError(f"base: no such file {base!r} (looked in {', '.join(str(p) for p in tried)})")


def _check_key(key: Any, where: str) -> str:
    if not isinstance(key, str) or not _KEY.match(key):
        raise ConfigError(f"{where} key {key!r} is not a dotted key such as 'model.init_args.lr'")
    if key.split(".")[0] not in FIT_SECTIONS:
        raise ConfigError(f"{where} key {key!r}: {key.split('.')[0]!r} is not a section of the fit config; "
                          f"valid sections: {', '.join(FIT_SECTIONS)}")
    return key


def parse_overrides(args: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Split ``--section.key value`` / ``--section.key=value`` overrides (and ``--seed_everything 3``; values read as
    YAML) from other arguments.

    Raises:
        ConfigError: For an override without a value.
    """
    overrides: dict[str, Any] = {}
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        name = arg[2:].split("=", 1)[0] if arg.startswith("--") else ""
        if name.split(".")[0] not in FIT_SECTIONS:
            rest.append(arg)
            i += 1
            continue
        if "=" in arg:
            text, i = arg.split("=", 1)[1], i + 1
        elif i + 1 < len(args):
            text, i = args[i + 1], i + 2
        else:
            raise ConfigError(f"{arg} needs a value, e.g. {arg} 1")
        try:
            overrides[name] = yaml.safe_load(text)
        except yaml.YAMLError:
            overrides[name] = text
    return overrides, rest


def load_sweep(path: Path, sweep_dir: str | None = None, extra_keys: tuple[str, ...] = ()) -> SweepSpec:
    """Read and check a sweep file; ``sweep_dir`` overrides the file's; ``extra_keys`` are further top-level keys
    the caller reads (kept in :attr:`SweepSpec.extra`).

    Raises:
        ConfigError: naming the bad key or value.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such sweep file: {path}")
    raw = _read_yaml(path, "sweep file")
    if not isinstance(raw, dict):
        raise ConfigError(f"sweep file {path} must be a mapping with keys {', '.join(SWEEP_KEYS)}")
    valid = SWEEP_KEYS + tuple(extra_keys)
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        raise ConfigError(f"sweep file {path}: unknown key(s) {unknown}; valid keys: {', '.join(valid)}")
    base, base_name = _load_base(raw.get("base"), path)
    grid = raw.get("grid") or {}
    overrides = raw.get("overrides") or {}
    if not isinstance(grid, dict) or not isinstance(overrides, dict):
        raise ConfigError("grid and overrides must be mappings of dotted keys")
    for key, values in grid.items():
        _check_key(key, "grid")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{key} must be a non-empty list of values, got {values!r}")
    for key in overrides:
        _check_key(key, "overrides")
    launcher = raw.get("launcher") or {}
    if isinstance(launcher, str):
        launcher = {"name": launcher}
    if not isinstance(launcher, dict):
        raise ConfigError(f"launcher must be a name (local, submitit, ray) or a mapping, got {launcher!r}")
    out = sweep_dir or raw.get("sweep_dir") or str(Path("sweeps") / path.stem)
    return SweepSpec(path, base, base_name, grid, overrides, Path(out), dict(launcher),
                     {k: raw[k] for k in extra_keys if k in raw})


def merge_value(node: Any, value: Any) -> Any:
    """``value`` merged into ``node``: mappings merge key by key, except that a different ``class_path`` replaces.

    A string given where the node is a ``class_path`` mapping is read as a class path without init args.
    """
    if isinstance(node, dict) and "class_path" in node and isinstance(value, str):
        value = {"class_path": value}
    if not (isinstance(node, dict) and isinstance(value, dict)):
        return copy.deepcopy(value)
    if "class_path" in value and node.get("class_path", value["class_path"]) != value["class_path"]:
        return copy.deepcopy(value)
    out = dict(node)
    for k, v in value.items():
        out[k] = merge_value(node.get(k), v)
    return out


def _assign(config: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node: Any = config
    for part in parts[:-1]:
        child = node.get(part) if isinstance(node, dict) else None
        if isinstance(child, str) and part in ("model", "data"):
            child = {"class_path": child}
        if not isinstance(child, dict):
            child = {}
        node[part] = child
        node = child
    node[parts[-1]] = merge_value(node.get(parts[-1]), value)


def _resolve(config: dict[str, Any], where: str) -> dict[str, Any]:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        resolved = OmegaConf.to_container(OmegaConf.create(config), resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{where}: cannot resolve the config: {str(err).splitlines()[0]}") from None
    assert isinstance(resolved, dict)
    return resolved  # type: ignore[return-value]


def value_label(value: Any, short: bool = True) -> str:
    """A short readable label of a grid value: a class name for ``class_path`` mappings, compact JSON otherwise."""
    if isinstance(value, dict) and "class_path" in value:
        name = str(value["class_path"]).rsplit(".", 1)[-1]
        args = value.get("init_args") or {}
        if short or not args:
            return name
        return f"{name}(" + ", ".join(f"{k}={value_label(v, short=False)}" for k, v in args.items()) + ")"
    if isinstance(value, str):  # a bare class path labels like its mapping form: strategies.GPM -> GPM
        return value.rsplit(".", 1)[-1] if re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*\.[A-Z]\w*", value) else value
    return json.dumps(value, separators=(",", ":"))


def _labels(grid: dict[str, list[Any]]) -> dict[str, list[str]]:
    """Labels per grid key; class names, unless two values of a key share one (then their init args too)."""
    out = {}
    for key, values in grid.items():
        short = [value_label(v) for v in values]
        out[key] = [s if short.count(s) == 1 else value_label(v, short=False) for s, v in zip(short, values)]
    return out


def class_name(config: dict[str, Any], section: str) -> str:
    """The class name of a config section (``model`` -> ``"GPM"``), or the section name if it has none."""
    node = config.get(section)
    path = node.get("class_path", section) if isinstance(node, dict) else (node or section)
    return str(path).rsplit(".", 1)[-1]


def run_id_for(config: dict[str, Any]) -> str:
    """``<strategy>-<scenario>-s<seed>-<hash>``: a readable prefix and 10 hex digits of the resolved config's hash."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:10]
    prefix = f"{class_name(config, 'model')}-{class_name(config, 'data')}-s{config.get('seed_everything', 'x')}"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", prefix) + "-" + digest


def expand(spec: SweepSpec) -> list[RunSpec]:
    """Every run of the grid (full cross product, first key outermost), each with its resolved config.

    Raises:
        ConfigError: If a config cannot be resolved, or two grid points give the same run config.
    """
    keys = list(spec.grid)
    labels = _labels(spec.grid)
    runs: list[RunSpec] = []
    seen: dict[str, dict[str, str]] = {}
    depth_order = sorted(range(len(keys)), key=lambda i: keys[i].count("."))
    for index, choice in enumerate(itertools.product(*(range(len(spec.grid[k])) for k in keys))):
        config = copy.deepcopy(spec.base)
        fixed = {**SWEEP_DEFAULTS, **spec.overrides}
        for key in sorted(fixed, key=lambda k: k.count(".")):
            if key in spec.overrides or _lookup(config, key) is None:
                _assign(config, key, fixed[key])
        for i in depth_order:
            _assign(config, keys[i], spec.grid[keys[i]][choice[i]])
        point = {k: labels[k][c] for k, c in zip(keys, choice)}
        resolved = _resolve(config, f"grid point {point}")
        run_id = run_id_for(resolved)
        if run_id in seen:
            raise ConfigError(f"grid points {seen[run_id]} and {point} give the same run config; "
                              "remove the repeated value")
        seen[run_id] = point
        runs.append(RunSpec(index, run_id, {k: spec.grid[k][c] for k, c in zip(keys, choice)}, point, resolved))
    return runs


def _lookup(config: dict[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node
