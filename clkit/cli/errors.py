"""One-line CLI errors from jsonargparse's messages, with the valid values appended (classes, arguments, keys)."""

from __future__ import annotations

import re
from typing import Any, NoReturn

from clkit.errors import ConfigError

__all__ = ["first_line", "parse_subcommand"]

_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value",
          "Expected a <class 'NoneType'>", "Expected a path but")


def first_line(err: BaseException) -> str:
    """Condense a jsonargparse error into one line: keep what names the bad value, drop the union noise."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    kept = [ln.lstrip("- ").rstrip(":") for ln in lines if not ln.lstrip("- ").startswith(_NOISE)]
    text = ": ".join(kept) if kept else type(err).__name__
    return _with_valid_values(text)


def _with_valid_values(text: str) -> str:
    """Append what would have been valid: the classes for a bad class name, the arguments for a bad argument."""
    section = re.search(r'Parser key "(model|data)"', text)
    if "has no attribute" in text or "Expected a dot import path" in text:
        packages = {"model": ["strategies"], "data": ["scenarios"]}.get(section.group(1) if section else "",
                                                                         ["strategies", "scenarios"])
        text += "".join(f" (valid {p}: {', '.join(_names(p))})" for p in packages)
    elif "is not accepted" in text and (path := re.search(r"class_path '([\w.]+)'", text)):
        text += f" (valid arguments of {path.group(1).rsplit('.', 1)[-1]}: {', '.join(_init_args(path.group(1)))})"
    elif text.startswith("unrecognized arguments: --trainer."):
        import pytorch_lightning as pl

        text += f" (valid trainer keys: {', '.join(_init_args(pl.Trainer))})"
    return text if len(text) < 1600 else text[:1600] + " ..."


def _init_args(target: Any) -> list[str]:
    """Keyword arguments of a class's constructor (``target``: the class or its dotted path)."""
    import importlib
    import inspect

    if isinstance(target, str):
        module, _, name = target.rpartition(".")
        target = getattr(importlib.import_module(module), name)
    names: list[str] = []
    for cls in target.__mro__ if inspect.isclass(target) else [target]:  # **kwargs: the parents' arguments too
        if "__init__" not in vars(cls):
            continue
        params = inspect.signature(vars(cls)["__init__"]).parameters.values()
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                  and p.name not in names]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names


def _names(package: str) -> list[str]:
    """Public classes of ``package`` by the short names ``--model``/``--data`` accept (``GPM``, ``SplitDigits``)."""
    import importlib

    return [n for n in getattr(importlib.import_module(package), "__all__", []) if n[0].isupper()
            and n != "STRATEGIES"]


def parse_subcommand(parser: Any, args: list[str], command: str) -> Any:
    """Parse ``args`` with an argparse ``parser`` (built with ``exit_on_error=False``); ``None`` after ``--help``.

    Raises:
        ConfigError: One line naming the problem, instead of argparse's usage text and exit.
    """
    import argparse

    if any(a in ("-h", "--help") for a in args):
        parser.print_help()
        return None
    def one_line(message: str) -> NoReturn:  # argparse's error() prints the usage text and exits
        raise ConfigError(f"clkit {command}: {message} (see clkit {command} --help)")

    parser.error = one_line
    try:
        return parser.parse_args(args)
    except argparse.ArgumentError as err:
        one_line(str(err))
