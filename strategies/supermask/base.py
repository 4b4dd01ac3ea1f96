"""Shared base of :class:`strategies.SupSup` and :class:`strategies.ExSSNeT`: a masked network with per-task masks.

It builds a masked backbone and one masked shared head, routes each batch through the mask and BatchNorm of its task,
freezes the mask as packed bits at the end of the experience, optionally infers the task at test time
(``docs/methods/supermask.md``), and declares every piece of CL memory (masks, unions, kept scores, per-task
BatchNorm statistics) through the memory protocol.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, Literal, Optional

import torch
from torch import Tensor, nn

from clkit.data import Experience, StreamSpec
from clkit.errors import ConfigError
from clkit.metrics import max_forgetting
from clkit.module import ContinualModule, OptimizerCallable
from clkit.optim import spec
from clkit.rng import derive_seed
from strategies.supermask.inference import (
    infer_task_binary,
    infer_task_exhaustive,
    infer_task_oneshot,
    mean_entropy,
    superfluous_objective,
)
from strategies.supermask.layers import BnInfer, KeepScores, MaskedLayer, TaskBatchNorm
from strategies.supermask.masks import DensityMode, count_bits, layer_density, overlap_bits
from strategies.supermask.nets import LayerFactory, MaskedBackbone, default_masked_backbone

__all__ = ["SupermaskModule", "TaskInference"]

TaskInference = Literal["none", "oneshot", "binary", "exhaustive"]
PerRow = Literal["none", "head", "all"]


class SupermaskModule(ContinualModule):
    """Masked network, per-task masks and BatchNorm, task-IL routing and optional task inference.

    Args:
        density: Fraction of weights each task keeps per layer (uniform mode).
        density_mode: ``"uniform"`` or ``"erdos_renyi"`` (SupSup GG).
        er_scale: Erdős–Rényi scale ``s``.
        task_inference: ``"none"`` (task ids from the batch), ``"oneshot"`` or ``"binary"`` (inferred at test from
            the entropy gradient over superposed masks), or ``"exhaustive"`` (the task whose own mask gives the
            lowest entropy: one forward pass per learned task, exact where one-shot is a first-order guess).
        bn_infer: BatchNorm statistics during the superposed inference pass (``"batch"``: the batch's own, so a
            one-example batch falls back to ``"mixture"``: the α-weighted per-task statistics).
        faithful: Reproduce the official code where ``docs/methods/supermask.md`` marks a row.
        per_row: Which layers keep ``density`` of every output unit's inputs instead of ``density`` of the layer:
            ``"head"`` (default: every class keeps the same number of head weights), ``"all"`` or ``"none"`` (one
            top-k per layer, the official code). The total count kept is the same up to rounding. With one top-k per
            layer, a 2 % head (LeNet 784-300-100 on permuted MNIST-5k: 20 of 1,000 weights) leaves 1.2 of a task's
            10 classes without any path from the input on average, capping that task (0 such classes: 73 %, 1: 56 %,
            2: 46 % task accuracy, ExSSNeT, 5 seeds); ``"all"`` spreads the budget over units the head never reads
            and does worse (ExSSNeT 61.6 % against 79.5 % for ``"head"``, same seeds).
        superfluous: Extra outputs of the shared head that are never a label (SupSup's superfluous neurons): the
            training loss keeps them low on every task's own data, and ``oneshot``/``binary`` inference then
            minimises SupSup's ``G`` (their log-sum-exp) instead of the entropy. Predictions range over the
            classes only.
        num_threads: torch intra-op threads while the strategy trains (from ``on_experience_start`` to
            ``on_experience_end``) and evaluates (``on_evaluation_start`` to ``on_evaluation_end``); the process's
            setting is restored in between. Pinned so that a config and seed give the same matrix on any machine and
            sweep layout: MKL's matmuls and convolution gradients and torch's large reductions round differently
            with another thread count, and a top-k mask turns such 1e-7 differences into different masks (SupSup on
            ``configs/supsup_digits.yaml``: acc 0.9757 with 1 thread, 0.9681 with 2, before pinning). ``None``
            leaves the thread count alone (results then depend on it).
        **kwargs: :class:`clkit.ContinualModule` arguments. ``backbone`` must be a masked backbone
            (:class:`strategies.supermask.MaskedMLP`, ``MaskedCNN``, ``MaskedGEMResNet18``; default from the input
            shape); ``seed`` also fixes the signed-constant weights and every task's initial scores.
    """

    SUPPORTED_SCENARIOS: ClassVar[frozenset[str]] = frozenset({"task-il"})
    KEEP_SCORES: KeepScores = "bits"
    learned: list[int]  # CL memory
    task_id_hits: dict[int, list[int]]

    def __init__(self, *, density: float = 0.1, density_mode: DensityMode = "uniform", er_scale: float = 1.0,
                 task_inference: TaskInference = "none", bn_infer: BnInfer = "batch", faithful: bool = False,
                 num_threads: Optional[int] = 1, per_row: PerRow = "head", superfluous: int = 0,
                 optimizer: OptimizerCallable = spec("torch.optim.Adam", lr=1e-3),  # type: ignore[assignment]
                 **kwargs: Any) -> None:
        super().__init__(optimizer=optimizer, **kwargs)
        _check_choice("density_mode", density_mode, ("uniform", "erdos_renyi"))
        _check_choice("task_inference", task_inference, ("none", "oneshot", "binary", "exhaustive"))
        _check_choice("bn_infer", bn_infer, ("batch", "mixture"))
        _check_choice("per_row", per_row, ("none", "head", "all"))
        if superfluous < 0:
            raise ConfigError(f"superfluous must be >= 0, got {superfluous}")
        if num_threads is not None and num_threads < 1:
            raise ConfigError(f"num_threads must be >= 1 or None, got {num_threads}")
        if not 0.0 < density <= 1.0:
            raise ConfigError(f"density must be in (0, 1], got {density}")
        if density_mode == "erdos_renyi" and er_scale <= 0:
            raise ConfigError(f"er_scale must be > 0, got {er_scale}")
        if self.backbone is not None and not isinstance(self.backbone, MaskedBackbone):
            raise ConfigError(f"{type(self).__name__} needs a masked backbone (strategies.supermask.MaskedMLP, "
                              f"MaskedCNN or MaskedGEMResNet18), got {type(self.backbone).__name__}")
        if faithful and task_inference in ("oneshot", "binary") and bn_infer == "batch":
            raise ConfigError("faithful task inference uses one example, so bn_infer='batch' cannot normalise it; "
                              "set bn_infer='mixture'")
        self.density, self.density_mode, self.er_scale = density, density_mode, er_scale
        self.task_inference, self.bn_infer, self.faithful = task_inference, bn_infer, faithful
        self.num_threads, self.per_row, self.superfluous = num_threads, per_row, superfluous
        self._outer_threads: Optional[int] = None  # the process's thread count while pinned
        self.register_memory("learned", [])  # tasks whose masks are frozen, in learning order
        self.register_memory("task_id_hits", {})  # test row -> [correct batches, batches] (task inference)
        self._eval: tuple[str, int] = ("test", -1)
        self._modules_cache: list[Any] = []
        self._layers_cache: list[MaskedLayer] = []

    # -- construction --------------------------------------------------------------------------------------------------
    def density_of(self, shape: tuple[int, ...]) -> float:
        return layer_density(shape, self.density_mode, self.density, self.er_scale)

    @property
    def mask_seed(self) -> int:
        """Seed of the signed-constant weights and the initial scores (derived from the strategy's seed)."""
        return derive_seed(self.resolve_seed(), "supermask") % 2**31

    def bind(self, spec: StreamSpec) -> None:
        if isinstance(self.backbone, MaskedBackbone) and not self.backbone.built:
            self.backbone.configure_masks(self.density_of, self.mask_seed)
        super().bind(spec)
        head = self.heads[0]
        for layer in self._masked():
            layer.weight.requires_grad_(False)
            layer.per_row = self.per_row == "all" or (self.per_row == "head" and layer is head)

    def build_backbone(self, input_shape: Sequence[int]) -> nn.Module:
        backbone = default_masked_backbone(input_shape)
        backbone.configure_masks(self.density_of, self.mask_seed)
        return backbone

    def build_heads(self, in_features: int, num_classes: int) -> nn.ModuleList:
        """One masked shared head with ``max_classes + superfluous`` outputs; task ``t`` uses its own mask, its
        first ``C_t`` outputs and the superfluous ones."""
        factory = LayerFactory(self.density_of, self.mask_seed + 7_777)
        return nn.ModuleList([factory.linear(in_features, num_classes + self.superfluous)])

    def _masked(self) -> list[MaskedLayer]:
        """The masked layers (backbone and head), cached once the network exists (the set never changes)."""
        if not self._layers_cache:
            self._layers_cache = [m for m in self.modules() if isinstance(m, MaskedLayer)]
        return self._layers_cache

    def _norms(self) -> list[TaskBatchNorm]:
        return [m for m in self.modules() if isinstance(m, TaskBatchNorm)]

    def _switchable(self) -> list[Any]:
        if not self._modules_cache:
            self._modules_cache = [m for m in self.modules() if isinstance(m, (MaskedLayer, TaskBatchNorm))]
        return self._modules_cache

    def add_task(self, task: int, inits: Optional[list[Tensor]] = None) -> None:
        """Allocate scores (random, or ``inits`` per masked layer) and a BatchNorm for ``task``."""
        layers = self._masked()
        if inits is not None and len(inits) != len(layers):
            raise ValueError(f"got {len(inits)} score inits for {len(layers)} masked layers")
        for i, layer in enumerate(layers):
            layer.add_task(task, None, None if inits is None else inits[i])
        for bn in self._norms():
            bn.add_task(task)

    def freeze_task(self, task: int) -> None:
        """Store ``task``'s masks as packed bits in every masked layer (see :meth:`MaskedLayer.freeze_task`)."""
        for layer in self._masked():
            layer.freeze_task(task, self.keep_scores)

    @contextmanager
    def superposed(self, tasks: list[int], alpha: Tensor, bn_infer: BnInfer = "batch") -> Iterator[None]:
        """Temporarily run with ``W * sum_i alpha_i M_{tasks[i]}`` and superposed BatchNorm (task inference)."""
        _check_choice("bn_infer", bn_infer, ("batch", "mixture"))
        key = (tuple(tasks), alpha)
        modules = self._switchable()
        for m in modules:
            m.superposition = key
            if isinstance(m, TaskBatchNorm):
                m.bn_infer = bn_infer
        try:
            yield
        finally:
            for m in modules:
                m.superposition = None

    # -- forward -------------------------------------------------------------------------------------------------------
    def set_task(self, task: int) -> None:
        for m in self._switchable():
            m.task = task

    def task_logits(self, x: Tensor, task: int) -> Tensor:
        """Logits of ``x`` under task ``task``'s masks and BatchNorm: its first ``C_t`` outputs, ``-inf`` up to the
        widest task, then the :attr:`superfluous` outputs (trained towards low values, never a label)."""
        self.set_task(task)
        logits = self.heads[0](self.features(x))
        width = logits.shape[-1] - self.superfluous
        classes = self.classes_per_task[task] if task < len(self.classes_per_task) else width
        if classes == width:
            return logits
        pad = logits.new_full((len(x), width - classes), float("-inf"))
        return torch.cat([logits[:, :classes], pad, logits[:, width:]], dim=1)

    def real_logits(self, logits: Tensor) -> Tensor:
        """The class outputs of :meth:`task_logits` (without the superfluous ones)."""
        return logits[:, : logits.shape[-1] - self.superfluous] if self.superfluous else logits

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        tasks = t.unique().tolist()
        if len(tasks) == 1:
            return self.task_logits(x, int(tasks[0]))
        out: Optional[Tensor] = None
        for task in tasks:  # a mixed batch: run each task's rows through its own masks
            rows = t == task
            part = self.task_logits(x[rows], int(task))
            out = part.new_empty(len(x), part.shape[1]) if out is None else out
            out[rows] = part
        assert out is not None
        return out

    # -- task inference ------------------------------------------------------------------------------------------------
    def infer_task(self, x: Tensor) -> int:
        """The learned task whose mask most lowers the output entropy of ``x`` (one batch of one task)."""
        tasks = list(self.learned)
        width = max(self.classes_per_task[t] for t in tasks)
        if self.task_inference == "exhaustive":
            with torch.no_grad():
                return infer_task_exhaustive(lambda task: self.real_logits(self.task_logits(x, task)), tasks)
        with torch.inference_mode(False), torch.enable_grad():
            xs = x[:1].clone() if self.faithful else x.clone()  # official: first example only
            # batch statistics need two examples: a one-example batch (a test set's last) uses the stored ones
            bn_infer = self.bn_infer if len(xs) >= 2 else "mixture"

            sup = self.superfluous

            def forward(alpha: Tensor, cand: Sequence[int]) -> Tensor:
                with self.superposed(list(cand), alpha.to(xs.device), bn_infer):
                    logits = self.heads[0](self.features(xs))
                    return torch.cat([logits[:, :width], logits[:, logits.shape[-1] - sup:]], 1) if sup else \
                        logits[:, :width]

            objective = superfluous_objective(width) if sup else mean_entropy
            infer = infer_task_binary if self.task_inference == "binary" else infer_task_oneshot
            return infer(forward, tasks, objective)

    @property
    def task_aware(self) -> bool:
        """Task-agnostic when the task is inferred at test time, task-aware otherwise."""
        return self.task_inference == "none"

    def on_evaluation_start(self, split: Literal["test", "val"], row: int) -> None:
        self.pin_threads()
        self._eval = (split, row)

    def on_evaluation_end(self, split: Literal["test", "val"], row: int, data: Sequence[Any]) -> None:
        self.unpin_threads()

    # -- thread pinning ------------------------------------------------------------------------------------------------
    def pin_threads(self) -> None:
        """Set torch's intra-op threads to :attr:`num_threads`, remembering the process's count (idempotent)."""
        if self.num_threads is None or self._outer_threads is not None:
            return
        self._outer_threads = torch.get_num_threads()
        if self._outer_threads != self.num_threads:
            torch.set_num_threads(self.num_threads)

    def unpin_threads(self) -> None:
        """Give the process its own thread count back."""
        if self._outer_threads is None:
            return
        if torch.get_num_threads() != self._outer_threads:
            torch.set_num_threads(self._outer_threads)
        self._outer_threads = None

    def predict(self, x: Tensor, t: Tensor) -> Tensor:
        if self.task_inference == "none" or not self.learned:
            return self.real_logits(self(x, t)).argmax(dim=-1)
        task = self.infer_task(x)
        truth = int(t[0])
        split, row = self._eval
        if split == "test" and truth in self.learned:  # count only batches whose task can be identified
            hits = self.task_id_hits.setdefault(row, [0, 0])
            hits[0] += int(bool((t == task).all()))
            hits[1] += 1
        return self.real_logits(self.task_logits(x, task)).argmax(dim=-1)

    def task_id_accuracy(self) -> dict[int, float]:
        """Task-identification accuracy per row of the accuracy matrix (fraction of batches)."""
        return {row: c / n for row, (c, n) in sorted(self.task_id_hits.items()) if n}

    # -- CL hooks ------------------------------------------------------------------------------------------------------
    def initial_scores(self, experience: Experience) -> Optional[list[Tensor]]:
        """Per-layer initial scores of a new task; ``None`` = random (ExSSNeT overrides it for KKT)."""
        return None

    def on_experience_start(self, experience: Experience) -> None:
        self.pin_threads()  # before KKT's probe and the first training step
        task = experience.task_id
        if task in self.learned:
            raise ConfigError(f"task {task} was already learned; supermask strategies need a distinct task per "
                              f"experience")
        if not self._masked()[0].has_task(task):
            self.add_task(task, inits=self.initial_scores(experience))
        self.set_task(task)

    def on_experience_end(self, experience: Experience) -> None:
        self.freeze_task(experience.task_id)
        self.learned = [*self.learned, experience.task_id]
        self.unpin_threads()

    @property
    def keep_scores(self) -> KeepScores:
        return self.KEEP_SCORES

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        """The scores of ``task`` in every masked layer."""
        return [layer.scores[str(task)] for layer in self._masked()]

    def optimizer_parameters(self) -> list[nn.Parameter]:
        assert self.current_experience is not None
        return self.task_parameters(self.current_experience.task_id)

    # -- memory --------------------------------------------------------------------------------------------------------
    def memory_state(self) -> dict[str, Any]:
        """Registered memory plus, per masked layer, the packed masks, kept scores and union, and per task
        BatchNorm, its running statistics (all of them also live in the module as buffers)."""
        layers = self._masked()
        return {**super().memory_state(),
                "masks": [{t: layer.masks.get(t) for t in layer.masks.tasks()} for layer in layers],
                "kept_scores": [{t: layer.kept_scores.get(t) for t in layer.kept_scores.tasks()} for layer in layers],
                "unions": [layer.union for layer in layers],
                "norms": [[[b for b in bn.bn(t).buffers() if b is not None] for t in range(len(bn.bns))]
                          for bn in self._norms()]}

    def load_memory_state(self, state: dict[str, Any]) -> None:
        """Re-create the per-task tensors (lazily allocated during training), then fill them."""
        super().load_memory_state(state)
        layers, norms = self._masked(), self._norms()
        if len(state["masks"]) != len(layers) or len(state["norms"]) != len(norms):
            raise ConfigError(f"the checkpoint has {len(state['masks'])} masked layers and {len(state['norms'])} "
                              f"task BatchNorms; this network has {len(layers)} and {len(norms)}")
        with torch.no_grad():
            for layer, masks, kept, union in zip(layers, state["masks"], state["kept_scores"], state["unions"]):
                for t, packed in masks.items():
                    layer.masks.set(int(t), packed.to(layer.weight.device).clone())
                for t, scores in kept.items():
                    layer.kept_scores.set(int(t), scores.to(layer.weight.device).clone())
                layer.union.copy_(union)
                layer._cache = None
            for bn, tasks in zip(norms, state["norms"]):
                if tasks:
                    bn.add_task(len(tasks) - 1)
                for t, buffers in enumerate(tasks):
                    for live, saved in zip([b for b in bn.bn(t).buffers() if b is not None], buffers):
                        live.copy_(saved)
        self.task_id_hits = {int(k): [int(c), int(n)] for k, (c, n) in self.task_id_hits.items()}
        self._modules_cache = []

    def extra_results(self, accuracy_matrix: Tensor) -> dict[str, Any]:
        out: dict[str, Any] = {"mask_bytes_per_task": self.mask_bytes_per_task(), "num_threads": self.num_threads,
                               "max_forgetting": round(float(max_forgetting(accuracy_matrix)), 6)}  # 0 in task-IL
        if len(self.learned) <= 50:  # O(T^2) packed ANDs
            out["mask_overlap"] = self.mask_overlap()
        if self.task_inference != "none":
            out["task_id_accuracy"] = self.task_id_accuracy()
        return out

    def mask_overlap(self) -> list[list[float]]:
        """Whole-network ``|M_a & M_b| / |M_a|`` for every pair of learned tasks (divides by ``|M_a|``)."""
        layers = self._masked()
        sizes = {a: sum(count_bits(layer.masks.get(a)) for layer in layers) for a in self.learned}
        return [[sum(overlap_bits(layer.masks.get(a), layer.masks.get(b)) for layer in layers) / max(1, sizes[a])
                 for b in self.learned] for a in self.learned]

    def mask_bytes_per_task(self) -> int:
        """Bytes of one task's packed masks (8 weights per byte)."""
        return sum((layer.weight.numel() + 7) // 8 for layer in self._masked())


def _check_choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(repr(v) for v in valid)}")
