"""iCaRL (Rebuffi et al., "iCaRL: Incremental Classifier and Representation Learning", CVPR 2017)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from clkit.data import Experience, TensorData
from clkit.errors import ConfigError
from strategies._teacher import snapshot, teacher_call
from strategies.rehearsal import Rehearsal

__all__ = ["ICaRL", "herding"]


def herding(features: Tensor, n: int) -> Tensor:
    """Indices of ``n`` rows of ``features`` (N, d) chosen greedily so that the running mean of the chosen rows
    stays closest to the mean of all rows (the paper's Algorithm 4), in the order chosen."""
    mu = features.mean(0)
    chosen: list[int] = []
    total = torch.zeros_like(mu)
    available = torch.ones(features.shape[0], dtype=torch.bool, device=features.device)
    for k in range(1, min(n, features.shape[0]) + 1):
        dist = (mu - (total + features) / k).norm(dim=1).masked_fill(~available, float("inf"))
        i = int(dist.argmin())
        chosen.append(i)
        available[i] = False
        total = total + features[i]
    return torch.tensor(chosen, dtype=torch.long)


class ICaRL(Rehearsal):
    """iCaRL: representation learning with sigmoid outputs and distillation, a herding-selected exemplar memory of
    ``buffer_size`` samples (``buffer_size / classes seen`` per class), and the nearest-mean-of-exemplars classifier.

    Training on an experience uses its data and every exemplar; the loss is the binary cross-entropy over the
    outputs of all classes seen so far, with one-hot targets for the new classes and the previous network's
    sigmoid outputs for the old ones (the paper's Algorithm 3). After training, old exemplar sets are cut to their
    first ``m`` samples and each new class gets ``m`` exemplars in herding order, on L2-normalised features; the
    class means of the exemplars' normalised features are stored. Prediction is the nearest class mean over all
    classes seen (:meth:`predict`) or over the test experience's classes (:meth:`predict_within`, the task-aware
    matrix). Class-IL only, as the paper. Differences: means use the exemplars alone (the paper adds flipped
    images, meaningless for digits); the previous network's outputs are computed on the fly from its stored copy
    rather than stored per sample beforehand (the same values).

    Args:
        buffer_size: The exemplar budget K, in samples.
        **kwargs: :class:`clkit.ContinualModule` arguments (``backbone``, ``optimizer``, ``lr_scheduler``, ``seed``).
    """

    SUPPORTED_SCENARIOS: ClassVar[frozenset[str]] = frozenset({"class-il"})
    ONLINE = False
    teacher: dict[str, Tensor]  # CL memory: the network after the previous experience
    class_means: Tensor  # CL memory: (num_classes, d) normalised exemplar means; rows of unseen classes are 0
    means_valid: Tensor  # CL memory: (num_classes,) which rows of class_means are set

    def __init__(self, **kwargs: Any) -> None:
        if kwargs.get("buffer_policy", "class_balanced") != "class_balanced":
            raise ConfigError(f"ICaRL keeps class-balanced exemplars (herding); buffer_policy="
                              f"{kwargs['buffer_policy']!r} is not supported (valid: 'class_balanced')")
        kwargs["buffer_policy"] = "class_balanced"
        super().__init__(**kwargs)
        self.register_memory("teacher", {})
        self.register_memory("class_means", torch.zeros(0))
        self.register_memory("means_valid", torch.zeros(0, dtype=torch.bool))

    def normalised_features(self, x: Tensor) -> Tensor:
        return F.normalize(self.features(x), dim=1)

    # -- training -------------------------------------------------------------------------------------------------
    def train_data(self, experience: Experience) -> TensorData:
        data = experience.train
        x, y, t = data[torch.arange(len(data))]  # as the network sees them, like the stored exemplars
        memory = self.buffer_data()
        if memory is None:
            return TensorData(x, y, t)
        return TensorData(torch.cat([x, memory.x.to(x.device)]), torch.cat([y, memory.y.to(y.device)]),
                          torch.cat([t, memory.t.to(t.device)]))

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y, t = batch
        exp = self.current_experience
        assert exp is not None and self.spec is not None
        old = [c for cs in self.spec.classes[: exp.index] for c in cs]
        seen = torch.tensor(old + list(self.spec.classes[exp.index]), device=x.device)
        logits = self(x, t)
        target = F.one_hot(y, logits.shape[1]).to(logits.dtype)
        if old and self.teacher:
            old_cols = torch.tensor(old, device=x.device)
            target[:, old_cols] = torch.sigmoid(teacher_call(self, self.teacher, x, t)[:, old_cols])
        loss = F.binary_cross_entropy_with_logits(logits[:, seen], target[:, seen])
        self.log_epoch_mean("train/loss", loss, len(y))
        return loss

    def on_experience_end(self, experience: Experience) -> None:
        was_training = self.training
        self.eval()
        with torch.no_grad():
            self.buffer_rebalance(experience, select=self._herding)
            self._update_means()
        self.train(was_training)
        self.teacher = snapshot(self)

    def _herding(self, samples: TensorData, n: int) -> Tensor:
        x, _, _ = samples[torch.arange(len(samples))]
        return herding(self.normalised_features(x.to(self.device)), n)

    def _update_means(self) -> None:
        assert self.spec is not None
        groups = self.buffer_groups()
        if not groups:
            return
        feats = {label: torch.cat([self.normalised_features(xb) for xb in self.buffer["x"][idx].split(256)])
                 for (_, label), idx in groups}
        width = next(iter(feats.values())).shape[1]
        device = self.buffer["x"].device
        means = torch.zeros(self.spec.num_classes, width, device=device)
        valid = torch.zeros(self.spec.num_classes, dtype=torch.bool, device=device)
        for label, f in feats.items():
            means[label] = F.normalize(f.mean(0), dim=0)
            valid[label] = True
        self.class_means, self.means_valid = means, valid

    # -- nearest mean of exemplars --------------------------------------------------------------------------------
    def _distances(self, x: Tensor) -> Tensor:
        """(N, C) distances of ``x``'s normalised features to every class mean; +inf for classes without one."""
        f = self.normalised_features(x)
        d = torch.cdist(f, self.class_means.to(f))  # (the means may be float32 under a float64 trainer)
        return d.masked_fill(~self.means_valid.to(x.device), float("inf"))

    def predict(self, x: Tensor, t: Tensor) -> Tensor:
        if not bool(self.means_valid.any()):  # the untrained model: no exemplars yet
            return super().predict(x, t)
        return self._distances(x).argmin(dim=1)

    def predict_within(self, x: Tensor, t: Tensor, classes: Tensor) -> Tensor:
        classes = classes.to(x.device)
        if not bool(self.means_valid.any()) or not bool(self.means_valid.to(x.device)[classes].any()):
            return super().predict_within(x, t, classes)
        d = self._distances(x)
        allowed = torch.zeros(d.shape[1], dtype=torch.bool, device=x.device)
        allowed[classes] = True
        return d.masked_fill(~allowed, float("inf")).argmin(dim=1)
