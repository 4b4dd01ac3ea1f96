"""Variational Continual Learning with a coreset (Nguyen, Li, Bui & Turner, ICLR 2018), single-head."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor, nn

from clkit.data import Experience, TensorData
from clkit.errors import ConfigError
from clkit.module import ContinualModule, OptimizerCallable
from clkit.optim import spec
from strategies.ibcl.bayes import BayesMLP, layer_sizes, mlp_forward, mlp_forward_local, negative_elbo

__all__ = ["VCL"]


class VCL(ContinualModule):
    """VCL: a mean-field Gaussian head whose posterior after each task is the next task's prior, plus a coreset.

    Per experience, ``coreset_size`` random training samples join the coreset and are left out of the data the
    posterior is fit on (the paper's random coreset). The *propagated* posterior ``q_t`` is fit by variational
    inference (mean NLL by the local reparameterisation trick + ``KL(q || q_{t-1}) / N``), starting at its prior.
    The *predictive* posterior is ``q_t`` refined on the whole coreset (``coreset_epochs`` epochs of the same
    objective with ``q_t`` as the prior, batch ``coreset_batch_size``); it is not propagated. The accuracy matrix
    is filled by the predictive posterior's mean model. The coreset is CL memory, like the propagated posterior.

    Settings: domain-IL with one shared head (binary tasks get one sigmoid logit); task ids are never read.

    Args:
        prior_std: Standard deviation of the task-0 prior ``N(0, s^2)``.
        hidden: Hidden widths of the head over the (frozen) features (default none: Bayesian logistic regression).
        coreset_size: Samples per experience kept in the coreset (0: plain VCL, no refinement).
        coreset_epochs: Epochs of the refinement on the coreset after each experience.
        coreset_batch_size: Batch size of the refinement.
        **kwargs: :class:`clkit.ContinualModule` arguments; ``optimizer`` (default Adam, lr 0.05) fits the
            posterior and refines it; ``backbone`` is a frozen feature extractor (default: the flattened inputs).
    """

    SUPPORTED_SCENARIOS: ClassVar[frozenset[str]] = frozenset({"domain-il"})
    prior_mu: Tensor  # (1, P): the propagated posterior of the last experience (the current prior)
    prior_sigma: Tensor
    pred_mu: Tensor  # (1, P): the predictive posterior (propagated, refined on the coreset)
    pred_sigma: Tensor
    coreset: list[list[Tensor]]  # CL memory: per experience, [x, y]
    coreset_updates: int  # CL memory: batch updates spent refining on the coreset so far

    def __init__(self, *, prior_std: float = 1.0, hidden: Sequence[int] = (), coreset_size: int = 20,
                 coreset_epochs: int = 20, coreset_batch_size: int = 32,
                 optimizer: OptimizerCallable = spec("torch.optim.Adam", lr=0.05),  # type: ignore[assignment]
                 **kwargs: Any) -> None:
        super().__init__(optimizer=optimizer, **kwargs)
        if prior_std <= 0:
            raise ConfigError(f"prior_std must be > 0, got {prior_std}")
        if coreset_size < 0 or coreset_epochs < 0 or coreset_batch_size < 1:
            raise ConfigError(f"need coreset_size >= 0, coreset_epochs >= 0, coreset_batch_size >= 1, got "
                              f"{coreset_size}, {coreset_epochs}, {coreset_batch_size}")
        self.prior_std, self.hidden = float(prior_std), [int(h) for h in hidden]
        self.coreset_size, self.coreset_epochs = int(coreset_size), int(coreset_epochs)
        self.coreset_batch_size = int(coreset_batch_size)
        self.posterior: Optional[BayesMLP] = None
        self.sizes: tuple[int, ...] = ()
        self.register_memory("coreset", [])
        self.register_memory("coreset_updates", 0)
        self.stage_predictive: list[tuple[Tensor, Tensor]] = []  # per experience, for analysis (not CL memory)
        self._train_rows: Optional[Tensor] = None
        self._n_train = 1

    # -- network ---------------------------------------------------------------------------------------------------
    def build_backbone(self, input_shape: Sequence[int]) -> nn.Module:
        return nn.Flatten()

    def build_heads(self, in_features: int, num_classes: int) -> nn.ModuleList:
        self.sizes = layer_sizes(in_features, self.hidden, 1 if num_classes == 2 else num_classes)
        self.posterior = BayesMLP(self.sizes, chains=1, generator=self.generator("init"))
        p = self.posterior.mu.shape[1]
        for name in ("prior_mu", "prior_sigma", "pred_mu", "pred_sigma"):
            self.register_buffer(name, torch.zeros(1, p))
        with torch.no_grad():
            self.prior_sigma.fill_(self.prior_std)
            self.pred_mu.copy_(self.posterior.mu)
            self.pred_sigma.fill_(self.prior_std)
        return nn.ModuleList()

    def bind(self, spec: Any) -> None:
        super().bind(spec)
        for p in self.backbone.parameters() if self.backbone is not None else []:
            p.requires_grad_(False)

    def optimizer_parameters(self) -> list[nn.Parameter]:
        assert self.posterior is not None, "call bind(spec) first"
        return [self.posterior.mu, self.posterior.rho]

    def features(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return super().features(x).flatten(1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Logits of the predictive posterior's mean model (binary: ``[0, z]``)."""
        z = mlp_forward(self.pred_mu, self.features(x), self.sizes)[0]  # (1, N, out) -> (N, out)
        return torch.cat([torch.zeros_like(z), z], dim=-1) if z.shape[-1] == 1 else z

    # -- data: the coreset is held out of the posterior's training data ----------------------------------------------
    def on_experience_start(self, experience: Experience) -> None:
        assert self.posterior is not None, "call bind(spec) first"
        n = len(experience.train)
        k = min(self.coreset_size, n - 1)
        perm = torch.randperm(n, generator=self.generator("coreset", experience.index))
        core, rest = perm[:k], perm[k:]
        x, y, _ = experience.train[core]
        self.coreset = [*self.coreset, [x.detach().cpu(), y.detach().cpu()]]
        self._train_rows, self._n_train = rest, len(rest)
        self.posterior.load_gaussians(self.prior_mu, self.prior_sigma)  # start at the prior, as the paper

    def train_data(self, experience: Experience) -> TensorData:
        rows = self._train_rows if self._train_rows is not None else torch.arange(len(experience.train))
        return experience.train.subset(rows)

    # -- objective ---------------------------------------------------------------------------------------------------
    def _loss(self, x: Tensor, y: Tensor, prior_mu: Tensor, prior_sigma: Tensor, n: int) -> Tensor:
        assert self.posterior is not None
        logits = mlp_forward_local(self.posterior.mu, self.posterior.sigma, self.features(x), self.sizes)
        return negative_elbo(logits, y, mu=self.posterior.mu, sigma=self.posterior.sigma, prior_mu=prior_mu,
                             prior_sigma=prior_sigma, n_train=n).sum()

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y, _ = batch
        loss = self._loss(x, y, self.prior_mu, self.prior_sigma, self._n_train)
        self.log_epoch_mean("train/loss", loss, len(y))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        assert self.posterior is not None
        x, y, _ = batch
        z = mlp_forward(self.posterior.mu, self.features(x), self.sizes)[0]
        pred = (z[:, 0] >= 0).long() if z.shape[-1] == 1 else z.argmax(-1)
        self.log("val/acc", (pred == y).float().mean(), prog_bar=True)

    # -- experience end: propagate, then refine on the coreset ---------------------------------------------------------
    def on_experience_end(self, experience: Experience) -> None:
        assert self.posterior is not None
        with torch.no_grad():
            self.prior_mu.copy_(self.posterior.mu)
            self.prior_sigma.copy_(self.posterior.sigma)
        self._train_rows = None
        if self.coreset_size > 0 and self.coreset_epochs > 0:
            self._refine_on_coreset(experience.index)
        with torch.no_grad():
            self.pred_mu.copy_(self.posterior.mu)
            self.pred_sigma.copy_(self.posterior.sigma)
            self.posterior.load_gaussians(self.prior_mu, self.prior_sigma)  # the propagated one stays the state
        self.stage_predictive.append((self.pred_mu[0].detach().cpu().clone(), self.pred_sigma[0].detach().cpu().clone()))

    def _refine_on_coreset(self, index: int) -> None:
        assert self.posterior is not None
        device = self.posterior.mu.device
        x = torch.cat([c[0] for c in self.coreset]).to(device)
        y = torch.cat([c[1] for c in self.coreset]).to(device)
        optimizer = self.build_optimizer(self.optimizer_parameters())
        gen = self.generator("coreset_batches", index)
        with torch.enable_grad():
            for _ in range(self.coreset_epochs):
                for rows in torch.randperm(len(y), generator=gen).split(self.coreset_batch_size):
                    optimizer.zero_grad()
                    self._loss(x[rows.to(device)], y[rows.to(device)], self.prior_mu, self.prior_sigma,
                               len(y)).backward()
                    optimizer.step()
                    self.coreset_updates = int(self.coreset_updates) + 1

    def extra_results(self, accuracy_matrix: Tensor) -> dict[str, Any]:
        return {"vcl": {"coreset_samples": sum(len(c[1]) for c in self.coreset),
                        "coreset_batch_updates": int(self.coreset_updates),
                        "predictive_sigma_mean": [float(s.mean()) for _, s in self.stage_predictive]}}
