"""ExSSNeT helpers: best-validation snapshots and the KKT score initialisation (spec ``supermasks.md`` §6.5, §7)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import Tensor

from clkit.data import Experience, TensorData, make_loader
from strategies.supermask.kkt import choose_sources, knn_accuracy, scores_from_masks, scores_from_sources, subset_indices
from strategies.supermask.layers import KeepScores, MaskedLayer, TaskBatchNorm
from strategies.supermask.model import freeze_task

if TYPE_CHECKING:
    from strategies.supermask.exssnet import ExSSNeT

__all__ = ["BestState", "kkt_initial_scores"]


class BestState:
    """The best validation state of the task being learned: its scores, all masked weights, its BN statistics."""

    def __init__(self) -> None:
        self.acc = -math.inf
        self.epoch = -1
        self.tensors: Optional[list[Tensor]] = None

    @staticmethod
    def _state(module: torch.nn.Module, task: int) -> list[Tensor]:
        out: list[Tensor] = []
        for m in module.modules():
            if isinstance(m, MaskedLayer):
                # detach() shares the version counter, so a restore invalidates the cached mask (.data would not)
                out += [m.scores[str(task)].detach(), m.weight.detach()]
            elif isinstance(m, TaskBatchNorm):
                out += [b for b in m.bns[task].buffers() if b is not None]
        return out

    def offer(self, module: torch.nn.Module, task: int, acc: float, epoch: int) -> None:
        """Snapshot the state if ``acc`` beats the best so far (ties keep the earlier epoch)."""
        if acc > self.acc:
            self.acc, self.epoch = acc, epoch
            self.tensors = [t.detach().clone() for t in self._state(module, task)]

    def reinstate(self, module: torch.nn.Module, task: int, keep_scores: KeepScores) -> None:
        """Restore the snapshot of an already frozen ``task`` and freeze it again (official row 4, faithful mode)."""
        for m in module.modules():
            if isinstance(m, MaskedLayer):
                m.scores[str(task)] = torch.nn.Parameter(torch.zeros_like(m.weight), requires_grad=False)
        self.restore(module, task)
        freeze_task(module, task, keep_scores)

    def restore(self, module: torch.nn.Module, task: int) -> None:
        """Write the snapshot back (no-op when validation never ran)."""
        if self.tensors is None:
            return
        with torch.no_grad():
            for live, saved in zip(self._state(module, task), self.tensors):
                live.copy_(saved)


def _train_batch_size(module: ExSSNeT) -> int:
    """The run's training batch size (the official subset is counted in its batches); 64 outside a Trainer."""
    datamodule = getattr(module._trainer, "datamodule", None) if module._trainer is not None else None
    return int(getattr(datamodule, "batch_size", 64) or 64)


def _features(module: ExSSNeT, task: int, data: TensorData, rows: Optional[Tensor], batches: int = 0) -> Tensor:
    """Penultimate features of ``data`` (or its ``rows``) under ``task``'s masks and BN, eval mode, no grad."""
    module.set_task(task)
    if rows is not None:
        loader = make_loader(data.subset(rows), 256, shuffle=False)
    else:  # official subset: the first batches of a shuffled loader, a new one per source task
        loader = make_loader(data, _train_batch_size(module), shuffle=True, seed=module.mask_cfg[3] * 31 + task)
    feats, labels = [], []
    for i, (x, y, _) in enumerate(loader):
        if rows is None and i >= batches:
            break
        feats.append(module.features(x.to(module.device)))
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)  # type: ignore[return-value]


def kkt_initial_scores(module: ExSSNeT, experience: Experience) -> tuple[Optional[list[Tensor]], dict[str, Any]]:
    """KNN-based knowledge transfer: probe every learned task's features on the new data and copy the chosen scores.

    Returns:
        Per-layer initial scores (``None`` = random) and a JSON-able record (KNN accuracies, chosen sources).
    """
    hp = module.hparams
    data, task = experience.train, experience.task_id
    faithful = bool(hp.faithful)
    rows = None if faithful else subset_indices(len(data), hp.data_fraction,
                                                torch.Generator().manual_seed(module.mask_cfg[3] * 7_919 + task))
    batches = math.ceil(hp.data_fraction * math.ceil(len(data) / _train_batch_size(module))) + 1
    was_training = module.training
    module.eval()
    accs = []
    with torch.no_grad():
        for j in module.learned:
            feats, labels = _features(module, j, data, rows, batches)
            accs.append(knn_accuracy(feats, labels, hp.knn_k))
    module.train(was_training)
    chosen = choose_sources(accs, len(experience.classes), hp.sim_init)
    sources = [module.learned[i] for i in chosen]
    record = {"task": task, "knn_acc": {int(j): a for j, a in zip(module.learned, accs)}, "sources": sources}
    if not sources:
        return None, record
    layers = [m for m in module.modules() if isinstance(m, MaskedLayer)]
    if module.keep_scores == "float":
        return [scores_from_sources([layer.real_scores(s) for s in sources]) for layer in layers], record
    g = torch.Generator().manual_seed(module.mask_cfg[3] * 104_729 + task)
    return [scores_from_masks([layer.bool_mask(s) for s in sources], g).to(layer.weight.device) for layer in layers], record
