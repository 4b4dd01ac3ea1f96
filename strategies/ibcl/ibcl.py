"""Imprecise Bayesian Continual Learning (Lu, Caprio, Eaton & Lee, arXiv 2305.14782; ``docs/methods/ibcl.md``)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, ClassVar, Literal, Optional

import torch
from torch import Tensor, nn

from clkit.data import Experience, TensorData
from clkit.errors import ConfigError
from clkit.module import ContinualModule, OptimizerCallable
from clkit.optim import spec
from strategies.ibcl.bayes import (
    BayesMLP,
    hidden_sizes,
    layer_sizes,
    mlp_forward,
    mlp_forward_local,
    negative_elbo,
    segment_lengths,
    tempered_prior,
)
from strategies.ibcl.credal import KnowledgeBase, stage_seed
from strategies.ibcl.evaluation import (
    StageSelection,
    draw_models,
    prune_threshold,
    region,
    resolve_options,
    select_stage,
    task_accuracies,
    test_stage,
)
from strategies.ibcl.metrics import select_by_validation, stack_stages, standard_bwt

__all__ = ["IBCL"]

log = logging.getLogger(__name__)


class IBCL(ContinualModule):
    """Imprecise Bayesian Continual Learning: a credal set of posteriors, models for any task preference zero-shot.

    Lu, Caprio, Eaton & Lee, "IBCL: Zero-shot Model Generation for Task Trade-offs in Continual Learning",
    arXiv 2305.14782. Per experience, ``m = len(prior_stds)`` mean-field Gaussian heads (VCL-style chains) are fit
    by variational inference over frozen features; chain ``j``'s prior for the next task is its posterior tempered
    towards its base prior ``N(0, s_j^2)`` by ``prior_weights[j]`` (:func:`~strategies.ibcl.bayes.tempered_prior`),
    so later tasks are not outweighed by the accumulated old ones. The knowledge base keeps the posteriors, pruning
    a posterior within W2 distance ``d`` of a stored one. A preference ``w`` over the seen tasks maps to convex
    weights over the stored posteriors, then to the HDR at level ``alpha`` of their mixture, from which models are
    drawn (the mixture restricted to its HDR) and one is selected on validation data, with no training.

    Settings: domain-IL only (one shared head, no task id at test). In task-IL every task has its own head, so a
    convex combination of posteriors over "all tasks" is meaningless; in class-IL a task's posterior has never seen
    the other tasks' classes, so combining posteriors cannot trade tasks off.

    The accuracy matrix (``matrix_preference="task"``, default): cell ``R[i][j]`` is the test accuracy on task ``j``
    of the stage-``i`` model for the **one-hot preference on task ``j``** (the user asks for task ``j``), so the
    diagonal is the model for the newest task; cells of unseen tasks (``j > i``) use the uniform preference over the
    seen tasks. These predictions read the test batch's task id (``task_aware``). ``matrix_preference="uniform"``
    fills every cell with the uniform preference's model (task-agnostic). The preference results (``M`` preferences
    per stage: average, peak, standard BWT, rank correlation of accuracy with weight) go to ``results.json`` under
    ``"ibcl"``. Zero-shot selection needs every seen task's validation split (its training split when it has none):
    IBCL keeps them in its CL memory, counted in ``strategy_state_bytes`` beside the knowledge base.

    Args:
        prior_stds: Standard deviations ``s_j`` of the task-0 priors ``N(0, s_j^2)``; one chain each.
        prior_weights: ``lambda_j`` in [0, 1] per chain (one value: every chain): the weight of the chain's previous
            posterior in its next prior (1: VCL's prior; 0: every task from ``N(0, s_j^2)``). Default: evenly spaced
            from 1 to 0 (``(1, 0.5, 0)`` for three chains): one chain remembers, one forgets, one fits each task
            alone.
        model_size: ``"small"`` (logistic regression), ``"normal"`` (64) or ``"large"`` (128-16) head.
        hidden: Hidden widths overriding ``model_size``.
        num_preferences: Preferences ``M`` drawn per stage.
        num_samples: Models ``K`` sampled per preference.
        alpha: HDR level (``None``: paper 0.01, or the official code's ``0.01`` read as mass when faithful).
        alpha_convention: ``"paper"`` (mass ``1 - alpha``) or ``"code"`` (``alpha`` is the mass).
        d: Pruning threshold, a W2 distance (``None``: ``DEFAULT_D_REL * mean(prior_stds) * sqrt(P)`` clean, 0.01
            of the official distance faithful; 0 disables pruning).
        combine: ``"mixture"`` (default: the HDR of the mixture, mass >= ``1 - alpha``) or ``"moment_average"``
            (the official code's box around one averaged Gaussian; faithful default).
        threshold: How the mixture HDR's level is found: ``"bound"`` (exact chi-square bound, mass >= ``1 - alpha``)
            or ``"monte_carlo"`` (quantile over ``n_hdr_samples`` draws).
        matrix_preference: What fills the accuracy matrix: ``"task"`` (one-hot on the tested task, task-aware) or
            ``"uniform"``.
        mc_samples: Reparameterised samples ``S`` per step (clean objective).
        local_reparameterization: Draw each example's pre-activations from their Gaussian instead of one weight
            sample per step (clean objective; the same ELBO, a far less noisy gradient).
        n_hdr_samples: Samples estimating the mixture HDR threshold (``threshold="monte_carlo"``).
        sample_scale: Mixture candidates are drawn with standard deviations ``sample_scale * sigma`` and kept only
            inside the HDR (1: the mixture restricted to its HDR; smaller: closer to the components' modes).
        init_from_prior: Start each fit at the chain's prior instead of a fresh initialisation.
        faithful: Official-code behaviour for every flag below that is left ``None``.
        objective, init, distance, sample_per, selection, preference_kind, eval_drop_last: The official-code rows
            of ``docs/methods/ibcl.md``.
        **kwargs: :class:`clkit.ContinualModule` arguments; ``optimizer`` (default Adam, lr 0.05) trains the ``m``
            chains together; ``seed`` also fixes the preferences, the initialisations and the sampled models;
            ``backbone`` is a frozen feature extractor (default none: the flattened inputs are the features).
    """

    SUPPORTED_SCENARIOS: ClassVar[frozenset[str]] = frozenset({"domain-il"})
    matrix_thetas: Tensor  # (T, P): row j, the model that predicts task j's batches in the accuracy matrix
    prior_mu: Tensor  # (m, P) the chains' priors for the current experience
    prior_sigma: Tensor  # (m, P)
    stage_results: list[dict[str, Any]]  # CL memory
    val_sets: list[list[Tensor]]

    def __init__(self, *, prior_stds: Sequence[float] = (0.2, 0.25, 0.3), prior_weights: Optional[Sequence[float]] = None,
                 model_size: Literal["small", "normal", "large"] = "small", hidden: Optional[list[int]] = None,
                 num_preferences: int = 10, num_samples: int = 10, alpha: Optional[float] = None,
                 alpha_convention: Optional[Literal["paper", "code"]] = None, d: Optional[float] = None,
                 combine: Optional[Literal["mixture", "moment_average"]] = None,
                 threshold: Literal["bound", "monte_carlo"] = "bound",
                 matrix_preference: Literal["task", "uniform"] = "task", mc_samples: int = 1,
                 local_reparameterization: bool = True, sample_scale: float = 1.0,
                 n_hdr_samples: int = 10_000, init_from_prior: bool = False, faithful: bool = False,
                 objective: Optional[Literal["elbo", "official"]] = None,
                 init: Optional[Literal["standard", "official"]] = None,
                 distance: Optional[Literal["w2", "official"]] = None,
                 sample_per: Optional[Literal["coordinate", "tensor"]] = None,
                 selection: Optional[Literal["validation", "test_oracle"]] = None,
                 preference_kind: Optional[Literal["dirichlet", "normalized_uniform"]] = None,
                 eval_drop_last: Optional[bool] = None,
                 optimizer: OptimizerCallable = spec("torch.optim.Adam", lr=0.05),  # type: ignore[assignment]
                 **kwargs: Any) -> None:
        super().__init__(optimizer=optimizer, **kwargs)
        if not prior_stds or min(prior_stds) <= 0:
            raise ConfigError(f"prior_stds must be a non-empty list of positive numbers, got {prior_stds}")
        if mc_samples < 1:
            raise ConfigError(f"mc_samples must be >= 1, got {mc_samples}")
        m = len(prior_stds)
        weights = ([1.0 - j / (m - 1) for j in range(m)] if m > 1 else [1.0]) if prior_weights is None else \
            [float(v) for v in prior_weights]
        if len(weights) not in (1, m) or not all(0.0 <= v <= 1.0 for v in weights):
            raise ConfigError(f"prior_weights must be one value or one per prior std ({m}), each in [0, 1], got "
                              f"{weights}")
        if matrix_preference not in ("task", "uniform"):
            raise ConfigError(f"matrix_preference={matrix_preference!r} is not one of ['task', 'uniform']")
        try:
            self.hidden = list(hidden) if hidden is not None else list(hidden_sizes(model_size))
            self.opts = resolve_options(
                faithful=faithful, alpha=alpha, alpha_convention=alpha_convention, objective=objective, init=init,
                distance=distance, d=d, combine=combine, threshold=threshold, sample_per=sample_per, selection=selection,
                preference_kind=preference_kind, eval_drop_last=eval_drop_last, eval_batch_size=None,
                num_preferences=num_preferences, num_samples=num_samples, n_hdr_samples=n_hdr_samples,
                sample_scale=sample_scale)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        self.prior_stds = [float(s) for s in prior_stds]
        self.prior_weights = weights * len(self.prior_stds) if len(weights) == 1 else weights
        self.matrix_preference = matrix_preference
        self.mc_samples, self.init_from_prior = int(mc_samples), bool(init_from_prior)
        self.local_reparameterization = bool(local_reparameterization)
        self.posterior: BayesMLP | None = None
        self.sizes: tuple[int, ...] = ()
        self.kb = KnowledgeBase()
        self.register_memory("stage_results", [])  # per stage: the preference results (JSON-able)
        self.register_memory("val_sets", [])  # per seen task: [x, y] of its validation split, for selection
        self._stage: Optional[StageSelection] = None  # this stage's selection, until its models are tested
        self._fit: dict[str, list[float]] = {}  # this stage's fit diagnostics
        self._n_train = 1

    # -- binding -------------------------------------------------------------------------------------------------------
    def build_backbone(self, input_shape: Sequence[int]) -> nn.Module:
        """Default: no backbone, the (flattened) inputs are the features (IBCL runs on frozen features)."""
        return nn.Flatten()

    def build_heads(self, in_features: int, num_classes: int) -> nn.ModuleList:
        out = 1 if num_classes == 2 else num_classes  # binary: one sigmoid logit
        self.sizes = layer_sizes(in_features, self.hidden, out)
        init = self.opts.init == "standard"
        self.posterior = BayesMLP(self.sizes, chains=len(self.prior_stds),
                                  mu_init="standard" if init else "zero", sigma_init=0.1 if init else 1.0,
                                  generator=torch.Generator().manual_seed(stage_seed(self.resolve_seed(), -1)))
        theta0 = self.posterior.mu[0].detach()
        self.register_buffer("matrix_thetas", theta0.expand(max(1, self.num_tasks), -1).clone())
        self.register_buffer("prior_mu", torch.zeros_like(self.posterior.mu), persistent=False)
        self.register_buffer("prior_sigma", torch.ones_like(self.posterior.mu), persistent=False)
        return nn.ModuleList()

    def bind(self, spec: Any) -> None:
        super().bind(spec)
        for p in self.backbone.parameters() if self.backbone is not None else []:
            p.requires_grad_(False)  # the backbone is a frozen feature extractor

    def train(self, mode: bool = True) -> IBCL:
        super().train(mode)
        if self.backbone is not None:
            self.backbone.eval()  # frozen: no dropout, no batch-norm updates
        return self

    def optimizer_parameters(self) -> list[nn.Parameter]:
        assert self.posterior is not None, "call bind(stream) first"
        return [self.posterior.mu, self.posterior.rho]

    # -- forward -------------------------------------------------------------------------------------------------------
    def features(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return super().features(x).flatten(1)

    @property
    def task_aware(self) -> bool:
        """``matrix_preference="task"`` reads the test batch's task id (the preference names the tested task)."""
        return self.matrix_preference == "task"

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Class logits (N, C) of the matrix models (binary: ``[0, z]``, so softmax gives ``sigmoid(z)``).

        Row ``n`` uses ``matrix_thetas[t[n]]`` (``"task"``) or the uniform preference's model (``"uniform"``).
        """
        feats = self.features(x)
        last = self.matrix_thetas.shape[0] - 1
        rows = t.long().clamp(0, last) if self.task_aware else torch.full_like(t.long(), last)
        z = feats.new_empty(feats.shape[0], self.sizes[-1])
        for task in rows.unique().tolist():
            pick = rows == task
            z[pick] = mlp_forward(self.matrix_thetas[task].unsqueeze(0), feats[pick], self.sizes)[0]  # (n, out)
        return torch.cat([torch.zeros_like(z), z], dim=-1) if z.shape[-1] == 1 else z

    def predict(self, x: Tensor, t: Tensor) -> Tensor:
        z = self(x, t)
        return (z[:, 1] >= z[:, 0]).long() if z.shape[-1] == 2 else z.argmax(-1)

    # -- training ------------------------------------------------------------------------------------------------------
    def on_experience_start(self, experience: Experience) -> None:
        assert self.posterior is not None, "call bind(stream) first"
        if experience.index != self.kb.num_tasks:
            raise ConfigError(f"IBCL expected experience {self.kb.num_tasks}, got {experience.index}")
        self._n_train = len(experience.train)
        with torch.no_grad():
            if self.kb.num_tasks == 0:
                stds = torch.tensor(self.prior_stds, dtype=self.prior_sigma.dtype).unsqueeze(1)  # (m, 1)
                self.prior_mu.zero_()
                self.prior_sigma.copy_(stds.expand_as(self.prior_sigma))
            else:
                slots = self.kb.slots[-1]
                mu, sigma = tempered_prior(torch.stack([self.kb.mus[s] for s in slots]),
                                           torch.stack([self.kb.sigmas[s] for s in slots]),
                                           torch.tensor(self.prior_stds).unsqueeze(1),
                                           torch.tensor(self.prior_weights).unsqueeze(1))
                self.prior_mu.copy_(mu)
                self.prior_sigma.copy_(sigma)
        self.posterior.reset_parameters(torch.Generator().manual_seed(stage_seed(self.seed, experience.index)))
        if self.init_from_prior:
            self.posterior.load_gaussians(self.prior_mu, self.prior_sigma)

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        assert self.posterior is not None
        x, y, _ = batch
        feats = self.features(x)
        s = 1 if self.opts.objective == "official" else self.mc_samples
        per_chain = []
        local = self.local_reparameterization and self.opts.objective == "elbo"
        for _ in range(s):
            if local:
                theta = None
                logits = mlp_forward_local(self.posterior.mu, self.posterior.sigma, feats, self.sizes)  # (m, B, out)
            else:
                theta = self.posterior.sample()  # (m, P)
                logits = mlp_forward(theta, feats, self.sizes)  # (m, B, out)
            per_chain.append(negative_elbo(
                logits, y, mu=self.posterior.mu, sigma=self.posterior.sigma, prior_mu=self.prior_mu,
                prior_sigma=self.prior_sigma, n_train=self._n_train, theta=theta,
                objective="clean" if self.opts.objective == "elbo" else "faithful"))
        loss = torch.stack(per_chain).mean(0).sum()  # mean over samples, sum over chains
        self.log_epoch_mean("train/loss", loss, len(y))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        assert self.posterior is not None
        x, y, _ = batch
        z = mlp_forward(self.posterior.mu, self.features(x), self.sizes)  # (m, B, out): the chains' mean models
        pred = (z[..., 0] >= 0).long() if z.shape[-1] == 1 else z.argmax(-1)
        self.log("val/acc", (pred == y).float().mean(), prog_bar=True)

    # -- experience end: knowledge base, preferences, evaluation -------------------------------------------------------
    def on_experience_end(self, experience: Experience) -> None:
        assert self.posterior is not None
        self._fit = self._fit_diagnostics(experience)
        d = prune_threshold(self.opts, self.posterior.mu.shape[1], self._mean_prior_std)
        self.kb.update(self.posterior.mu.detach().cpu(), self.posterior.sigma.detach().cpu(), d=d,
                       distance=self.opts.distance)
        stage = self.kb.num_tasks - 1
        rms = [v / math.sqrt(self.kb.mus[0].numel()) for v in self.kb.nn_distances[-1]]
        log.info("IBCL stage %d: nearest-point distances %s (per coordinate %s), KB size %d", stage,
                 self.kb.nn_distances[-1], rms, len(self.kb))
        split = experience.val if experience.val is not None else experience.train
        self.val_sets = [*self.val_sets, [split.x, split.y]]
        self._stage = select_stage(self.kb, self._val_data(), self.features, self.sizes, segment_lengths(self.sizes),
                                   self.opts, seed=self.seed)
        with torch.no_grad():
            uniform = self._stage.uniform_model.to(self.matrix_thetas)
            self.matrix_thetas.copy_(uniform.expand_as(self.matrix_thetas))
            if self.matrix_preference == "task":
                self.matrix_thetas[: stage + 1] = self._stage.task_models.to(self.matrix_thetas)

    @property
    def _mean_prior_std(self) -> float:
        return sum(self.prior_stds) / len(self.prior_stds)

    @torch.no_grad()
    def _fit_diagnostics(self, experience: Experience) -> dict[str, list[float]]:
        """Per chain, after fitting: the mean model's NLL and accuracy on the training data, and ``KL(q || p) / N``
        (a chain is prior-dominated when the KL term is large against the NLL and the accuracy stays low)."""
        from strategies.ibcl.bayes import kl_diag_gaussians, nll

        assert self.posterior is not None
        data = experience.train
        x, y, _ = data[torch.arange(len(data))]
        logits = mlp_forward(self.posterior.mu, self.features(x.to(self.posterior.mu.device)), self.sizes)
        y = y.to(logits.device)
        pred = (logits[..., 0] >= 0).long() if logits.shape[-1] == 1 else logits.argmax(-1)
        kl = kl_diag_gaussians(self.posterior.mu, self.posterior.sigma, self.prior_mu, self.prior_sigma)
        return {"train_nll": nll(logits, y).tolist(), "train_acc": (pred == y).double().mean(-1).tolist(),
                "kl_per_n": (kl / len(data)).tolist(), "sigma_mean": self.posterior.sigma.mean(-1).tolist()}

    def on_evaluation_end(self, split: Literal["test", "val"], row: int, data: Sequence[TensorData]) -> None:
        """After the loop's test row: test this stage's preference models on the seen tasks' test data."""
        if split != "test" or self._stage is None or self._stage.stage != row:
            return
        result = test_stage(self._stage, self.kb, data, self.features, self.sizes, self.opts)
        result["nn_distances_rms"] = [v / math.sqrt(self.kb.mus[0].numel()) for v in self.kb.nn_distances[row]]
        result["prune_d"] = prune_threshold(self.opts, self.kb.mus[0].numel(), self._mean_prior_std)
        result["fit"] = self._fit
        matrix = stack_stages([torch.tensor(r["per_task_acc"]) for r in [*self.stage_results, result]])
        result["bwt"] = standard_bwt(matrix)
        self.stage_results = [*self.stage_results, result]
        self._stage = None

    def _val_data(self) -> list[TensorData]:
        """The stored validation splits of the seen tasks (task ids 0 for the shared head)."""
        return [TensorData(x, y, torch.zeros_like(y)) for x, y in self.val_sets]

    # -- zero-shot generation ------------------------------------------------------------------------------------------
    def generate_theta(self, preference: Sequence[float] | Tensor, *,
                       mode: Literal["select", "sample", "mean"] = "select", num_samples: int | None = None,
                       seed: int | None = None, val_data: Sequence[TensorData] | None = None) -> Tensor:
        """A parameter vector (P,) for ``preference`` over tasks ``0..i`` (zero-shot; see :meth:`generate`)."""
        if self.kb.num_tasks == 0:
            raise ConfigError("IBCL.generate needs a trained knowledge base (no experience has ended)")
        w = torch.as_tensor(preference, dtype=torch.float64)
        gen = torch.Generator().manual_seed(int(self.seed if seed is None else seed))
        try:
            hdr = region(self.kb, w, self.opts, gen)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if mode == "mean":
            return hdr.mean.to(self.matrix_thetas.dtype)
        k = 1 if mode == "sample" else (num_samples or self.opts.num_samples)
        thetas = draw_models(hdr, k, self.opts, segment_lengths(self.sizes), gen).to(self.matrix_thetas.dtype)
        if mode == "sample":
            return thetas[0]
        if val_data is None:
            val_data = self._val_data()[: w.numel()]
        if len(val_data) != w.numel():
            raise ConfigError(f"mode='select' needs validation data for {w.numel()} tasks, got {len(val_data)}; "
                              "pass val_data, or use mode='mean' or 'sample'")
        acc = task_accuracies(thetas, val_data, self.features, self.sizes, batch_size=self.opts.eval_batch_size)
        return thetas[select_by_validation(acc, w)]

    def generate(self, preference: Sequence[float] | Tensor, **kwargs: Any) -> nn.Module:
        """A deterministic model for ``preference`` without training (the paper's Algorithm 2).

        ``mode="select"`` (default) samples ``num_samples`` models from the preference's HDR and keeps the best by
        preference-weighted validation accuracy; ``"sample"`` returns one draw; ``"mean"`` the HDR's centre. The
        result maps raw inputs to logits, (N, 1) for a binary head (``p(y=1) = sigmoid``), (N, C) otherwise.
        """
        from strategies.ibcl.generate import model_from_theta

        return model_from_theta(self.generate_theta(preference, **kwargs), self.sizes, self.backbone)

    # -- CL memory and results -----------------------------------------------------------------------------------------
    def memory_state(self) -> dict[str, Any]:
        return {**super().memory_state(), "kb": self.kb.state_dict()}

    def load_memory_state(self, state: dict[str, Any]) -> None:
        super().load_memory_state(state)
        self.kb = KnowledgeBase.from_state_dict(state["kb"])

    def extra_results(self, accuracy_matrix: Tensor) -> dict[str, Any]:
        from strategies.ibcl.generate import summarise

        return {"ibcl": summarise(self.stage_results, asdict(self.opts), self.kb, self.matrix_preference)}
