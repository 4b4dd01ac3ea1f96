"""ExSSNeT: Exclusive Supermask Subnetwork Training (Yadav & Bansal, Findings of ACL 2023), with optional KKT."""

from __future__ import annotations

import math
from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from clkit.data import Experience, TensorData, make_loader
from clkit.errors import ConfigError
from clkit.module import OptimizerCallable
from clkit.optim import probe, spec
from strategies.supermask.base import SupermaskModule
from strategies.supermask.kkt import (
    choose_sources,
    knn_accuracy,
    scores_from_masks,
    scores_from_sources,
    subset_indices,
)
from strategies.supermask.layers import KeepScores, MaskedLayer, TaskBatchNorm

__all__ = ["BestState", "ExSSNeT"]

Phase = Literal["mask", "weight"]
SimInit = Literal["none", "knn_best", "knn_always", "knn_all"]
Select = Literal["val_loss", "val_acc", "last"]


class BestState:
    """The kept state of the task being learned: its scores, all masked weights, its BN statistics.

    Every validated epoch is offered; ``select`` decides which one is kept: ``"val_loss"`` the lowest validation
    loss, ``"val_acc"`` the highest validation accuracy (ties go to the later epoch, so an epoch that only matches
    never discards the training after it; ``strict=True`` keeps the earlier one, as the official code), ``"last"``
    the last epoch (no snapshot).
    """

    def __init__(self, select: Select = "val_loss", strict: bool = False) -> None:
        self.select, self.strict = select, strict
        self.acc = -math.inf
        self.loss = math.inf
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

    def better(self, acc: float, loss: float) -> bool:
        """Whether an epoch with validation ``acc`` and ``loss`` replaces the kept one."""
        if self.select == "last":
            return True
        if self.select == "val_loss":
            return loss < self.loss if self.strict else loss <= self.loss
        return acc > self.acc if self.strict else acc >= self.acc

    def offer(self, module: torch.nn.Module, task: int, acc: float, loss: float, epoch: int) -> None:
        """Snapshot the state if this epoch is :meth:`better` than the kept one (``"last"``: record it only)."""
        if self.better(acc, loss):
            self.acc, self.loss, self.epoch = acc, loss, epoch
            if self.select != "last":
                self.tensors = [t.detach().clone() for t in self._state(module, task)]

    def reinstate(self, module: ExSSNeT, task: int) -> None:
        """Restore the snapshot of an already frozen ``task`` and freeze it again (official row 4, faithful mode)."""
        for m in module.modules():
            if isinstance(m, MaskedLayer):
                m.scores[str(task)] = torch.nn.Parameter(torch.zeros_like(m.weight), requires_grad=False)
        self.restore(module, task)
        module.freeze_task(task)

    def restore(self, module: torch.nn.Module, task: int) -> None:
        """Write the snapshot back (no-op when validation never ran or ``select="last"``)."""
        if self.tensors is None:
            return
        with torch.no_grad():
            for live, saved in zip(self._state(module, task), self.tensors):
                live.copy_(saved)


