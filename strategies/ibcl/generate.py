"""Turning IBCL parameter vectors into plain models, restoring IBCL from a run checkpoint, and summarising
its preference results for ``results.json``."""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from clkit.errors import ConfigError
from clkit.loop import experience_checkpoints
from clkit.nets import Backbone
from strategies.ibcl.bayes import to_sequential
from strategies.ibcl.credal import KnowledgeBase
from strategies.ibcl.metrics import stack_stages

if TYPE_CHECKING:
    from strategies.ibcl import IBCL

__all__ = ["json_safe", "load_ibcl", "model_from_theta", "summarise"]

_STATE_PREFIXES = ("posterior.", "report_theta", "backbone.")


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


def load_ibcl(cls: type[IBCL], path: Path, backbone: Backbone | None = None) -> IBCL:
    """Rebuild an IBCL module (knowledge base, posteriors, reported model) from a stream-loop checkpoint.

    Args:
        cls: The IBCL class.
        path: ``run_dir/checkpoints/exp{i}.pt``, or a run directory (its latest checkpoint is used).
        backbone: The run's backbone, needed only when the run used one with weights.
    """
    path = _latest(path) if path.is_dir() else path
    if not path.is_file():
        raise ConfigError(f"no IBCL checkpoint at {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("ibcl")
    if state is None:
        raise ConfigError(f"{path} is not an IBCL checkpoint (no 'ibcl' entry)")
    weights = {k: v for k, v in ckpt["state_dict"].items() if k.startswith(_STATE_PREFIXES)}
    if backbone is None and any(k.startswith("backbone.") for k in weights):
        raise ConfigError(f"the run behind {path} used a backbone with weights; pass the same backbone")
    accepted = inspect.signature(cls.__init__).parameters  # LightningCLI adds keys such as ``_class_path``
    module = cls(**{k: v for k, v in state["hparams"].items() if k in accepted and k != "backbone"}, backbone=backbone)
    module.setting, module.classes_per_task = state["setting"], list(state["classes_per_task"])
    module.task_ids_at_test = False
    if module.backbone is None:
        module.backbone = module.build_backbone(state["input_shape"] or [])  # type: ignore[assignment]
    elif isinstance(module.backbone, Backbone) and state["input_shape"] is not None:
        module.backbone.build(state["input_shape"])
    sizes = list(state["sizes"])
    module.heads = module.build_heads(sizes[0], 2 if sizes[-1] == 1 else sizes[-1])
    if list(module.sizes) != sizes:
        raise ConfigError(f"checkpoint head sizes {sizes} differ from the rebuilt {list(module.sizes)}")
    module.on_load_checkpoint(ckpt)
    missing, _ = module.load_state_dict(weights, strict=False)
    needed = [k for k in missing if k.startswith(_STATE_PREFIXES)]
    if needed:
        raise ConfigError(f"checkpoint {path} lacks {needed}")
    return module.eval()


def _latest(run_dir: Path) -> Path:
    ckpts = experience_checkpoints(run_dir / "checkpoints")
    if not ckpts:
        raise ConfigError(f"no checkpoints in {run_dir / 'checkpoints'}")
    return ckpts[-1]


def json_safe(value: Any) -> Any:
    """Replace NaN/inf by ``None`` and tuples by lists, recursively (``results.json`` forbids NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def summarise(stages: list[dict[str, Any]], options: dict[str, Any], kb: KnowledgeBase) -> dict[str, Any]:
    """The ``"ibcl"`` entry of ``results.json``: per-stage curves first, then every stage's details."""
    matrix = stack_stages([torch.tensor(s["per_task_acc"]) for s in stages]) if stages else torch.zeros(0, 0)
    return json_safe({
        "options": options,
        "per_task_acc_matrix": matrix.tolist(),
        "avg_per_task_acc": [s["avg_per_task_acc"] for s in stages],
        "peak_per_task_acc": [s["peak_per_task_acc"] for s in stages],
        "bt_ibcl": [s["bt_ibcl"] for s in stages],
        "bwt": [s.get("bwt") for s in stages],
        "kb_size": [s["kb_size"] for s in stages],
        "kb_bytes": kb.nbytes(),
        "kb_origins": kb.origins,
        "stages": stages,
    })
