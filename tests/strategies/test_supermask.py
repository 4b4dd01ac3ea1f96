"""Unit tests of the supermask building blocks: top-k/STE, initialisation, bit packing, KKT, masked layers, memory."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from clkit.data import StreamSpec
from strategies.supermask import MaskedMLP, SupSup
from strategies.supermask.inference import (
    infer_task_binary,
    infer_task_exhaustive,
    infer_task_oneshot,
    mean_entropy,
    superfluous_objective,
)
from strategies.supermask.kkt import (
    choose_sources,
    knn_accuracy,
    scores_from_masks,
    scores_from_sources,
    subset_indices,
)
from strategies.supermask.layers import MaskedConv2d, MaskedLinear
from strategies.supermask.masks import (
    count_bits,
    exclusive_bits,
    kept_count,
    layer_density,
    pack_bits,
    topk_mask,
    union_bits,
    unpack_bits,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----- top-k and straight-through estimator ---------------------------------------------------------------------------
@pytest.mark.parametrize("n,density", [(10, 0.1), (37, 0.3), (1000, 0.05), (7, 1.0), (129, 0.5), (100, 0.02)])
def test_topk_keeps_exact_count(n: int, density: float) -> None:
    scores = torch.randn(n, generator=_gen())
    expected = n - math.floor((1 - density) * n)
    assert kept_count(n, density) == expected
    mask = topk_mask(scores, density)
    assert int(mask.sum()) == expected
    kept, dropped = scores.abs()[mask.bool()], scores.abs()[~mask.bool()]
    if dropped.numel():
        assert kept.min() >= dropped.max()  # the largest |S| are the ones kept


def test_topk_ties_cannot_change_count() -> None:
    scores = torch.ones(6, 5) * torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0])  # all |S| equal
    for density in (0.1, 0.33, 0.5, 0.9):
        assert int(topk_mask(scores, density).sum()) == kept_count(30, density)


def test_density_out_of_range_is_rejected() -> None:
    with pytest.raises(ValueError, match="density"):
        kept_count(10, 0.0)
    with pytest.raises(ValueError, match="density"):
        kept_count(10, 1.5)


@pytest.mark.parametrize("layer_cls", ["linear", "conv"])
def test_ste_gradient_is_sign_times_grad_times_weight(layer_cls: str) -> None:
    if layer_cls == "linear":
        layer: nn.Module = MaskedLinear(6, 4, density=0.3, generator=_gen(1))
        x = torch.randn(5, 6, generator=_gen(2))
    else:
        layer = MaskedConv2d(3, 4, 3, density=0.3, padding=1, generator=_gen(1))
        x = torch.randn(2, 3, 5, 5, generator=_gen(2))
    layer.add_task(0, _gen(3))
    y = layer(x)
    upstream = torch.randn(y.shape, generator=_gen(4))
    (y * upstream).sum().backward()
    # dL/dW_eff computed independently, with the same effective weight as a leaf
    w_eff = (layer.weight * layer.bool_mask(0)).detach().requires_grad_(True)
    y2 = (
        torch.nn.functional.linear(x, w_eff)
        if layer_cls == "linear"
        else torch.nn.functional.conv2d(x, w_eff, padding=1)
    )
    (y2 * upstream).sum().backward()
    scores = layer.scores["0"]
    expected = torch.sign(scores.detach()) * w_eff.grad * layer.weight.detach()
    torch.testing.assert_close(scores.grad, expected)
    assert (scores.grad[~layer.bool_mask(0)] != 0).any()  # dead edges still receive gradient


def test_erdos_renyi_density() -> None:
    assert layer_density((20, 10, 3, 3), "erdos_renyi", 0.1, 2.0) == pytest.approx(2.0 * 30 / 1800)
    assert layer_density((4, 3), "erdos_renyi", 0.1, 8.0) == 0.5  # capped
    assert layer_density((4, 3), "uniform", 0.07, 8.0) == 0.07
    with pytest.raises(ValueError, match="erdos_renyi"):
        layer_density((4, 3), "er", 0.1, 1.0)  # type: ignore[arg-type]


# ----- initialisation -------------------------------------------------------------------------------------------------
def test_signed_constant_and_score_bounds() -> None:
    conv = MaskedConv2d(8, 16, 3, density=0.1, generator=_gen())
    conv.add_task(0, _gen(1))
    fan_in = 8 * 3 * 3
    torch.testing.assert_close(conv.weight.abs(), torch.full_like(conv.weight, math.sqrt(2) / math.sqrt(fan_in)))
    assert 0.4 < (conv.weight > 0).float().mean() < 0.6
    scores = conv.scores["0"]
    assert scores.abs().max() <= 1 / math.sqrt(fan_in)
    assert scores.abs().max() > 0.95 / math.sqrt(fan_in)  # the bound is actually reached, not a narrower range
    same = MaskedConv2d(8, 16, 3, density=0.1, generator=_gen())
    assert torch.equal(same.weight, conv.weight)  # the weight seed fixes W


# ----- exclusive masks, bit packing -----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (13, 5), (4, 3, 3, 3)])
def test_pack_bits_round_trip(shape: tuple[int, ...]) -> None:
    mask = torch.rand(shape, generator=_gen()) < 0.4
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(mask.numel() / 8)
    assert torch.equal(unpack_bits(packed, shape), mask)
    assert count_bits(packed) == int(mask.sum())


def test_union_and_exclusive_masks() -> None:
    masks = [torch.rand(50, generator=_gen(i)) < 0.3 for i in range(3)]
    packed = [pack_bits(m) for m in masks]
    union = union_bits(packed[:2], packed[0].numel())
    assert torch.equal(unpack_bits(union, (50,)), masks[0] | masks[1])
    excl = unpack_bits(exclusive_bits(packed[2], union), (50,))
    assert torch.equal(excl, masks[2] & ~(masks[0] | masks[1]))
    assert not (excl & unpack_bits(union, (50,))).any()  # E_t and U_t are disjoint
    assert count_bits(union_bits([], 7)) == 0


def test_layer_exclusive_mask_excludes_frozen_tasks() -> None:
    layer = MaskedLinear(20, 10, density=0.3, generator=_gen())
    for t in range(3):
        layer.add_task(t, _gen(t + 10))
        excl = layer.exclusive_mask(t)
        previous = torch.zeros_like(excl)
        for s in range(t):
            previous |= layer.bool_mask(s)
        assert torch.equal(excl, layer.bool_mask(t) & ~previous)
        layer.freeze_task(t, "bits")
    assert layer.union_count() == int((layer.bool_mask(0) | layer.bool_mask(1) | layer.bool_mask(2)).sum())


def test_mask_init_from_bits_reproduces_source_mask() -> None:
    layer = MaskedConv2d(4, 6, 3, density=0.1, generator=_gen())
    layer.add_task(0, _gen(1))
    source = layer.bool_mask(0)
    init = scores_from_masks([source], _gen(2))
    assert (init > 0).all()
    assert torch.equal(topk_mask(init, 0.1).bool(), source)
    other = torch.rand(source.shape, generator=_gen(3)) < 0.1
    two = topk_mask(scores_from_masks([source, other], _gen(4)), 0.1).bool()
    both = source & other
    assert (two | ~both).all()  # weights chosen by both sources rank first
    torch.testing.assert_close(scores_from_sources([init, 3 * init]), 2 * init)


# ----- KNN probe and source choice ------------------------------------------------------------------------------------
def _blobs(separation: float, n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    centres = torch.eye(3, 5) * separation
    return centres[labels] + torch.randn(n, 5, generator=g), labels


def test_knn_probe_separable_vs_noise() -> None:
    feats, labels = _blobs(10.0)
    assert knn_accuracy(feats, labels, k=20) > 0.95
    assert knn_accuracy(feats, labels, k=10_000) == knn_accuracy(feats, labels, k=198)  # k clamped to 198 refs
    noise, _ = _blobs(0.0, seed=1)
    assert knn_accuracy(noise, labels, k=15) < 0.5


def test_knn_ties_go_to_smallest_label_and_split_in_order() -> None:
    feats = torch.tensor([[0.0], [0.0], [0.0], [0.0], [0.0], [0.0]])
    labels = torch.tensor([2, 1, 1, 2, 0, 1])  # reference = first 3 rows (floor 0.66*6), votes 1:2, 2:1
    assert knn_accuracy(feats, labels, k=200) == pytest.approx(1 / 3)  # all queries predicted 1
    labels = torch.tensor([2, 1, 0, 2, 1, 0])  # one vote each -> label 0
    assert knn_accuracy(feats, labels, k=3) == pytest.approx(1 / 3)


def test_choose_sources_modes() -> None:
    accs = [0.2, 0.9, 0.6]
    assert choose_sources(accs, 2, "knn_best") == [1]
    assert choose_sources(accs, 2, "knn_all") == [1, 2]
    assert choose_sources(accs, 2, "knn_always") == [1]
    assert choose_sources(accs, 2, "none") == []
    below = [0.3, 0.45]
    assert choose_sources(below, 2, "knn_best") == []  # nothing beats chance: random init
    assert choose_sources(below, 2, "knn_always") == [1]
    with pytest.raises(ValueError, match="knn_best"):
        choose_sources(accs, 2, "best")  # type: ignore[arg-type]


def test_knn_separable_source_is_chosen_end_to_end() -> None:
    _, labels = _blobs(0.0)
    good = torch.eye(3, 5)[labels] * 10 + torch.randn(300, 5, generator=_gen(5))
    bad = torch.randn(300, 5, generator=_gen(6))
    accs = [knn_accuracy(bad, labels, 50), knn_accuracy(good, labels, 50), knn_accuracy(bad * 2, labels, 50)]
    assert choose_sources(accs, 3, "knn_best") == [1]


def test_subset_indices_seeded() -> None:
    a, b = subset_indices(100, 0.2, _gen(3)), subset_indices(100, 0.2, _gen(3))
    assert torch.equal(a, b) and a.numel() == 20 and a.unique().numel() == 20
    with pytest.raises(ValueError, match="data_fraction"):
        subset_indices(10, 0.0, _gen())


# ----- layers: caching, freezing, superposition, CL memory ------------------------------------------------------------
def _net(density: float = 0.2) -> SupSup:
    """A bound SupSup whose masked MLP is 6 -> 8 (task BatchNorm) -> 3 classes."""
    net = SupSup(backbone=MaskedMLP(hidden=[8]), density=density, seed=7)
    net.bind(StreamSpec("task-il", (6,), 3, ((0, 1, 2),) * 5, True))
    return net


def _out(net: SupSup, x: torch.Tensor) -> torch.Tensor:
    return net.heads[0](net.features(x))


def _train_bn(net: SupSup, task: int, x: torch.Tensor) -> None:
    net.set_task(task)
    net.train()
    with torch.no_grad():
        _out(net, x + task)  # distinct running statistics per task


def _freeze(net: SupSup, task: int, keep: str) -> None:
    for layer in net._masked():
        layer.freeze_task(task, keep)  # type: ignore[arg-type]


def test_eval_cache_follows_score_updates_and_freeze_keeps_outputs() -> None:
    net, x = _net(), torch.randn(16, 6, generator=_gen(1))
    net.add_task(0)
    _train_bn(net, 0, x)
    net.eval()
    before = _out(net, x)
    first = net._masked()[0]
    with torch.no_grad():
        first.scores["0"].mul_(torch.rand(6, generator=_gen(3)))  # in-place change -> new mask
    changed = _out(net, x)
    net.train()
    assert torch.equal(_out(net.eval(), x), changed) and not torch.equal(changed, before)
    net.freeze_task(0)
    assert len(first.scores) == 0 and 0 in first.masks
    assert torch.equal(_out(net, x), changed)


def test_superposition_one_hot_matches_task_and_mixture_bn() -> None:
    net, x = _net(), torch.randn(16, 6, generator=_gen(1))
    for t in range(3):
        net.add_task(t)
        _train_bn(net, t, x)
        _freeze(net, t, "float" if t == 1 else "bits")
    net.eval()
    net.set_task(1)
    expected = _out(net, x)
    with net.superposed([0, 1, 2], torch.tensor([0.0, 1.0, 0.0]), "mixture"):
        torch.testing.assert_close(_out(net, x), expected)
    with net.superposed([0, 1, 2], torch.tensor([0.0, 1.0, 0.0]), "batch"):
        assert not torch.allclose(_out(net, x), expected)  # batch statistics differ from task 1's running ones
    assert torch.equal(_out(net, x), expected)  # superposition switched off again
    first = net._masked()[0]
    assert torch.equal(first.real_scores(1), first.kept_scores.get(1))
    with pytest.raises(KeyError):
        first.real_scores(0)


def test_memory_round_trip_restores_outputs() -> None:
    net, x = _net(), torch.randn(16, 6, generator=_gen(1))
    for t in range(2):
        net.add_task(t)
        _train_bn(net, t, x)
    _freeze(net, 0, "float")
    _freeze(net, 1, "bits")
    fresh = _net()
    fresh.load_memory_state(net.memory_state())  # lazily created masks, kept scores, task BatchNorms come back
    fresh.load_state_dict(net.state_dict())
    assert fresh.strategy_state_bytes() == net.strategy_state_bytes() > 0
    for t in range(2):
        assert torch.equal(fresh.eval().task_logits(x, t), net.eval().task_logits(x, t))


def test_unknown_task_raises_in_training_and_previews_initial_mask_in_eval() -> None:
    net, x = _net(), torch.randn(4, 6, generator=_gen(1))
    net.add_task(0)
    net.set_task(4)
    with pytest.raises(KeyError, match="task 4"):
        _out(net.train(), x)
    preview = _out(net.eval(), x)  # scores of task 4 are not allocated, only previewed
    assert "4" not in net._masked()[0].scores
    net.add_task(4)
    net.eval()
    torch.testing.assert_close(_out(net, x), preview)  # same initial mask as the real scores


# ----- one-shot task inference (pure) ---------------------------------------------------------------------------------
def test_oneshot_and_binary_pick_lowest_entropy_direction() -> None:
    g = _gen(0)
    per_task = {t: torch.randn(8, 5, generator=g) * 0.1 for t in range(6)}
    per_task[3] = torch.eye(5)[torch.arange(8) % 5] * 8.0  # the confident task

    def forward(alpha: torch.Tensor, tasks: list[int]) -> torch.Tensor:
        return sum(a * per_task[t] for a, t in zip(alpha, tasks))  # type: ignore[return-value]

    assert infer_task_oneshot(forward, [0, 1, 2, 3, 4, 5]) == 3
    assert infer_task_binary(forward, [0, 1, 2, 3, 4, 5]) == 3
    assert infer_task_oneshot(forward, [0, 1, 2]) in (0, 1, 2)  # only learned tasks are candidates
    uniform = torch.zeros(4, 5)
    assert mean_entropy(uniform) == pytest.approx(math.log(5))


def test_exhaustive_inference_picks_the_lowest_normalised_entropy() -> None:
    confident = torch.tensor([[8.0, 0.0], [0.0, 8.0]])  # 2 classes, nearly certain
    unsure = torch.zeros(2, 2)  # maximal entropy
    wide = torch.tensor([[9.0, 0.0, 0.0, 0.0], [0.0, 9.0, 0.0, 0.0]])  # 4 classes, more certain still once normalised
    logits = {0: unsure, 3: confident, 5: unsure}
    assert infer_task_exhaustive(logits.__getitem__, [0, 3, 5]) == 3
    assert infer_task_exhaustive({**logits, 5: wide}.__getitem__, [0, 3, 5]) == 5  # entropy / log C compares widths
    assert float(mean_entropy(wide)) / math.log(4) < float(mean_entropy(confident)) / math.log(2)
    with pytest.raises(ValueError, match="at least one"):
        infer_task_exhaustive(logits.__getitem__, [])


def test_superfluous_objective_flows_through_the_superfluous_outputs_only() -> None:
    logits = torch.randn(4, 5, generator=_gen(), requires_grad=True)
    value = superfluous_objective(2)(logits)
    torch.testing.assert_close(value, logits.logsumexp(dim=1).mean())
    (grad,) = torch.autograd.grad(value, logits)
    assert not grad[:, :2].any() and (grad[:, 2:] > 0).all()


@pytest.mark.parametrize("density", [0.02, 0.3, 0.9])
def test_per_row_topk_keeps_the_count_of_every_row(density: float) -> None:
    scores = torch.randn(10, 100, generator=_gen())
    scores[3] *= 100.0  # one row dominates: a whole-layer top-k would give it most of the budget
    mask = topk_mask(scores, density, per_row=True)
    assert mask.sum(dim=1).tolist() == [kept_count(100, density)] * 10
    for row, kept in zip(scores.abs(), mask.bool()):
        if (~kept).any():
            assert row[kept].min() >= row[~kept].max()
    whole = topk_mask(scores, density)
    assert int(whole.sum()) == kept_count(1000, density) and int(whole[3].sum()) > kept_count(100, density)


def test_per_row_head_leaves_no_class_without_weights() -> None:
    spec = StreamSpec("task-il", (784,), 10, tuple(tuple(range(10)) for _ in range(2)), True, "toy", 64)
    strategy = SupSup(density=0.02, per_row="head", backbone=MaskedMLP(hidden=[300, 100], norm=False))
    strategy.bind(spec)
    strategy.add_task(0)
    head, first = strategy.heads[0], strategy._masked()[0]
    assert head.per_row and not first.per_row
    assert head.bool_mask(0).sum(dim=1).tolist() == [2] * 10  # kept_count(100, 0.02) for every class
    assert int(first.bool_mask(0).sum()) == kept_count(784 * 300, 0.02)
