"""Injected optimizers and LR schedulers: the LightningCLI dependency-injection style, usable from Python too.

A strategy takes ``optimizer`` (a callable ``params -> Optimizer``) and ``lr_scheduler`` (a callable
``optimizer -> scheduler``, or ``None``), as LightningCLI's ``OptimizerCallable``/``LRSchedulerCallable``. The
command line builds them from ``--optimizer torch.optim.AdamW --optimizer.lr 1e-3`` and ``--lr_scheduler ...``;
Python code may pass ``functools.partial(torch.optim.Adam, lr=1e-3)``, a lambda, or a spec dict
``{"class_path": "torch.optim.SGD", "init_args": {"lr": 0.01}}``. A fresh optimizer (and scheduler) is built for every
experience.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
from collections.abc import Callable, Iterable
from typing import Any, Optional, Union

import torch
from torch import nn
from torch.optim import Optimizer

from clkit.errors import ConfigError

__all__ = ["OptimizerFactory", "SchedulerFactory", "describe", "optimizer_factory", "probe", "scheduler_factory",
           "spec"]

OptimizerFactory = Callable[[Iterable[nn.Parameter]], Optimizer]
SchedulerFactory = Callable[[Optimizer], Any]
Spec = Union[Callable[..., Any], dict[str, Any], str, type]


def spec(class_path: str, **init_args: Any) -> dict[str, Any]:
    """A ``{"class_path", "init_args"}`` spec, the form used for defaults in strategy signatures."""
    return {"class_path": class_path, "init_args": init_args}


def _import(path: str) -> Any:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module or "torch.optim"), name)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(f"cannot import {path!r} (expected a dotted class path such as torch.optim.SGD)") from None


def _factory(value: Spec, what: str) -> Callable[..., Any]:
    if isinstance(value, str):
        return _import(value)
    if isinstance(value, dict):
        if "class_path" not in value:
            raise ConfigError(f"{what} spec {value!r} has no class_path")
        cls = _import(str(value["class_path"]))
        return functools.partial(cls, **dict(value.get("init_args") or {}))
    if callable(value):
        return value
    raise ConfigError(f"{what} must be a callable, a class path or a class_path/init_args dict, got {value!r}")


def optimizer_factory(value: Spec) -> OptimizerFactory:
    """``params -> Optimizer`` from any accepted form (callable, class, class path, spec dict)."""
    return _factory(value, "optimizer")


def scheduler_factory(value: Optional[Spec]) -> Optional[SchedulerFactory]:
    """``optimizer -> scheduler`` from any accepted form, or ``None``."""
    return None if value is None else _factory(value, "lr_scheduler")


def describe(value: Optional[Spec]) -> Any:
    """A JSON-able description of an optimizer/scheduler argument: its spec dict where it can be recovered."""
    if value is None or isinstance(value, (str, dict)):
        return value
    if inspect.isclass(value):
        return {"class_path": f"{value.__module__}.{value.__qualname__}", "init_args": {}}
    if isinstance(value, functools.partial):
        classes = [a for a in (value.func, *value.args) if inspect.isclass(a)]
        if classes:
            cls = classes[-1]
            args = {k: v for k, v in value.keywords.items() if isinstance(v, (int, float, str, bool, list, tuple))
                    or v is None}
            return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": args}
    return repr(value)


def probe(factory: OptimizerFactory, scheduler: Optional[SchedulerFactory] = None) -> Optimizer:
    """The optimizer ``factory`` builds on one throwaway parameter (and the scheduler on it), to check their type
    and settings early: torch's own checks (a negative momentum, weight decay or lr) become one-line errors.

    Raises:
        ConfigError: Naming the optimizer (or scheduler) and torch's complaint.
    """
    try:
        optimizer = factory([nn.Parameter(torch.zeros(1))])
    except (TypeError, ValueError, KeyError) as err:
        raise ConfigError(f"cannot build the optimizer {_name(factory)}: {err}") from None
    if not isinstance(optimizer, Optimizer):
        raise ConfigError(f"the optimizer {_name(factory)} built a {type(optimizer).__name__}, not a torch Optimizer")
    bad = [f"{k}={v}" for k, v in optimizer.defaults.items() if isinstance(v, float) and (v < 0 or not math.isfinite(v))
           and k in ("lr", "momentum", "weight_decay", "dampening", "eps")]
    if bad:
        raise ConfigError(f"optimizer {type(optimizer).__name__}: {', '.join(bad)} must be a finite number >= 0")
    if scheduler is not None:
        try:
            scheduler(optimizer)
        except (TypeError, ValueError, KeyError) as err:
            raise ConfigError(f"cannot build the lr_scheduler {_name(scheduler)}: {err}") from None
    return optimizer


def _name(factory: Any) -> str:
    described = describe(factory)
    return str(described["class_path"]) if isinstance(described, dict) else str(described)
