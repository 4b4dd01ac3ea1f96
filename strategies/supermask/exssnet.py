"""ExSSNeT: Exclusive Supermask Subnetwork Training (Yadav & Bansal, Findings of ACL 2023), with optional KKT."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from clkit.data import Experience, TensorData
from clkit.errors import ConfigError
from clkit.nets import Backbone
from strategies.supermask.exssnet_state import BestState, kkt_initial_scores
from strategies.supermask.layers import BnInfer, KeepScores
from strategies.supermask.masks import DensityMode
from strategies.supermask.base import SupermaskModule, TaskInference

__all__ = ["ExSSNeT"]

Phase = Literal["mask", "weight"]


class ExSSNeT(SupermaskModule):
    """Exclusive Supermask SubNEtwork Training (Yadav & Bansal, "Exclusive Supermask Subnetwork Training for
    Continual Learning", Findings of ACL 2023, arXiv 2210.10209).

    Per task: phase A learns a supermask over the current weights (scores only, ``mask_epochs``); phase B trains
    the weights selected by that mask but by no earlier task, ``E_t = M_t & ~U_t`` (``weight_epochs``). Old tasks'
    ``W * M_i`` never change, so BWT is exactly 0. Both phases run in one ``fit`` with manual optimization: one fresh
    Adam per phase (the weight optimizer has no state before phase B starts). The best state on the experience's
    validation split over both phases is restored at the end
    (without a validation split the last state is kept). KKT (``sim_init``) initialises a new task's scores from
    the earlier task whose masked features give the best KNN accuracy on the new data. Scenario: task-IL.

    Args:
        mask_epochs: Epochs of phase A; ``mask_epochs + weight_epochs`` replaces the trainer's ``max_epochs``.
        weight_epochs: Epochs of phase B.
        mask_lr: Adam learning rate of the scores (weight decay 0).
        weight_lr: Learning rate of the weights.
        sim_init: KKT mode: ``"none"``, ``"knn_best"``, ``"knn_always"`` or ``"knn_all"``.
        knn_k: Neighbours of the KNN probe.
        data_fraction: Fraction of the new task's training data used by the probe.
        keep_scores: ``"float"`` keeps every task's real scores (exact KKT), ``"bits"`` only the packed masks;
            default ``"float"`` with KKT, ``"bits"`` without.
        exclusive: ``False`` is the SSNeT ablation (``E_t = M_t``), which overwrites shared weights and forgets.
        post_step_masking: Restore weights outside ``E_t`` after every step; default on when ``weight_decay > 0``
            or ``optimizer="sgd"``.
        debug_checks: Assert after every step that no weight outside ``E_t`` moved.
        optimizer: Weight-phase optimizer: ``"adam"`` (paper) or ``"sgd"``.
        weight_decay: Weight-phase weight decay (0 in the paper; > 0 turns on post-step masking).
        Other arguments as in :class:`strategies.SupSup`.
    """

    def __init__(self, *, backbone: Optional[Backbone] = None, density: float = 0.1,
                 density_mode: DensityMode = "uniform", er_scale: float = 1.0, seed: int = 0,
                 mask_epochs: int = 50, weight_epochs: int = 50, mask_lr: float = 1e-3, weight_lr: float = 1e-3,
                 sim_init: Literal["none", "knn_best", "knn_always", "knn_all"] = "none", knn_k: int = 200,
                 data_fraction: float = 0.2, keep_scores: Optional[KeepScores] = None, exclusive: bool = True,
                 post_step_masking: Optional[bool] = None, debug_checks: bool = False,
                 task_inference: TaskInference = "none", bn_infer: BnInfer = "batch", faithful: bool = False,
                 optimizer: Literal["sgd", "adam"] = "adam", momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        super().__init__(backbone=backbone, density=density, density_mode=density_mode, er_scale=er_scale, seed=seed,
                         task_inference=task_inference, bn_infer=bn_infer, faithful=faithful, lr=weight_lr,
                         optimizer=optimizer, momentum=momentum, weight_decay=weight_decay)
        self.save_hyperparameters(ignore=["backbone"])
        if mask_epochs < 0 or weight_epochs < 0 or mask_epochs + weight_epochs == 0:
            raise ConfigError(f"need mask_epochs, weight_epochs >= 0 and not both 0, got {mask_epochs}, {weight_epochs}")
        if mask_lr <= 0 or weight_lr <= 0:
            raise ConfigError(f"mask_lr and weight_lr must be > 0, got {mask_lr}, {weight_lr}")
        if sim_init not in ("none", "knn_best", "knn_always", "knn_all"):
            raise ConfigError(f"sim_init={sim_init!r} is not one of 'none', 'knn_best', 'knn_always', 'knn_all'")
        if keep_scores not in (None, "float", "bits"):
            raise ConfigError(f"keep_scores={keep_scores!r} is not one of 'float', 'bits'")
        if knn_k < 1 or not 0.0 < data_fraction <= 1.0:
            raise ConfigError(f"need knn_k >= 1 and 0 < data_fraction <= 1, got {knn_k}, {data_fraction}")
        self.automatic_optimization = False
        self.phase: Phase = "mask"
        self.exclusive_masks: list[Tensor] = []  # E_t per masked layer during phase B
        self.best = BestState()
        self.kkt_log: list[dict[str, Any]] = []
        self.best_log: dict[int, dict[str, float]] = {}  # task -> best validation accuracy and its epoch
        self.pending: Optional[tuple[int, BestState]] = None  # faithful: best state applied at the next task
        self.val_counts = [0, 0]

    @property
    def keep_scores(self) -> KeepScores:
        chosen = self.hparams.keep_scores
        return chosen if chosen is not None else ("float" if self.hparams.sim_init != "none" else "bits")

    @property
    def post_step(self) -> bool:
        chosen = self.hparams.post_step_masking
        return chosen if chosen is not None else (self.hparams.weight_decay > 0 or self.hparams.optimizer != "adam")

    def trainer_overrides(self, experience: Experience) -> dict[str, Any]:
        return {"max_epochs": self.hparams.mask_epochs + self.hparams.weight_epochs}

    def val_data(self, seen: Sequence[Experience]) -> Optional[TensorData]:
        return seen[-1].test if self.hparams.faithful else seen[-1].val  # official vision code validates on test

    # -- KKT ------------------------------------------------------------------------------------------------------
    def initial_scores(self, experience: Experience) -> Optional[list[Tensor]]:
        if self.hparams.sim_init == "none" or not self.learned:
            return None
        inits, record = kkt_initial_scores(self, experience)
        self.kkt_log.append(record)
        return inits

    # -- optimisation ---------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        assert self.current_experience is not None
        scores = self.task_parameters(self.current_experience.task_id)
        weights = [layer.weight for layer in self._masked()]
        mask_lr = hp.weight_lr if hp.faithful and hp.weight_epochs > 0 else hp.mask_lr  # official lr override
        mask_opt = torch.optim.Adam(scores, lr=mask_lr, weight_decay=0.0)
        if hp.optimizer == "adam":
            weight_opt: torch.optim.Optimizer = torch.optim.Adam(weights, lr=hp.weight_lr, weight_decay=hp.weight_decay)
        else:
            weight_opt = torch.optim.SGD(weights, lr=hp.weight_lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        cos = torch.optim.lr_scheduler.CosineAnnealingLR
        scheds: list[Any] = [cos(mask_opt, max(1, hp.mask_epochs)), cos(weight_opt, max(1, hp.weight_epochs))]
        if hp.faithful:  # official: ReduceLROnPlateau in "min" mode, fed with accuracy
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau
            scheds += [plateau(mask_opt, "min", factor=0.1, patience=10), plateau(weight_opt, "min", 0.1, 10)]
        return [mask_opt, weight_opt], scheds

    def on_train_epoch_start(self) -> None:
        if self.current_epoch >= self.hparams.mask_epochs and self.phase != "weight":
            self._enter_weight_phase()

    def _enter_weight_phase(self) -> None:
        assert self.current_experience is not None
        task = self.current_experience.task_id
        self.phase = "weight"
        self._set_trainable(scores=False)
        layers = self._masked()
        if self.hparams.exclusive:
            self.exclusive_masks = [layer.exclusive_mask(task).to(layer.weight.dtype) for layer in layers]
        else:
            self.exclusive_masks = [layer.bool_mask(task).to(layer.weight.dtype) for layer in layers]

    def _set_trainable(self, *, scores: bool) -> None:
        assert self.current_experience is not None
        for p in self.task_parameters(self.current_experience.task_id):
            p.requires_grad_(scores)
        for layer in self._masked():
            layer.weight.requires_grad_(not scores)

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y, t = batch
        loss = F.cross_entropy(self(x, t), y)
        optimizer = self.optimizers()[0 if self.phase == "mask" else 1]  # type: ignore[index]
        optimizer.zero_grad()
        self.manual_backward(loss)
        guard = self.phase == "weight" and (self.post_step or self.hparams.debug_checks)
        before = [layer.weight.detach().clone() for layer in self._masked()] if guard else []
        optimizer.step()  # Lightning calls on_before_optimizer_step -> transform_gradients
        if guard:
            self._after_weight_step(before)
        self.log_epoch_mean("train/loss", loss, len(y))
        return loss.detach()

    def transform_gradients(self) -> None:
        """Phase B: zero every weight gradient outside ``E_t`` (weights of earlier tasks never move)."""
        if self.phase != "weight":
            return
        for layer, keep in zip(self._masked(), self.exclusive_masks):
            if layer.weight.grad is not None:
                layer.weight.grad.mul_(keep)

    def _after_weight_step(self, before: list[Tensor]) -> None:
        for layer, keep, old in zip(self._masked(), self.exclusive_masks, before):
            if self.post_step:
                with torch.no_grad():
                    layer.weight.copy_(torch.where(keep.bool(), layer.weight, old))
            if self.hparams.debug_checks and not torch.equal(layer.weight[~keep.bool()], old[~keep.bool()]):
                raise AssertionError("a weight outside the exclusive mask E_t changed during the weight phase")

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        schedulers = self.lr_schedulers()
        assert isinstance(schedulers, list)
        schedulers[0 if self.phase == "mask" else 1].step()  # type: ignore[call-arg]

    # -- best-validation state ------------------------------------------------------------------------------------
    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        x, y, t = batch
        logits = self(x, t)
        self.val_counts[0] += int((logits.argmax(-1) == y).sum())
        self.val_counts[1] += len(y)
        self.log("val/loss", F.cross_entropy(logits, y), prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        counts = self.trainer.strategy.reduce(torch.tensor(self.val_counts, dtype=torch.float64), reduce_op="sum")
        correct, total = (float(c) for c in counts)  # summed over DDP ranks, so every rank keeps the same state
        self.val_counts = [0, 0]
        if self.trainer.sanity_checking or total == 0 or self.current_experience is None:
            return
        acc = correct / total
        self.log("val/acc", acc, prog_bar=True)
        if self.hparams.faithful:
            schedulers = self.lr_schedulers()
            assert isinstance(schedulers, list)
            schedulers[2 if self.phase == "mask" else 3].step(acc)  # type: ignore[arg-type]
        self.best.offer(self, self.current_experience.task_id, acc, self.current_epoch)

    def on_experience_start(self, experience: Experience) -> None:
        if self.pending is not None:  # faithful: the previous task continues from its best state, not its last
            self.pending[1].reinstate(self, self.pending[0], self.keep_scores)
            self.pending = None
        super().on_experience_start(experience)
        self.phase, self.exclusive_masks, self.best = "mask", [], BestState()
        self._set_trainable(scores=True)

    def on_experience_end(self, experience: Experience) -> None:
        if self.hparams.faithful:  # official: the accuracy row uses the last epoch, the next task the best state
            self.pending = (experience.task_id, self.best) if self.best.tensors is not None else None
        else:
            self.best.restore(self, experience.task_id)  # scores, weights and BN statistics of the best epoch
        if self.best.tensors is not None:
            self.best_log[experience.task_id] = {"val_acc": self.best.acc, "epoch": self.best.epoch}
        self._set_trainable(scores=False)
        self.exclusive_masks, self.phase = [], "mask"
        for layer in self._masked():
            layer.weight.requires_grad_(False)
        super().on_experience_end(experience)

    def extra_results(self) -> dict[str, Any]:
        out = super().extra_results()
        if self.kkt_log:
            out["kkt"] = self.kkt_log
        out["best_validation"] = self.best_log
        out["free_capacity"] = [1.0 - layer.union_count() / layer.weight.numel() for layer in self._masked()]
        return out

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["supermask"].update(kkt_log=list(self.kkt_log), best_log=dict(self.best_log))
        if self.pending is not None:
            checkpoint["supermask"]["pending"] = (self.pending[0], self.pending[1].tensors)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("supermask", {})
        self.kkt_log = list(state.get("kkt_log", []))
        self.best_log = {int(k): dict(v) for k, v in state.get("best_log", {}).items()}
        self.pending = None
        if "pending" in state:
            best = BestState()
            best.tensors = [t.to(self.device) for t in state["pending"][1]]
            self.pending = (int(state["pending"][0]), best)
