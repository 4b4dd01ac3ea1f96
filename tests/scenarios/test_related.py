"""The related-task streams (scenarios/related.py): disjoint shares, transformations, sizes, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clkit.errors import ConfigError
from scenarios import MixedRelated, RotatedSteps
from scenarios.related import rotate_images
from tests.scenarios.conftest import label_pixels


def _rows(data: torch.Tensor) -> set[bytes]:
    return {bytes(row.numpy().tobytes()) for row in data.flatten(1)}


def test_rotate_images_equals_rotating_every_image() -> None:
    from torchvision.transforms.functional import InterpolationMode, rotate

    x = torch.randint(0, 255, (4, 1, 28, 28), dtype=torch.uint8)
    for angle in (0.0, 5.0, -30.0):
        expected = torch.stack([rotate(img, angle, interpolation=InterpolationMode.NEAREST, fill=[0.0]) for img in x])
        assert torch.equal(rotate_images(x, angle), expected)


def test_rotated_steps_on_digits_disjoint_shares_and_sizes() -> None:
    stream = RotatedSteps(dataset="digits", n_experiences=4, step=10.0, seed=3, val_fraction=0.0,
                          train_sizes=[30, 200, 200, 200])
    exps = stream.experiences
    assert stream.setting == "domain-il" and not stream.task_ids_at_test
    assert [len(e.train) for e in exps] == [30, 200, 200, 200]
    assert [e.name for e in exps] == ["rotation 0", "rotation 10", "rotation 20", "rotation 30"]
    assert all(e.classes == tuple(range(10)) for e in exps)  # every share holds every class (interleaved by class)
    assert max(torch.bincount(exps[0].train.y, minlength=10).tolist()) <= 4  # 30 images: 3 per class, about
    (_, labels), _ = stream.load()
    shares = stream.shares(labels)
    assert [len(s) for s in shares] == [30, 200, 200, 200]
    assert len(torch.cat(shares).unique()) == 630  # no training image of one experience is another's
    assert _rows(exps[0].train.x) == _rows(stream.load()[0][0][shares[0]])  # experience 0 holds share 0, unrotated
    assert torch.equal(exps[2].test.x, rotate_images(exps[0].test.x, 20.0))  # one test set, rotated per experience
    assert torch.equal(exps[1].test.y, exps[0].test.y)


def test_mixed_related_alternates_rotations_and_permutations() -> None:
    stream = MixedRelated(dataset="digits", n_experiences=5, step=10.0, seed=0, val_fraction=0.1)
    exps = stream.experiences
    assert [e.name for e in exps] == ["rotation 0", "permutation 0", "rotation 10", "permutation 1", "rotation 20"]
    base = exps[0].test.x.flatten(1)
    for e in (exps[1], exps[3]):  # a pixel permutation of the same test images
        flat = e.test.x.flatten(1)
        assert torch.equal(flat.sort(dim=1).values, base.sort(dim=1).values) and not torch.equal(flat, base)
    assert not torch.equal(exps[1].test.x, exps[3].test.x)  # each permutation its own
    assert all(e.val is not None and len(e.val) > 0 for e in exps)


def test_rotated_steps_on_mnist_files(fake_root: Path) -> None:
    stream = RotatedSteps(dataset="mnist", dataset_root=str(fake_root), n_experiences=2, step=5.0, seed=0,
                          val_fraction=0.0)
    exps = stream.experiences
    assert exps[0].train.x.dtype == torch.uint8 and exps[0].train.x.shape[1:] == (1, 28, 28)
    assert len(exps[0].train) + len(exps[1].train) == 40  # the fake MNIST's 4 images per class, split evenly
    torch.testing.assert_close(exps[0].test[torch.arange(2)][0], (exps[0].test.x[:2].float() / 255 - 0.1307) / 0.3081)
    assert torch.equal(exps[0].train.y, label_pixels(exps[0].train))  # labels stay with their (unrotated) images


def test_errors(fake_root: Path) -> None:
    with pytest.raises(ConfigError, match="dataset='cifar' is not one of 'digits', 'mnist'"):
        RotatedSteps(dataset="cifar")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="needs 3 positive sizes"):
        RotatedSteps(n_experiences=3, train_sizes=[10, 10])
    with pytest.raises(ConfigError, match="ask for 4000 training images"):
        RotatedSteps(dataset="mnist", dataset_root=str(fake_root), n_experiences=2, train_sizes=[2000, 2000]).setup()