class ExSSNeT(SupermaskModule):
    """Exclusive Supermask SubNEtwork Training (Yadav & Bansal, "Exclusive Supermask Subnetwork Training for
    Continual Learning", Findings of ACL 2023, arXiv 2210.10209).

    Per task: phase A learns a supermask over the current weights (scores only, ``mask_epochs``, Adam at
    ``mask_lr`` with weight decay 0); phase B trains the weights selected by that mask but by no earlier task,
    ``E_t = M_t & ~U_t`` (``weight_epochs``, with ``optimizer``: default Adam lr 1e-2, weight decay 0). Old tasks'
    ``W * M_i`` never change, so BWT is exactly 0. Both phases run in one ``fit`` with manual optimization: one fresh
    optimizer per phase (the weight optimizer has no state before phase B starts), each with a cosine schedule over
    its epochs. One state over both phases is kept at the end, chosen on the experience's validation split by
    ``select`` (without a validation split, the last state); ``results.json`` → ``kept_epochs`` says, per
    experience, which epoch of each phase it ends with. KKT (``sim_init``) initialises a new task's scores from
    the earlier task whose masked features give the best KNN accuracy on the new data. Scenario: task-IL.

    Args:
        mask_epochs: Epochs of phase A; ``mask_epochs + weight_epochs`` replaces the trainer's ``max_epochs``.
        weight_epochs: Epochs of phase B.
        mask_lr: Adam learning rate of the scores (weight decay 0). Faithful mode uses the weight optimizer's lr
            instead whenever ``weight_epochs > 0``, as the official code does. The defaults (0.01 here and for the
            weights, against the official 0.001) were chosen on validation accuracy at 2 % density on permuted
            MNIST-5k: 79.5 ± 6.1 % test with both at 0.001, 87.3 ± 4.2 with the weights at 0.01, 90.2 ± 0.4 with
            both (5 seeds, docs/results/supermask.md).
        sim_init: KKT mode: ``"none"``, ``"knn_best"``, ``"knn_always"`` or ``"knn_all"``.
        knn_k: Neighbours of the KNN probe.
        data_fraction: Fraction of the new task's training data used by the probe.
        keep_scores: ``"float"`` keeps every task's real scores (exact KKT), ``"bits"`` only the packed masks;
            default ``"float"`` with KKT, ``"bits"`` without.
        exclusive: ``False`` is the SSNeT ablation (``E_t = M_t``), which overwrites shared weights and forgets.
        select: Which validated epoch's state is kept: ``"val_loss"`` (lowest validation loss), ``"val_acc"``
            (highest validation accuracy, ties to the later epoch) or ``"last"``. The official strict ``>`` on
            accuracy (faithful mode) keeps the earliest of tied epochs: on ``configs/exssnet_digits.yaml``
            (validation accuracy 1.0 on ~25 examples from the first epoch) it kept epoch 0 of every task, discarding
            the whole weight phase.
        post_step_masking: Restore weights outside ``E_t`` after every step; default on unless the weight optimizer
            is Adam with weight decay 0 (whose zero-gradient weights never move).
        debug_checks: Assert after every step that no weight outside ``E_t`` moved.
        **kwargs: :class:`strategies.supermask.base.SupermaskModule` and :class:`clkit.ContinualModule` arguments;
            ``optimizer`` is the weight-phase optimizer and ``lr_scheduler`` is not supported (each phase has its
            cosine schedule).
    """

    kkt_log: list[dict[str, Any]]  # CL memory
    best_log: dict[int, dict[str, Any]]
    pending: list[Any]

    def __init__(self, *, mask_epochs: int = 50, weight_epochs: int = 50, mask_lr: float = 1e-2,
                 sim_init: SimInit = "none", knn_k: int = 200, data_fraction: float = 0.2,
                 keep_scores: Optional[KeepScores] = None, exclusive: bool = True,
                 select: Select = "val_loss", post_step_masking: Optional[bool] = None, debug_checks: bool = False,
                 optimizer: OptimizerCallable = spec("torch.optim.Adam", lr=1e-2),  # type: ignore[assignment]
                 **kwargs: Any) -> None:
        super().__init__(optimizer=optimizer, **kwargs)
        if mask_epochs < 0 or weight_epochs < 0 or mask_epochs + weight_epochs == 0:
            raise ConfigError(f"need mask_epochs, weight_epochs >= 0 and not both 0, got {mask_epochs}, {weight_epochs}")
        if mask_lr <= 0:
            raise ConfigError(f"mask_lr must be > 0, got {mask_lr}")
        if sim_init not in ("none", "knn_best", "knn_always", "knn_all"):
            raise ConfigError(f"sim_init={sim_init!r} is not one of 'none', 'knn_best', 'knn_always', 'knn_all'")
        if select not in ("val_loss", "val_acc", "last"):
            raise ConfigError(f"select={select!r} is not one of 'val_loss', 'val_acc', 'last'")
        if keep_scores not in (None, "float", "bits"):
            raise ConfigError(f"keep_scores={keep_scores!r} is not one of 'float', 'bits'")
        if knn_k < 1 or not 0.0 < data_fraction <= 1.0:
            raise ConfigError(f"need knn_k >= 1 and 0 < data_fraction <= 1, got {knn_k}, {data_fraction}")
        if self.scheduler_factory is not None:
            raise ConfigError("ExSSNeT runs a cosine schedule per phase; an lr_scheduler is not supported")
        weights = probe(self.optimizer_factory)
        self.weight_lr = float(weights.param_groups[0]["lr"])
        adam_no_decay = type(weights) is torch.optim.Adam and float(weights.param_groups[0]["weight_decay"]) == 0.0
        self.mask_epochs, self.weight_epochs, self.mask_lr = mask_epochs, weight_epochs, mask_lr
        self.sim_init, self.knn_k, self.data_fraction = sim_init, knn_k, data_fraction
        self._keep_scores, self.exclusive, self.debug_checks = keep_scores, exclusive, debug_checks
        self.post_step = post_step_masking if post_step_masking is not None else not adam_no_decay
        self.automatic_optimization = False
        self.phase: Phase = "mask"
        self.exclusive_masks: list[Tensor] = []  # E_t per masked layer during phase B
        self.select = select
        self.best = self._new_best()
        self.register_memory("kkt_log", [])  # per KKT transfer: KNN accuracies and chosen sources
        self.register_memory("best_log", {})  # experience -> kept epoch of each phase, its validation accuracy/loss
        self.register_memory("pending", [])  # faithful: [task, best-state tensors] applied at the next task
        self.val_counts = [0.0, 0.0, 0.0]  # correct, total, summed cross-entropy

    @property
    def keep_scores(self) -> KeepScores:
        chosen = self._keep_scores
        return chosen if chosen is not None else ("float" if self.sim_init != "none" else "bits")

    def trainer_overrides(self, experience: Experience) -> dict[str, Any]:
        return {"max_epochs": self.mask_epochs + self.weight_epochs}

    def val_data(self, experience: Experience) -> Optional[TensorData]:
        return experience.test if self.faithful else experience.val  # official vision code validates on test

    # -- KKT ------------------------------------------------------------------------------------------------------
    def initial_scores(self, experience: Experience) -> Optional[list[Tensor]]:
        if self.sim_init == "none" or not self.learned:
            return None
        inits, record = self.kkt_initial_scores(experience)
        self.kkt_log = [*self.kkt_log, record]
        return inits

    def kkt_initial_scores(self, experience: Experience) -> tuple[Optional[list[Tensor]], dict[str, Any]]:
        """KNN-based knowledge transfer: probe every learned task's features on the new data and copy the chosen
        scores.

        Returns:
            Per-layer initial scores (``None`` = random) and a JSON-able record (KNN accuracies, chosen sources).
        """
        data, task = experience.train, experience.task_id
        rows = None if self.faithful else subset_indices(len(data), self.data_fraction,
                                                         self.generator("kkt_subset", experience.index))
        batches = math.ceil(self.data_fraction * math.ceil(len(data) / self._train_batch_size())) + 1
        was_training = self.training
        self.eval()
        accs = []
        with torch.no_grad():
            for j in self.learned:
                feats, labels = self._penultimate(j, data, rows, batches)
                accs.append(knn_accuracy(feats, labels, self.knn_k))
        self.train(was_training)
        chosen = choose_sources(accs, len(experience.classes), self.sim_init)
        sources = [self.learned[i] for i in chosen]
        record = {"task": task, "knn_acc": {int(j): a for j, a in zip(self.learned, accs)}, "sources": sources}
        if not sources:
            return None, record
        layers = self._masked()
        if self.keep_scores == "float":
            return [scores_from_sources([layer.real_scores(s) for s in sources]) for layer in layers], record
        g = self.generator("kkt_scores", experience.index)
        return [scores_from_masks([layer.bool_mask(s) for s in sources], g).to(layer.weight.device)
                for layer in layers], record

    def _train_batch_size(self) -> int:
        """The run's training batch size (the official subset is counted in its batches)."""
        assert self.spec is not None
        return int(self.spec.batch_size)

    def _penultimate(self, task: int, data: TensorData, rows: Optional[Tensor], batches: int) -> tuple[Tensor, Tensor]:
        """Penultimate features of ``data`` (or its ``rows``) under ``task``'s masks and BN, eval mode, no grad."""
        self.set_task(task)
        if rows is not None:
            loader = make_loader(data.subset(rows), 256, shuffle=False)
        else:  # official subset: the first batches of a shuffled loader, a new one per source task
            seed = int(self.generator("kkt_official", task).initial_seed())
            loader = make_loader(data, self._train_batch_size(), shuffle=True, seed=seed)
        feats, labels = [], []
        for i, (x, y, _) in enumerate(loader):
            if rows is None and i >= batches:
                break
            feats.append(self.features(x.to(self.device)))
            labels.append(y)
        return torch.cat(feats), torch.cat(labels)

    # -- optimisation ---------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        assert self.current_experience is not None
        scores = self.task_parameters(self.current_experience.task_id)
        weights = [layer.weight for layer in self._masked()]
        mask_lr = self.weight_lr if self.faithful and self.weight_epochs > 0 else self.mask_lr  # official override
        mask_opt = torch.optim.Adam(scores, lr=mask_lr, weight_decay=0.0)
        weight_opt = self.build_optimizer(weights)
        cos = torch.optim.lr_scheduler.CosineAnnealingLR
        scheds: list[Any] = [cos(mask_opt, max(1, self.mask_epochs)), cos(weight_opt, max(1, self.weight_epochs))]
        if self.faithful:  # official: ReduceLROnPlateau in "min" mode, fed with accuracy
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau
            scheds += [plateau(mask_opt, "min", factor=0.1, patience=10), plateau(weight_opt, "min", 0.1, 10)]
        return [mask_opt, weight_opt], scheds

    def on_train_epoch_start(self) -> None:
        if self.current_epoch >= self.mask_epochs and self.phase != "weight":
            self._enter_weight_phase()

    def _enter_weight_phase(self) -> None:
        assert self.current_experience is not None
        task = self.current_experience.task_id
        self.phase = "weight"
        self._set_trainable(scores=False)
        layers = self._masked()
        if self.exclusive:
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
        guard = self.phase == "weight" and (self.post_step or self.debug_checks)
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
            if self.debug_checks and not torch.equal(layer.weight[~keep.bool()], old[~keep.bool()]):
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
        self.val_counts[0] += int((self.real_logits(logits).argmax(-1) == y).sum())
        self.val_counts[1] += len(y)
        self.val_counts[2] += float(F.cross_entropy(logits, y, reduction="sum"))
        self.log("val/loss", F.cross_entropy(logits, y), prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        counts = self.trainer.strategy.reduce(torch.tensor(self.val_counts, dtype=torch.float64), reduce_op="sum")
        correct, total, loss = (float(c) for c in counts)  # summed over DDP ranks: every rank keeps the same state
        self.val_counts = [0.0, 0.0, 0.0]
        if self.trainer.sanity_checking or total == 0 or self.current_experience is None:
            return
        acc = correct / total
        self.log("val/acc", acc, prog_bar=True)
        if self.faithful:
            schedulers = self.lr_schedulers()
            assert isinstance(schedulers, list)
            schedulers[2 if self.phase == "mask" else 3].step(acc)  # type: ignore[arg-type]
        self.best.offer(self, self.current_experience.task_id, acc, loss / total, self.current_epoch)

    def on_experience_start(self, experience: Experience) -> None:
        self.pin_threads()
        if self.pending:  # faithful: the previous task continues from its best state, not its last
            best = BestState()
            best.tensors = list(self.pending[1])
            best.reinstate(self, int(self.pending[0]))
            self.pending = []
        super().on_experience_start(experience)
        self.phase, self.exclusive_masks, self.best = "mask", [], self._new_best()
        self._set_trainable(scores=True)

    def on_experience_end(self, experience: Experience) -> None:
        if self.faithful:  # official: the accuracy row uses the last epoch, the next task the best state
            self.pending = [experience.task_id, self.best.tensors] if self.best.tensors is not None else []
        else:
            self.best.restore(self, experience.task_id)  # scores, weights and BN statistics of the best epoch
        self.best_log = {**self.best_log, experience.index: self._kept(self.best)}
        self._set_trainable(scores=False)
        self.exclusive_masks, self.phase = [], "mask"
        for layer in self._masked():
            layer.weight.requires_grad_(False)
        super().on_experience_end(experience)

    def _new_best(self) -> BestState:
        """Faithful mode selects as the official code: highest validation accuracy, ties to the earlier epoch."""
        return BestState("val_acc", strict=True) if self.faithful else BestState(self.select)

    def _kept(self, best: BestState) -> dict[str, Any]:
        """Which epoch of each phase the kept state ends with (1-based; 0: none of that phase's training kept)."""
        total = self.mask_epochs + self.weight_epochs
        end = total if best.epoch < 0 else best.epoch + 1  # no validation: the last state is kept
        out: dict[str, Any] = {"mask": min(end, self.mask_epochs), "weight": max(0, end - self.mask_epochs),
                               "selected_on": best.select if best.epoch >= 0 else "last"}
        if best.epoch >= 0:
            out.update(val_acc=round(best.acc, 6), val_loss=round(best.loss, 6))
        return out

    def load_memory_state(self, state: dict[str, Any]) -> None:
        super().load_memory_state(state)
        self.best_log = {int(k): dict(v) for k, v in self.best_log.items()}

    def extra_results(self, accuracy_matrix: Tensor) -> dict[str, Any]:
        out = super().extra_results(accuracy_matrix)
        if self.kkt_log:
            out["kkt"] = self.kkt_log
        out["kept_epochs"] = self.best_log
        out["free_capacity"] = [1.0 - layer.union_count() / layer.weight.numel() for layer in self._masked()]
        return out
