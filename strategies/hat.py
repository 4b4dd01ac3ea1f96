"""Hard Attention to the Task (Serrà et al., "Overcoming Catastrophic Forgetting with Hard Attention to the Task",
ICML 2018)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clkit.data import Experience, StreamSpec
from clkit.errors import ConfigError
from clkit.module import ContinualModule
from clkit.nets import MLP
from clkit.rng import derive_seed, forked_rng

__all__ = ["HAT"]


class HAT(ContinualModule):
    """HAT: every hidden unit of the MLP backbone is gated by a task's attention mask ``a = σ(s · e_t)``, with a
    learned embedding ``e_t`` per layer and task; the gradients of weights that earlier tasks' masks use are
    scaled by ``1 − min(a_out, a_in)`` of the cumulative mask (the paper's Eq. 2), so those weights (nearly) never
    move; a regulariser ``c · Σ a_t (1 − a_<t) / Σ (1 − a_<t)`` keeps masks sparse (Eq. 5). The scale ``s`` is
    annealed from ``1/s_max`` to ``s_max`` over the batches of every epoch (Eq. 3) and the embeddings' gradients
    are compensated for it (Eq. 4); embeddings are clamped to ``±thres`` and gradients clipped to norm ``clipgrad``
    (the authors' 6 and 10,000). Test time uses ``s_max``. Task-IL only (it needs the task id to pick the mask),
    with a :class:`clkit.nets.MLP` backbone; use plain SGD (the paper): weight decay would move masked weights.

    Args:
        s_max: Largest mask scale (the paper: 400).
        c: Mask-sparsity regularisation strength (the paper: 0.75).
        thres: Embedding clamp.
        clipgrad: Gradient-norm clip.
        **kwargs: :class:`clkit.ContinualModule` arguments (``backbone``, ``optimizer``, ``lr_scheduler``, ``seed``).
    """

    SUPPORTED_SCENARIOS: ClassVar[frozenset[str]] = frozenset({"task-il"})
    FAST_TRAINING: ClassVar[bool] = False  # the mask temperature anneals over trainer.num_training_batches
    mask_cumulative: list[Tensor]  # CL memory: per hidden layer, the max over learned tasks of their masks

    def __init__(self, *, s_max: float = 400.0, c: float = 0.75, thres: float = 6.0, clipgrad: float = 10000.0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if s_max <= 1 or c < 0 or thres <= 0 or clipgrad <= 0:
            raise ConfigError(f"HAT needs s_max > 1, c >= 0, thres > 0, clipgrad > 0; got s_max={s_max}, c={c}, "
                              f"thres={thres}, clipgrad={clipgrad}")
        self.s_max, self.c, self.thres, self.clipgrad = float(s_max), float(c), float(thres), float(clipgrad)
        self.embeddings = nn.ModuleList()
        self.register_memory("mask_cumulative", [])
        self._s = self.s_max

    def bind(self, spec: StreamSpec) -> None:
        first = self.spec is None
        super().bind(spec)
        if not first:
            return
        if not isinstance(self.backbone, MLP):
            raise ConfigError(f"HAT masks the hidden units of a clkit.nets.MLP backbone, got "
                              f"{type(self.backbone).__name__}")
        widths = [m.out_features for m in self.linears]
        with forked_rng(derive_seed(self.seed, "hat-embeddings")):
            self.embeddings = nn.ModuleList(nn.Embedding(spec.n_experiences, w) for w in widths)
        self.mask_cumulative = [torch.zeros(w) for w in widths]

    @property
    def linears(self) -> list[nn.Linear]:
        assert self.backbone is not None
        return [m for m in self.backbone.net if isinstance(m, nn.Linear)]  # type: ignore[union-attr]

    @property
    def embedding_list(self) -> list[nn.Embedding]:
        return [e for e in self.embeddings if isinstance(e, nn.Embedding)]

    def masks(self, t: Tensor, s: float) -> list[Tensor]:
        """Per hidden layer, the (N, units) attention of the tasks ``t`` at scale ``s``."""
        return [torch.sigmoid(s * e(t)) for e in self.embedding_list]

    def features(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        assert self.backbone is not None and t is not None
        masks = self.masks(t, self._s if self.training else self.s_max)
        layer = 0
        for m in self.backbone.net:  # type: ignore[union-attr]
            x = m(x)
            if isinstance(m, nn.ReLU):
                x = x * masks[layer]
                layer += 1
        return x

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.head_logits(self.features(x, t), t)

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y, t = batch
        n_batches = int(self.trainer.num_training_batches) if self._trainer is not None else 1
        self._s = self.s_max if n_batches <= 1 else \
            1 / self.s_max + (self.s_max - 1 / self.s_max) * batch_idx / (n_batches - 1)
        loss = F.cross_entropy(self(x, t), y)
        masks = self.masks(t[:1], self._s)
        prev = [m.to(x.device) for m in self.mask_cumulative]
        reg = sum((a[0] * (1 - p)).sum() for a, p in zip(masks, prev)) / sum((1 - p).sum() for p in prev)
        loss = loss + self.c * reg
        self.log_epoch_mean("train/loss", loss, len(y))
        return loss

    def transform_gradients(self) -> None:
        exp = self.current_experience
        if exp is not None and exp.index > 0:
            prev_out: Tensor | None = None
            for linear, cum in zip(self.linears, self.mask_cumulative):
                cum = cum.to(linear.weight.device)
                keep = 1 - (cum[:, None] if prev_out is None else torch.minimum(cum[:, None], prev_out[None, :]))
                if linear.weight.grad is not None:
                    linear.weight.grad *= keep
                if linear.bias is not None and linear.bias.grad is not None:
                    linear.bias.grad *= 1 - cum
                prev_out = cum
        s = self._s
        for e in self.embedding_list:
            if e.weight.grad is not None:
                w = e.weight.detach()
                num = torch.cosh(torch.clamp(s * w, -self.thres, self.thres)) + 1
                e.weight.grad *= self.s_max / s * num / (torch.cosh(s * w) + 1)
        torch.nn.utils.clip_grad_norm_([p for p in self.parameters() if p.grad is not None], self.clipgrad)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        with torch.no_grad():
            for e in self.embedding_list:
                e.weight.clamp_(-self.thres, self.thres)

    def on_experience_end(self, experience: Experience) -> None:
        task = torch.tensor([experience.task_id], device=self.device)
        with torch.no_grad():
            now = [m[0] for m in self.masks(task, self.s_max)]
        self.mask_cumulative = [torch.maximum(c.to(a.device), a) for c, a in zip(self.mask_cumulative, now)]
