"""Gradient Projection Memory (Saha, Garg & Roy, ICLR 2021); protocol in ``docs/methods/projection.md``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clkit.data import Experience, StreamSpec
from clkit.errors import ConfigError
from clkit.module import ContinualModule
from clkit.nets import MLP, SmallCNN
from clkit.optim import probe
from strategies.projection.basis import (
    capture_inputs,
    empty_basis,
    project_with_factor,
    projection_factor,
    representation,
    update_basis,
)
from strategies.projection.layers import (
    BN_TYPES,
    InputSideProjection,
    LayerRef,
    PlateauDecay,
    find_projected_layers,
    resolve_per_layer,
    sample_rows,
)

__all__ = ["GPM"]

log = logging.getLogger(__name__)


class GPM(ContinualModule):
    """Gradient Projection Memory (Saha, Garg & Roy, "Gradient Projection Memory for Continual Learning", ICLR 2021).

    After each experience, the inputs of every projected layer (``nn.Linear``/``nn.Conv2d`` without bias) on a sample
    of the experience's training data are summarised by an orthonormal basis ``M_l`` that keeps an ``eps_l`` fraction
    of their energy; later experiences only update weights orthogonally to ``span(M_l)``, so old inputs see unchanged
    layers.

    Settings: task-IL (a head per task; heads are never projected, old heads are frozen) and domain-IL (one shared
    head, projected like a hidden layer, as on permuted MNIST). Class-IL is not supported: a shared head over growing
    classes can only keep old inputs' logits fixed, so new-class logits on old inputs stay at their untrained values
    and the method gives no meaningful class-IL behaviour.

    Protocol details: BatchNorm affine parameters train on the first experience only, and BatchNorm running statistics
    (where a backbone keeps them, as the default ``SmallCNN``) are frozen after it; value clipping of gradients is
    refused (it undoes the projection; norm clipping is allowed); the protocols' optimizer is plain
    SGD with weight decay 0 (any other optimizer works too: its steps are projected like the gradients, since Adam's
    per-coordinate scaling or weight decay would leave the protected span); optional early stopping with LR decay on the
    validation loss (``lr_patience``), restoring the best state before the basis update. The protocol nets normalise
    with test-batch statistics, so their configs average several evaluation passes (``test_passes``: 10 on CIFAR-100,
    5 on 5-Datasets/MiniImageNet, 1 on PMNIST).

    Args:
        threshold: Energy threshold ``eps``: one value, or one per projected layer in registration order.
        threshold_step: Added per experience: ``eps_l(t) = min(1, threshold_l + threshold_step * t)``.
        rep_samples: Training samples drawn (seeded) for the representation matrices.
        layer_samples: Samples used per projected layer (conv layers: images, each giving ``L`` columns); default
            ``rep_samples`` for every layer.
        lr_patience: Epochs without validation improvement before the LR is divided by ``lr_factor``; ``None``
            disables early stopping (and best-state restoring). Cannot be combined with an ``lr_scheduler``.
        lr_factor: LR divisor on a plateau.
        lr_min: Training of an experience stops once the LR falls below this.
        faithful: Reproduce the official code's basis rules (first-task rank one fewer, float32 bases concatenated
            without re-orthonormalisation; ``docs/methods/projection.md``).
        **kwargs: :class:`clkit.ContinualModule` arguments (default optimizer SGD lr 0.01); ``backbone`` defaults to a
            bias-free MLP 100-100 (a bias-free ``SmallCNN`` for images >= 16 px, its BN statistics frozen after the
            first experience).
    """

    SUPPORTED_SCENARIOS = frozenset({"task-il", "domain-il"})
    HEAD_BIAS = False
    bases: list[Tensor]  # CL memory
    PROJECTS_UPDATES = True  # other optimizers than plain SGD: project each step's update as well

    def __init__(self, *, threshold: float | list[float] = 0.97, threshold_step: float = 0.0,
                 rep_samples: int = 300, layer_samples: list[int] | None = None,
                 lr_patience: int | None = None, lr_factor: float = 3.0, lr_min: float = 1e-3,
                 faithful: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        optimizer = probe(self.optimizer_factory)
        plain_sgd = type(optimizer) is torch.optim.SGD and all(float(g.get("weight_decay", 0.0)) == 0.0
                                                                for g in optimizer.param_groups)
        if not plain_sgd and not self.PROJECTS_UPDATES:
            raise ConfigError(f"{name} needs optimizer torch.optim.SGD with weight_decay=0, got "
                              f"{type(optimizer).__name__} {optimizer.defaults}: its release budget follows each "
                              "step as -lr G")
        self.project_updates = not plain_sgd  # Adam's scaling or weight decay would leave span(M)^perp: project the step
        thresholds = [threshold] if isinstance(threshold, (int, float)) else list(threshold)
        if not thresholds or not all(0.0 < float(e) <= 1.0 for e in thresholds) or threshold_step < 0:
            raise ConfigError(f"threshold must be in (0, 1] and threshold_step >= 0, got {threshold} and "
                              f"{threshold_step}")
        if rep_samples < 1 or (layer_samples is not None and min(layer_samples, default=0) < 1):
            raise ConfigError(f"rep_samples and layer_samples must be >= 1, got {rep_samples} and {layer_samples}")
        self.lr = float(optimizer.param_groups[0]["lr"])
        if lr_patience is not None:
            if self.scheduler_factory is not None:
                raise ConfigError(f"{name}: lr_patience (the protocol's plateau schedule) and an lr_scheduler both "
                                  "set the LR; use one of them")
            PlateauDecay(self.lr, lr_patience, lr_factor, lr_min)  # validates the schedule
        self.threshold, self.threshold_step = threshold, threshold_step
        self.rep_samples, self.layer_samples = rep_samples, layer_samples
        self.lr_patience, self.lr_factor, self.lr_min = lr_patience, lr_factor, lr_min
        self.faithful = faithful
        self.register_memory("bases", [])  # per projected layer: (d_l, m_l) float64, orthonormal columns
        self.active_task = 0  # index of the experience being trained (or last trained)
        self._layers: list[LayerRef] | None = None
        self._projectors: list[tuple[Tensor, bool]] = []
        self._input_side: list[InputSideProjection | None] = []  # per layer, while an experience trains
        self._bn_frozen = False  # BN with running statistics held in eval mode (experiences after the first)
        self._plateau: PlateauDecay | None = None
        self._val_loss: list[float] = [0.0, 0.0]  # (sum, count) of the running validation epoch

    # -- network -------------------------------------------------------------------------------------------------------
    def build_backbone(self, input_shape: Sequence[int]) -> nn.Module:
        if len(input_shape) == 3 and min(input_shape[1:]) >= 16:
            return SmallCNN(bias=False)
        return MLP(hidden=(100, 100), bias=False)

    def bind(self, spec: StreamSpec) -> None:
        super().bind(spec)
        layers = self.projected_layers()
        tracked = [name for name, mod in self.named_modules() if isinstance(mod, BN_TYPES) and mod.track_running_stats]
        if tracked:
            log.info("%s: BatchNorm %s keeps running statistics; they are frozen (eval mode) after the first "
                     "experience, so later experiences cannot overwrite them", type(self).__name__, tracked)
        self.thresholds(0)  # one threshold (and sample count) per projected layer, or a clear error now
        resolve_per_layer(self.layer_samples or self.rep_samples, len(layers), "layer_samples")
        if not self.bases:
            self.bases = [empty_basis(weight_in_dim(ref)) for ref in layers]

    def projected_layers(self) -> list[LayerRef]:
        """Projected layers: the backbone's Linear/Conv2d layers, plus the shared head outside task-IL."""
        if self._layers is None:
            prefixes = ["backbone"] if self.multi_head else ["backbone", "heads.0"]
            self._layers = find_projected_layers(self, prefixes, owner=type(self).__name__)
        return self._layers

    def thresholds(self, task: int) -> list[float]:
        """``eps_l`` for experience ``task``, one per projected layer."""
        base = resolve_per_layer(self.threshold, len(self.projected_layers()), "threshold")
        return [min(1.0, e + self.threshold_step * task) for e in base]

    def _bn_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules() if isinstance(m, BN_TYPES) for p in m.parameters(recurse=False)]

    @property
    def freezes_bn(self) -> bool:
        """Whether BN affine parameters are frozen after the first experience."""
        return True

    def train(self, mode: bool = True) -> GPM:
        """Lightning's ``train()``, except that BatchNorm layers with running statistics stay in eval mode after the
        first experience: later experiences would overwrite the statistics old tasks are evaluated with, a change no
        projection protects (``SmallCNN``'s BN forgot bwt -0.3 of a 3-task image toy this way)."""
        super().train(mode)
        if mode and self._bn_frozen:
            for mod in self.modules():
                if isinstance(mod, BN_TYPES) and mod.track_running_stats:
                    mod.eval()
        return self

    def on_train_start(self) -> None:
        # (from here, not from the start of fit: Lightning warns about modules in eval mode before this hook)
        self._bn_frozen = int(self.experiences_done) > 0
        self.train(self.training)

    def on_train_end(self) -> None:
        self._bn_frozen = False

    def on_fit_start(self) -> None:
        if self.trainer.gradient_clip_val and str(getattr(self.trainer.gradient_clip_algorithm, "value",
                                                            self.trainer.gradient_clip_algorithm)) == "value":
            raise ConfigError(f"{type(self).__name__} projects gradients out of the protected span, which "
                              "gradient_clip_algorithm='value' (clipping each coordinate) undoes; use 'norm'")

    def optimizer_parameters(self) -> list[nn.Parameter]:
        """Backbone (BN affine only on the first experience), the current head in task-IL (all heads otherwise)."""
        assert self.backbone is not None
        heads = [self.heads[self.active_task]] if self.multi_head else list(self.heads)
        return [*self.backbone.parameters(), *(p for h in heads for p in h.parameters())]

    # -- experience hooks ----------------------------------------------------------------------------------------------
    def on_experience_start(self, experience: Experience) -> None:
        self.active_task = experience.index
        frozen = self.active_task > 0 and self.freezes_bn
        for p in self._bn_parameters():
            p.requires_grad_(not frozen)
        self._projectors = []  # per layer: M or its complement, whichever is cheaper
        for basis, ref in zip(self.bases, self.projected_layers()):
            # faithful bases drift from orthonormal, where the complement and G - (G M) M^T differ: official formula
            factor, complement = (basis, False) if self.faithful else projection_factor(basis)
            self._projectors.append((factor.to(ref.weight.device, ref.weight.dtype), complement))
        self._install_input_side()
        self._plateau = None if self.lr_patience is None else PlateauDecay(self.lr, self.lr_patience, self.lr_factor,
                                                                            self.lr_min)

    def _install_input_side(self) -> None:
        """Project the gradients of bias-free Linear layers on their inputs for small batches
        (:class:`strategies.projection.layers.InputSideProjection`); not in faithful mode (the official formula)."""
        self._remove_input_side()
        for l, (ref, (factor, complement)) in enumerate(zip(self.projected_layers(), self._projectors)):
            if (not self.faithful and self.input_side_allowed(l) and isinstance(ref.module, nn.Linear)
                    and (complement or factor.shape[1] > 0)):
                self._input_side[l] = hook = InputSideProjection(ref.module, factor, complement)
                hook.install()

    def _remove_input_side(self) -> None:
        for hook in self._input_side:
            if hook is not None:
                hook.remove()
        self._input_side = [None] * len(self.projected_layers())

    def input_side_hook(self, layer: int) -> InputSideProjection | None:
        return self._input_side[layer] if layer < len(self._input_side) else None

    def input_side_allowed(self, layer: int) -> bool:
        """Whether layer ``layer``'s gradient may be projected on its inputs this experience (CUBER: not where it
        releases)."""
        return True

    def transform_gradients(self) -> None:
        for l, (ref, (factor, complement)) in enumerate(zip(self.projected_layers(), self._projectors)):
            grad, hook = ref.weight.grad, self.input_side_hook(l)
            if hook is not None and not hook.pending:
                continue  # projected on the inputs already
            if hook is not None:
                hook.pending = False
            if grad is not None and (complement or factor.shape[1] > 0):
                grad.copy_(project_with_factor(grad, factor, complement))
        self._zero_frozen_grads()

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Plain SGD steps along the projected gradient. Any other optimizer (Adam's per-coordinate scaling, weight
        decay) may leave ``span(M)^perp``, so its step ``W_new - W_old`` is projected too, like a gradient."""
        if not self.project_updates or self.active_task == 0:
            super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
            return
        layers = [(ref, f, c) for ref, (f, c) in zip(self.projected_layers(), self._projectors) if c or f.shape[1] > 0]
        before = [ref.weight.detach().clone() for ref, _, _ in layers]
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        with torch.no_grad():
            for (ref, factor, complement), old in zip(layers, before):
                ref.weight.copy_(old + project_with_factor(ref.weight - old, factor, complement))

    def _zero_frozen_grads(self) -> None:
        if self.active_task > 0 and self.freezes_bn:
            for p in self._bn_parameters():
                if p.grad is not None:
                    p.grad.zero_()

    def on_experience_end(self, experience: Experience) -> None:
        self._remove_input_side()
        self._restore_best()
        self.store_task_state(experience.index)
        rows = sample_rows(len(experience.train), self.rep_samples, self.generator("representation", experience.index))
        before = [b.shape[1] for b in self.bases]
        self.update_memory(experience, rows, self.representations(experience, rows))
        for ref, basis, m in zip(self.projected_layers(), self.bases, before):
            if m < basis.shape[0] <= basis.shape[1]:
                log.warning("%s: layer %r is saturated (%d/%d directions); it is frozen from now on",
                            type(self).__name__, ref.name, basis.shape[1], basis.shape[0])

    def representations(self, experience: Experience, rows: Tensor) -> list[Tensor]:
        """``R_l`` (d_l, n_l) of every projected layer on ``experience.train[rows]`` (eval mode, task's own head)."""
        layers = self.projected_layers()
        counts = resolve_per_layer(self.layer_samples or self.rep_samples, len(layers), "layer_samples")
        x, _, t = experience.train[rows]
        was_training = self.training
        self.eval()
        with torch.no_grad(), capture_inputs([ref.module for ref in layers]) as captured:
            self(x.to(self.device), t.to(self.device))
        self.train(was_training)
        missing = [ref.name for ref, inp in zip(layers, captured) if inp is None]
        if missing:
            raise RuntimeError(f"projected layers {missing} were not called in the forward pass")
        return [representation(ref.module, inp, int(n)) for ref, inp, n in zip(layers, captured, counts)
                if inp is not None]

    def store_task_state(self, task: int) -> None:
        """Keep what the trained experience ``task`` needs at test time (TRGP: its scale matrices)."""

    def update_memory(self, experience: Experience, rows: Tensor, reps: list[Tensor]) -> None:
        """GPM basis update of every layer from the representations ``reps`` of ``experience``."""
        eps = self.thresholds(experience.index)
        self.bases = [update_basis(b, r.to(b.device), e, faithful=self.faithful)
                      for b, r, e in zip(self.bases, reps, eps)]

    # -- early stopping with LR decay ----------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_loss = [0.0, 0.0]

    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        x, y, t = batch
        logits = self(x, t)
        loss = F.cross_entropy(logits, y)
        self._val_loss[0] += float(loss) * len(y)
        self._val_loss[1] += len(y)
        self.log("val/loss", loss, prog_bar=True)
        self.log("val/acc", (logits.argmax(-1) == y).float().mean(), prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        if self._plateau is None or self.trainer.sanity_checking or self._val_loss[1] == 0:
            return
        state = {n: p for n, p in self.named_parameters()} | {n: b for n, b in self.named_buffers()
                                                              if n.startswith("backbone")}
        total = self.trainer.strategy.reduce(torch.tensor(self._val_loss, dtype=torch.float64, device=self.device),
                                             reduce_op="sum")  # the same decision on every DDP rank
        lr = self._plateau.step(float(total[0] / total[1]), state)
        for opt in self.trainer.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr
        if self._plateau.stopped:
            self.trainer.should_stop = True

    def _restore_best(self) -> None:
        if self._plateau is not None and self._plateau.best_state is not None:
            self.load_state_dict(self._plateau.best_state, strict=False)
        self._plateau = None

    # -- results -------------------------------------------------------------------------------------------------------
    def extra_results(self, accuracy_matrix: Tensor) -> dict[str, Any]:
        return {"basis_ranks": [[int(b.shape[1]), int(b.shape[0])] for b in self.bases]}


def weight_in_dim(ref: LayerRef) -> int:
    """``d_l``: the width of the layer's weight viewed as ``(c_out, d_l)``."""
    return int(ref.weight[0].numel())
