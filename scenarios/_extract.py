"""Run a frozen backbone over a scenario's inputs (the engine of ``scripts/extract_features.py``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from clkit.data import ContinualDataModule, Experience, TensorData
from clkit.errors import ConfigError, DataError

__all__ = ["experiences_to_features", "load_backbone", "stream_to_features", "weights_file"]


def weights_file(name: str) -> tuple[Path, str]:
    """Where torchvision keeps the ImageNet weights of model ``name``, and the URL they come from."""
    from torchvision.models import get_model_weights

    try:
        url = get_model_weights(name).DEFAULT.url  # type: ignore[attr-defined]
    except (ValueError, KeyError, AttributeError):
        raise ConfigError(f"torchvision has no pretrained weights for backbone {name!r}") from None
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name, url


def load_backbone(name: str, weights: str, download: bool = False) -> nn.Module:
    """A frozen torchvision classifier with its last layer removed (ResNet-18 -> 512-d pooled features).

    Args:
        name: A torchvision model name, e.g. ``"resnet18"``.
        weights: ``"imagenet"`` (torchvision's default weights from its cache), ``"random"`` (untrained; for tests),
            or the path of a state-dict file.
        download: Let torchvision download the ImageNet weights when they are not cached.

    Raises:
        DataError: ImageNet weights are not on this machine (the message says where to put them).
    """
    from torchvision.models import get_model

    try:
        model = get_model(name, weights=None)
    except ValueError:
        raise ConfigError(f"unknown torchvision backbone {name!r}") from None
    if weights == "imagenet":
        path, url = weights_file(name)
        if not path.is_file() and not download:
            raise DataError(f"ImageNet weights for {name} are not on this machine: expected {path}. Download {url} "
                            f"and save it there (or set TORCH_HOME), or pass --weights /path/to/{path.name}, or "
                            "--download_weights to let torchvision fetch it. --weights random runs an untrained "
                            "backbone (tests only).")
        state = torch.hub.load_state_dict_from_url(url, progress=False) if not path.is_file() else \
            torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    elif weights != "random":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise DataError(f"weights file {path} not found")
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    for head in ("fc", "classifier", "head", "heads"):
        if hasattr(model, head):
            setattr(model, head, nn.Identity())
            break
    return model.eval().requires_grad_(False)


def _eval_transform(data: TensorData) -> Optional[Callable[[Tensor], Tensor]]:
    tf = data.transform
    plain = getattr(tf, "without_augmentation", None)
    return plain() if callable(plain) else tf


@torch.no_grad()
def _embed(batches: Any, backbone: nn.Module, transform: Optional[Callable[[Tensor], Tensor]], device: str) -> Tensor:
    out = []
    for x in batches:
        x = transform(x) if transform is not None else x.float()
        if x.dim() == 4 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grayscale (N, 1, H, W) -> (N, 3, H, W) for ImageNet backbones
        out.append(backbone(x.to(device)).flatten(1).float().cpu())  # (B, D)
    if not out:
        raise DataError("no inputs to extract features from")
    return torch.cat(out)


def _chunks(datas: list[TensorData], batch_size: int) -> Iterator[Tensor]:
    """Backbone inputs of all ``datas`` in order (eval transform applied), cut into batches of ``batch_size``.

    Small parts are packed together so a stream of many small experiences costs few forward passes.
    """
    buf: list[Tensor] = []
    for d in datas:
        tf = _eval_transform(d)
        for i in range(0, len(d), batch_size):
            x = d.x[i: i + batch_size]
            x = tf(x) if tf is not None else x.float()
            if buf and buf[0].shape[1:] != x.shape[1:]:
                yield torch.cat(buf)
                buf = []
            buf.append(x)
            while sum(len(b) for b in buf) >= batch_size:
                cat = torch.cat(buf)
                yield cat[:batch_size]
                buf = [cat[batch_size:]] if len(cat) > batch_size else []
    if buf:
        yield torch.cat(buf)


def experiences_to_features(experiences: list[Experience], backbone: nn.Module, batch_size: int = 256,
                            device: str = "cpu") -> list[Experience]:
    """The same experiences with every input replaced by its features (shared inputs are embedded once).

    Training data is embedded without augmentation.
    """
    distinct: dict[int, TensorData] = {}
    for e in experiences:
        for d in (e.train, e.val, e.test):
            if d is not None:
                distinct.setdefault(id(d.x), d)
    datas = list(distinct.values())
    feats = _embed(_chunks(datas, batch_size), backbone, None, device)  # (sum N, D)
    by_id = dict(zip(distinct, torch.split(feats, [len(d) for d in datas])))

    def by_id_part(d: TensorData) -> TensorData:
        return TensorData(by_id[id(d.x)], d.y, d.t)

    def put(d: Optional[TensorData]) -> Optional[TensorData]:
        return None if d is None else by_id_part(d)

    return [Experience(e.index, e.task_id, e.classes, by_id_part(e.train), put(e.val), by_id_part(e.test), e.name)
            for e in experiences]


def stream_to_features(scenario: ContinualDataModule, backbone: nn.Module, batch_size: int = 256,
                       device: str = "cpu", num_workers: int = 0, image_size: Optional[int] = None) -> list[Experience]:
    """Features of a scenario that streams its inputs from disk (``input_splits`` / ``experiences_from_inputs``)."""
    splits = scenario.input_splits(image_size)  # type: ignore[attr-defined]
    transform = scenario.input_transform  # type: ignore[attr-defined]
    feats = {name: _embed(DataLoader(ds, batch_size=batch_size, num_workers=num_workers), backbone, transform, device)
             for name, ds in splits.items()}
    return scenario.experiences_from_inputs(feats)  # type: ignore[attr-defined,no-any-return]
