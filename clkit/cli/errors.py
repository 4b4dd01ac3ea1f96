"""One-line CLI errors from jsonargparse's messages, with the valid values appended (classes, arguments, keys)."""

from __future__ import annotations

import re
from typing import Any, NoReturn

from clkit.errors import ConfigError

__all__ = ["first_line", "parse_subcommand"]

_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value",
          "Expected a <class 'NoneType'>", "Expected a path but")


SECTIONS = ("model", "data", "trainer", "optimizer", "lr_scheduler", "seed_everything", "run_dir", "resume",
            "test_passes", "config", "print_config")
BASES = {"model": ("strategies", "a strategy (a clkit.ContinualModule subclass)"),
         "data": ("scenarios", "a scenario (a clkit.ContinualDataModule subclass)")}
BACKBONES = ("clkit.nets.MLP", "clkit.nets.SmallCNN", "strategies.projection.AlexNetGPM",
             "strategies.projection.ReducedResNet18", "strategies.supermask.MaskedMLP", "strategies.supermask.MaskedCNN",
             "strategies.supermask.MaskedGEMResNet18")


def _strip_bullet(line: str) -> str:
    """``"- text"`` -> ``"text"``; a leading minus of a number (``-1 is not in bounds``) stays."""
    return line[2:] if line.startswith("- ") else line


def first_line(err: BaseException) -> str:
    """Condense a jsonargparse error into one line: keep what names the bad value, drop the union noise."""
    raw = str(err)
    lines = [_strip_bullet(ln.strip()) for ln in raw.splitlines() if ln.strip()]
    kept = [ln.rstrip(":") for ln in lines if not ln.startswith(_NOISE)]
    text = ": ".join(kept) if kept else type(err).__name__
    given = re.findall(r"^\s*Given value: (.*)$", raw, flags=re.M)
    return _with_valid_values(text, given[-1].strip() if given else None)


def _with_valid_values(text: str, given: str | None = None) -> str:
    """Append what would have been valid: the classes for a bad class name, the arguments for a bad argument, the
    value given for a bad type."""
    if 'Parser key "trainer.precision"' in text:
        return _trainer_hint(text, given)
    section = re.search(r'Parser key "(model|data)"', text)
    if 'Parser key "backbone"' in text and ("has no attribute" in text or "does not correspond" in text):
        text += f" (valid backbones include: {', '.join(BACKBONES)})"
    elif "has no attribute" in text or "Expected a dot import path" in text:
        packages = {"model": ["strategies"], "data": ["scenarios"]}.get(section.group(1) if section else "",
                                                                         ["strategies", "scenarios"])
        bad = re.search(r"(?:import path string|has no attribute)[: ]+'?([\w.]+)'?", text)
        text += "".join(f" (valid {p}: {', '.join(_names(p))})" for p in packages)
        close = _closest(bad.group(1).rsplit(".", 1)[-1], [n for p in packages for n in _names(p)]) if bad else None
        if close:
            text += f"; did you mean {close}?"
    elif "does not correspond to a subclass" in text and section and given:
        package, what = BASES[section.group(1)]
        text = (f"--{section.group(1)} {given} is not {what}; valid {package}: {', '.join(_names(package))}, or your "
                "own subclass")
    elif "is not accepted" in text and (paths := re.findall(r"class_path '([\w.]+)'", text)):
        path = paths[-1]  # the innermost class: the one whose argument was mistyped
        text += f" (valid arguments of {path.rsplit('.', 1)[-1]}: {', '.join(_init_args(path))})"
    elif text.startswith("unrecognized arguments: --trainer."):
        import pytorch_lightning as pl

        text += f" (valid trainer keys: {', '.join(_init_args(pl.Trainer))})"
    elif text.startswith("unrecognized arguments") or "Key \"" in text and "not found" in text:
        text += f" (valid sections: {', '.join(SECTIONS)})"
    elif re.search(r"Expected a <class '\w+'>", text) and given is not None:
        expected = sorted(set(re.findall(r"Expected a <class '(\w+)'>", text)) - {"NoneType"})
        key = re.search(r'Parser key "([\w.]+)"', text)
        where = key.group(1) if key else "a value"
        text = f"{where}: expected {' or '.join(expected)}, got {given!r}"
    text = _trainer_hint(text, given)
    if re.match(r"^-?\d+ is not in bounds", text):
        text = f"seed_everything={text}"
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


def _available_accelerators() -> list[str]:
    from pytorch_lightning.accelerators import AcceleratorRegistry

    found = []
    for name in ("cpu", "cuda", "mps", "gpu", "tpu"):
        try:
            if name == "gpu" or AcceleratorRegistry[name]["accelerator"].is_available():
                found.append(name)
        except Exception:  # noqa: BLE001  (an accelerator's check may import a missing library)
            continue
    if "cuda" not in found and "mps" not in found:
        found.remove("gpu")
    return [*found, "auto"]


PRECISION_HINT = ("valid: 32-true, 64-true, bf16-mixed (each tested with every strategy), 16-mixed, bf16-true, "
                  "16-true")


def _trainer_hint(text: str, given: str | None = None) -> str:
    """Lightning's accelerator, devices and precision complaints, with what is valid on this machine."""
    if "gpu backend" in text or "Requirement 'torch_xla" in text or re.search(r"accelerator.*not available", text, re.I):
        return (f"trainer.accelerator: {text.rstrip('!')}; valid on this machine: "
                f"{', '.join(_available_accelerators())}")
    if "Trainer(devices=" in text or "`devices` selected" in text:
        return f"{text} Valid: an int >= 1, a list of device indices, or auto"
    if 'Parser key "trainer.precision"' in text:
        value = f"={given}" if given else ""
        return f"trainer.precision{value} is not a precision Lightning knows; {PRECISION_HINT}"
    return text


def _names(package: str) -> list[str]:
    """Public classes of ``package`` by the short names ``--model``/``--data`` accept (``GPM``, ``SplitDigits``)."""
    import importlib

    return sorted((n for n in getattr(importlib.import_module(package), "__all__", []) if n[0].isupper()
                   and n != "STRATEGIES"), key=str.lower)


def _closest(given: str, names: list[str]) -> str | None:
    """The valid name a typo most likely meant (case-insensitive), or ``None`` when nothing is close."""
    import difflib

    lower = {n.lower(): n for n in names}
    match = difflib.get_close_matches(given.lower(), list(lower), n=1, cutoff=0.6)
    return lower[match[0]] if match else None


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
