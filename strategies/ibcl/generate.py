"""Turning IBCL parameter vectors into plain models, and summarising its preference results for
``results.json`` (a trained IBCL is rebuilt from a run checkpoint by ``IBCL.from_checkpoint``)."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from strategies.ibcl.bayes import to_sequential
from strategies.ibcl.credal import KnowledgeBase
from strategies.ibcl.metrics import stack_stages

__all__ = ["json_safe", "model_from_theta", "summarise"]


def model_from_theta(theta: Tensor, sizes: Sequence[int], backbone: nn.Module | None = None) -> nn.Sequential:
    """A plain ``nn.Sequential``: (a frozen copy of the backbone,) flatten, then the MLP of ``theta`` (P,)."""
    layers: list[nn.Module] = []
    if backbone is not None and not isinstance(backbone, nn.Flatten):
        frozen = copy.deepcopy(backbone).eval()
        for p in frozen.parameters():
            p.requires_grad_(False)
        layers.append(frozen)
    layers.append(nn.Flatten())
    layers.extend(to_sequential(theta.detach().cpu().float(), sizes).children())
    return nn.Sequential(*layers).eval()


def json_safe(value: Any) -> Any:
    """Replace NaN/inf by ``None`` and tuples by lists, recursively (``results.json`` forbids NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


MATRIX_CELLS = {
    "task": "R[i][j]: the stage-i model for the one-hot preference on task j, tested on task j (task-aware: the test "
            "batch's task id names the preference); unseen tasks (j > i): the uniform preference over tasks 0..i",
    "uniform": "R[i][j]: the stage-i model for the uniform preference over tasks 0..i, on every task (task-agnostic)",
}


def summarise(stages: list[dict[str, Any]], options: dict[str, Any], kb: KnowledgeBase,
              matrix_preference: str = "task") -> dict[str, Any]:
    """The ``"ibcl"`` entry of ``results.json``: per-stage curves first, then every stage's details."""
    matrix = stack_stages([torch.tensor(s["per_task_acc"]) for s in stages]) if stages else torch.zeros(0, 0)
    return json_safe({
        "options": options,
        "matrix_cells": MATRIX_CELLS[matrix_preference],
        "per_task_acc_matrix": matrix.tolist(),
        "avg_per_task_acc": [s["avg_per_task_acc"] for s in stages],
        "peak_per_task_acc": [s["peak_per_task_acc"] for s in stages],
        "bt_ibcl": [s["bt_ibcl"] for s in stages],
        "bwt": [s.get("bwt") for s in stages],
        "spearman": [s.get("spearman") for s in stages],
        "kb_size": [s["kb_size"] for s in stages],
        "kb_bytes": kb.nbytes(),
        "kb_origins": kb.origins,
        "stages": stages,
    })
