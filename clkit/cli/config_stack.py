"""Config sources of ``clkit fit`` in order (``--config`` files and ``--key value`` arguments), and two rules on them.

- **A class change starts its section afresh.** When a later source gives ``model`` or ``data`` another class
  (``--config a.yaml --config b.yaml`` with a different strategy, or ``--model Naive`` after a config of GPM), the
  arguments that earlier sources gave the old class are dropped, instead of being carried over to the new class
  whenever it accepts them (jsonargparse's rule, which let GPM's backbone leak into Naive).
- **``--print_config`` keeps interpolations.** The printed config shows ``${seed_everything}`` where a source wrote
  it, so a printed config reused with ``--seed_everything 1`` follows the new seed (``--print_config=resolved``
  prints the resolved values).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import yaml

__all__ = ["SECTIONS_WITH_CLASS", "interpolations", "replace_on_class_change", "restore_interpolations"]

SECTIONS_WITH_CLASS = ("model", "data")


def _load(path: str) -> Any:
    try:
        return yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None  # check_config_file reports it


def _class_of(value: Any) -> Optional[str]:
    """The short class name a section value sets (``strategies.GPM`` / ``{"class_path": "GPM"}`` -> ``GPM``)."""
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            return None
    if isinstance(value, str):
        return value.rsplit(".", 1)[-1] or None
    if isinstance(value, dict) and isinstance(value.get("class_path"), str):
        return str(value["class_path"]).rsplit(".", 1)[-1]
    return None


def _tokens(args: list[str]) -> list[tuple[str, Optional[str], int, int]]:
    """``(key, value, start, end)`` per argument: ``--key value`` and ``--key=value`` (``value`` None for a flag)."""
    out: list[tuple[str, Optional[str], int, int]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--") and "=" in arg:
            key, value = arg.split("=", 1)
            out.append((key[2:], value, i, i + 1))
            i += 1
        elif arg.startswith("--") and i + 1 < len(args) and not args[i + 1].startswith("--"):
            out.append((arg[2:], args[i + 1], i, i + 2))
            i += 2
        else:
            out.append((arg[2:] if arg.startswith("--") else arg, None, i, i + 1))
            i += 1
    return out


def replace_on_class_change(args: list[str], tmp: Callable[[], Path]) -> list[str]:
    """``args`` in which every source before a class change of ``model``/``data`` no longer sets that section:
    ``--model.*`` arguments are removed, and ``--config`` files are replaced by copies (under ``tmp()``) without the
    section."""
    tokens = _tokens(args)
    drop: dict[int, set[str]] = {}  # token index -> sections to drop from it
    for section in SECTIONS_WITH_CLASS:
        current: Optional[str] = None
        setters: list[int] = []  # tokens that set something in the section since the class was last set
        for k, (key, value, _, _) in enumerate(tokens):
            if key == "config" and value is not None:
                data = _load(value)
                if not isinstance(data, dict) or section not in data:
                    continue
                cls = _class_of(data[section])
            elif key == section:
                cls = _class_of(value)
            elif key.startswith(section + "."):
                setters.append(k)
                continue
            else:
                continue
            if cls is not None and current is not None and cls != current:
                for s in setters:
                    drop.setdefault(s, set()).add(section)
                setters = []
            current = cls or current
            setters.append(k)
    if not drop:
        return args
    out: list[str] = []
    for k, (key, value, start, end) in enumerate(tokens):
        sections = drop.get(k)
        if not sections:
            out += args[start:end]
        elif key == "config" and value is not None:
            out += ["--config", _without(value, sections, tmp)]
        # else: a --model / --model.* argument of the replaced class: dropped
    return out


def _without(path: str, sections: set[str], tmp: Callable[[], Path]) -> str:
    data = dict(_load(path))
    for section in sections:
        data.pop(section, None)
    folder = tmp() / f"stack{len(list(tmp().iterdir()))}"
    folder.mkdir()
    copy = folder / Path(path).name
    copy.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(copy)


def _walk(node: Any, prefix: tuple[str, ...], out: dict[tuple[str, ...], Any]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            _walk(value, (*prefix, str(key)), out)
    else:
        out[prefix] = node


def _canonical(path: tuple[str, ...]) -> tuple[str, ...]:
    """``data.seed`` -> ``data.init_args.seed`` (the dumped config's form of a class section)."""
    if len(path) >= 2 and path[0] in (*SECTIONS_WITH_CLASS, "optimizer", "lr_scheduler") and path[1] not in (
            "class_path", "init_args"):
        return (path[0], "init_args", *path[1:])
    return path


def interpolations(args: list[str]) -> dict[tuple[str, ...], str]:
    """The keys whose final raw value (over every source, in order) is an OmegaConf interpolation ``${...}``."""
    last: dict[tuple[str, ...], Any] = {}
    for key, value, _, _ in _tokens(args):
        if key == "config" and value is not None:
            found: dict[tuple[str, ...], Any] = {}
            data = _load(value)
            if isinstance(data, dict):
                _walk(data, (), found)
            last.update({_canonical(p): v for p, v in found.items()})
        elif value is not None and key:
            parsed: Any = value
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                pass
            found = {}
            _walk(parsed, tuple(key.split(".")), found)
            path = _canonical(tuple(key.split(".")))
            for p in [p for p in last if p[: len(path)] == path]:
                del last[p]  # a new value for a whole section replaces its keys
            last.update({_canonical(p): v for p, v in found.items()})
    return {p: v for p, v in last.items() if isinstance(v, str) and "${" in v}


def restore_interpolations(config: dict[str, Any], raw: dict[tuple[str, ...], str]) -> dict[str, Any]:
    """``config`` (resolved) with the interpolations of ``raw`` put back where the key still exists."""
    for path, text in raw.items():
        node: Any = config
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and path[-1] in node:
            node[path[-1]] = text
    return config
