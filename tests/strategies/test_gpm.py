"""Behaviour of the GPM strategy on toy and digits streams."""

from __future__ import annotations

import types
from collections.abc import Callable

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from clkit.errors import ConfigError
from clkit.loop import StreamRun, trainer_factory
from clkit.module import ContinualModule
from clkit.nets import MLP, SmallCNN
from scenarios.toy import ToySplit
from strategies.naive import Naive
from strategies.projection.cuber import CUBER
from strategies.projection.gpm import GPM
from strategies.projection.layers import PlateauDecay
from strategies.projection.trgp import TRGP
from tests.conftest import toy_stream_for
from tests.strategies._projection_streams import ImageStream, run_stream
from tests.strategies.kwargs import adam, sgd


def _watch_projection(strategy: GPM) -> list[float]:
    """After every transform_gradients of a later experience: max |G M| / max |G| over the projected layers."""
    leaks: list[float] = []
    original: Callable[[], None] = strategy.transform_gradients

    def wrapped() -> None:
        original()
        if strategy.active_task == 0:
            return
        for ref, basis in zip(strategy.projected_layers(), strategy.bases):
            g = ref.weight.grad.reshape(ref.weight.shape[0], -1).double()
            leaks.append(float((g @ basis).abs().max() / g.abs().max()))

    strategy.transform_gradients = wrapped  # type: ignore[method-assign]
    return leaks


@pytest.mark.parametrize("cls", [GPM, TRGP, CUBER], ids=lambda c: c.__name__)
@pytest.mark.parametrize("setting", ["task-il", "domain-il"])
def test_gradients_are_orthogonal_to_memory_after_transform(cls: type[GPM], setting: str) -> None:
    pl.seed_everything(0, verbose=False)
    kwargs = {"min_agreement": 1e9} if cls is CUBER else {}  # CUBER without releases must project exactly like GPM
    strategy = cls(optimizer=sgd(0.05), threshold=0.9, **kwargs)
    leaks = _watch_projection(strategy)
    run_stream(strategy, toy_stream_for(setting), epochs=1)
    assert leaks and max(leaks) < 1e-5
    assert all(b.shape[1] > 0 for b in strategy.bases)


@pytest.mark.parametrize("cls", [GPM, TRGP], ids=lambda c: c.__name__)
@pytest.mark.parametrize("optimizer", [
    {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.01, "weight_decay": 0.05}},
    {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01}},
], ids=["adamw", "sgd-decay"])
def test_any_optimizer_keeps_updates_orthogonal_to_the_memory(cls: type[GPM], optimizer: dict) -> None:
    """Adam's per-coordinate scaling and weight decay leave span(M)^perp; the step itself is projected then."""
    strategy = cls(optimizer=optimizer, threshold=0.9, seed=0)
    snapshots: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
    original = strategy.on_experience_start

    def record(exp):  # type: ignore[no-untyped-def]
        original(exp)
        snapshots.append(([r.weight.detach().clone() for r in strategy.projected_layers()],
                          [b.clone() for b in strategy.bases]))

    strategy.on_experience_start = record  # type: ignore[method-assign]
    run_stream(strategy, toy_stream_for("domain-il"), epochs=2)
    final = [r.weight.detach().clone() for r in strategy.projected_layers()]
    for i in (1, 2):  # over experience i, no weight moves inside the memory it started with
        after = snapshots[i + 1][0] if i + 1 < len(snapshots) else final
        for w0, w1, basis in zip(snapshots[i][0], after, snapshots[i][1]):
            moved = (w1 - w0).reshape(w0.shape[0], -1).double()  # (c_out, d)
            assert float(moved.norm()) > 0 and float((moved @ basis).norm()) < 1e-5 * float(moved.norm())  # float32 steps


def test_cuber_refuses_optimizers_its_guard_cannot_follow() -> None:
    with pytest.raises(ConfigError, match="CUBER needs optimizer torch.optim.SGD with weight_decay=0, got Adam"):
        CUBER(optimizer=adam(1e-3))


@pytest.fixture(scope="module")
def digits():  # type: ignore[no-untyped-def]
    from scenarios.digits import PermutedDigits

    stream = PermutedDigits(n_experiences=3, seed=0, batch_size=32)
    stream.setup()
    return stream


def test_gpm_keeps_bwt_near_zero_on_permuted_digits_where_naive_forgets(digits) -> None:  # type: ignore[no-untyped-def]
    pl.seed_everything(0, verbose=False)
    _, naive = run_stream(Naive(backbone=MLP(hidden=[100, 100], bias=False), optimizer=sgd(0.1)), digits, epochs=3)
    pl.seed_everything(0, verbose=False)
    acc, gpm = run_stream(GPM(optimizer=sgd(0.1), threshold=0.99), digits, epochs=3)
    assert naive["bwt"] < -0.15
    assert gpm["bwt"] > -0.05
    assert acc.diagonal().min() > 0.5  # it still learns every permutation


def test_configuration_errors() -> None:
    with pytest.raises(ConfigError, match="threshold"):
        GPM(threshold=[0.9, 1.2])
    with pytest.raises(ConfigError, match="bias"):
        GPM(backbone=MLP(hidden=[16], bias=True)).bind(toy_stream_for("task-il").spec)
    with pytest.raises(ConfigError, match="class-il"):
        GPM().bind(toy_stream_for("class-il").spec)
    strategy = GPM(threshold=[0.9, 0.95, 0.99], threshold_step=0.004)
    strategy.bind(toy_stream_for("domain-il").spec)  # MLP 100-100 + projected shared head: 3 layers
    assert strategy.thresholds(2) == pytest.approx([0.908, 0.958, 0.998])
    assert strategy.thresholds(10)[2] == 1.0
    with pytest.raises(ConfigError, match="3 projected layers"):
        GPM(threshold=[0.9, 0.9]).bind(toy_stream_for("domain-il").spec)
    with pytest.raises(ConfigError, match="layer_samples"):
        GPM(layer_samples=[10, 10, 10]).bind(toy_stream_for("task-il").spec)


def test_bn_affine_trains_on_first_experience_only() -> None:
    pl.seed_everything(0, verbose=False)
    backbone = nn.Sequential(nn.Linear(8, 16, bias=False), nn.BatchNorm1d(16, track_running_stats=False), nn.ReLU())
    strategy = GPM(backbone=backbone, optimizer=sgd(0.1))  # type: ignore[arg-type]
    snapshots: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = strategy.on_experience_end

    def record(exp):  # type: ignore[no-untyped-def]
        original(exp)
        snapshots.append((backbone[1].weight.detach().clone(), backbone[0].weight.detach().clone()))

    strategy.on_experience_end = record  # type: ignore[method-assign]
    run_stream(strategy, toy_stream_for("task-il"), epochs=2)
    init = torch.ones(16)
    assert not torch.equal(snapshots[0][0], init)  # trained on the first experience
    assert torch.equal(snapshots[1][0], snapshots[0][0]) and torch.equal(snapshots[2][0], snapshots[0][0])
    assert not torch.equal(snapshots[2][1], snapshots[0][1])  # while the projected layer kept learning
    assert not backbone[1].weight.requires_grad


def test_plateau_decay_schedule() -> None:
    sched = PlateauDecay(lr=0.1, patience=2, factor=10.0, lr_min=5e-4)
    w = {"w": torch.zeros(1)}
    lrs = [sched.step(loss, {"w": w["w"] + loss}) for loss in [1.0, 0.8, 0.9, 0.85, 0.7, 0.9, 0.9, 0.9, 0.9]]
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001, 0.001, 0.0001])
    assert sched.stopped and sched.best_loss == 0.7 and float(sched.best_state["w"]) == pytest.approx(0.7)


def test_early_stopping_restores_the_best_validation_state() -> None:
    pl.seed_everything(0, verbose=False)
    stream = ToySplit(n_experiences=2, classes_per_experience=2, setting="task-il", seed=0, val_fraction=0.3,
                      spread=1.5)
    strategy = GPM(optimizer=sgd(2.0), lr_patience=1, lr_factor=4.0, lr_min=0.05)
    seen: list[tuple[float, dict[str, torch.Tensor], float]] = []
    val = stream.experiences[0].val
    original_val_end, original_end = strategy.on_validation_epoch_end, strategy.on_experience_end

    def on_val_end() -> None:
        if not strategy.trainer.sanity_checking and strategy.active_task == 0:
            with torch.no_grad():
                loss = float(F.cross_entropy(strategy(val.x, val.t), val.y))
            params = {n: p.detach().clone() for n, p in strategy.named_parameters()}
            seen.append((loss, params, strategy.trainer.optimizers[0].param_groups[0]["lr"]))
        original_val_end()

    final: dict[str, torch.Tensor] = {}

    def on_end(exp):  # type: ignore[no-untyped-def]
        original_end(exp)
        if exp.index == 0:
            final.update({n: p.detach().clone() for n, p in strategy.named_parameters()})

    strategy.on_validation_epoch_end, strategy.on_experience_end = on_val_end, on_end  # type: ignore[method-assign]
    run = StreamRun(strategy, stream, trainer_factory(max_epochs=40))
    run.run()
    assert run.per_experience[0]["epochs"] < 40  # stopped once the LR fell below lr_min
    assert min(lr for *_, lr in seen) < 2.0  # the LR was decayed on a plateau
    best = min(range(len(seen)), key=lambda i: seen[i][0])
    assert best != len(seen) - 1  # the last epoch was not the best one, so restoring matters
    for name, value in final.items():
        assert torch.equal(value, seen[best][1][name]), name


def test_protocol_networks_give_the_spec_representation_shapes() -> None:
    from strategies.projection.nets import AlexNetGPM, ReducedResNet18
    from tests.strategies._projection_streams import ImageStream

    stream = ImageStream()
    exp = stream.experiences[0]
    alex = GPM(backbone=AlexNetGPM(), rep_samples=125, layer_samples=[24, 100, 100, 125, 125])
    alex.bind(stream.spec)
    reps = alex.representations(exp, torch.arange(125))
    assert [tuple(r.shape) for r in reps] == [(48, 20184), (576, 14400), (512, 2500), (1024, 125), (2048, 125)]
    resnet = TRGP(backbone=ReducedResNet18(nf=20), rep_samples=100, layer_samples=[10] * 9 + [50] * 4 + [100] * 7)
    resnet.bind(stream.spec)
    layers = resnet.projected_layers()
    assert resnet.backbone.out_features == 640 and len(layers) == 20  # type: ignore[union-attr]
    shortcuts = [i for i, ref in enumerate(layers) if not resnet.scalable(ref)]
    assert shortcuts == [7, 12, 17]  # the three strided 1x1 shortcuts: projected, never scaled
    reps = resnet.representations(exp, torch.arange(100))
    assert tuple(reps[7].shape) == (20, 10 * 16 * 16)  # 1x1 patches of the block input at stride 2
    assert tuple(reps[0].shape) == (27, 10 * 32 * 32) and tuple(reps[19].shape) == (1440, 100 * 4 * 4)


def test_faithful_projects_with_the_official_formula_even_where_the_complement_is_cheaper() -> None:
    stream = ToySplit(n_experiences=3, classes_per_experience=2, setting="task-il", seed=0)
    runs = {}
    for faithful in (False, True):
        pl.seed_everything(0, verbose=False)
        strategy = GPM(backbone=MLP(hidden=[16], bias=False), optimizer=sgd(0.05), threshold=0.999, faithful=faithful)
        StreamRun(strategy, stream, trainer_factory(max_epochs=1)).run()
        runs[faithful] = strategy
    wide = [l for l, b in enumerate(runs[False].bases) if 2 * b.shape[1] > b.shape[0]]
    assert wide and all(runs[False]._projectors[l][1] for l in wide)  # default: cheaper complement factor
    assert not any(complement for _, complement in runs[True]._projectors)  # faithful: G - (G M) M^T


def _bn_run(freeze: bool) -> tuple[torch.Tensor, list[list[torch.Tensor]], GPM]:
    pl.seed_everything(0, verbose=False)
    strategy = GPM(optimizer=sgd(0.1), threshold=1.0, rep_samples=32, seed=0)  # default backbone: SmallCNN
    if not freeze:  # the behaviour before: BN layers follow train()/eval() like every other module
        strategy.train = types.MethodType(lambda self, mode=True: ContinualModule.train(self, mode), strategy)
    stats: list[list[torch.Tensor]] = []
    end = strategy.on_experience_end

    def on_end(exp):  # type: ignore[no-untyped-def]
        end(exp)
        stats.append([m.running_mean.clone() for m in strategy.modules() if isinstance(m, nn.BatchNorm2d)])

    strategy.on_experience_end = on_end  # type: ignore[method-assign]
    acc, _ = run_stream(strategy, ImageStream(n=64, side=16, n_tasks=3, learnable=True), epochs=2)
    return acc, stats, strategy


def test_batchnorm_running_statistics_are_frozen_after_the_first_experience() -> None:
    """Each task has its own brightness: running statistics updated by later tasks would change how old tasks are
    normalised, which no projection protects. With every input direction protected (threshold 1), old tasks keep
    their accuracy exactly."""
    acc, stats, strategy = _bn_run(freeze=True)
    assert isinstance(strategy.backbone, SmallCNN) and stats and all(
        m.track_running_stats for m in strategy.modules() if isinstance(m, nn.BatchNorm2d))
    assert all(torch.equal(a, b) for a, b in zip(stats[0], stats[-1]))
    assert acc[0, 0] > 0.9 and acc[2, 0] == acc[0, 0] and acc[2, 1] == acc[1, 1]
    acc_before, stats_before, _ = _bn_run(freeze=False)
    assert not any(torch.equal(a, b) for a, b in zip(stats_before[0], stats_before[-1]))
    assert acc_before[2, 0] < acc_before[0, 0] - 0.2  # (1.00 -> 0.59)


@pytest.mark.parametrize("cls", [GPM, TRGP, CUBER], ids=lambda c: c.__name__)
def test_value_clipping_is_refused_and_norm_clipping_keeps_orthogonality(cls: type[GPM]) -> None:
    stream = toy_stream_for("domain-il")
    strategy = cls(optimizer=sgd(0.05), threshold=0.9, seed=0)
    with pytest.raises(ConfigError, match="gradient_clip_algorithm='value'.*use 'norm'"):
        StreamRun(strategy, stream, trainer_factory(gradient_clip_val=0.01, gradient_clip_algorithm="value")).run()
    kwargs = {"min_agreement": 1e9} if cls is CUBER else {}
    strategy = cls(optimizer=sgd(0.05), threshold=0.9, seed=0, **kwargs)
    norms: list[float] = []
    leaks: list[float] = []
    clip = strategy.configure_gradient_clipping

    def watched_clip(optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):  # type: ignore[no-untyped-def]
        norms.append(float(torch.cat([p.grad.flatten() for p in strategy.parameters() if p.grad is not None]).norm()))
        clip(optimizer, gradient_clip_val, gradient_clip_algorithm)
        if strategy.active_task > 0:  # the gradient the optimizer steps along, after clipping
            for ref, basis in zip(strategy.projected_layers(), strategy.bases):
                g = ref.weight.grad.reshape(ref.weight.shape[0], -1).double()
                leaks.append(float((g @ basis).abs().max() / g.abs().max()))

    strategy.configure_gradient_clipping = watched_clip  # type: ignore[method-assign]
    StreamRun(strategy, stream, trainer_factory(gradient_clip_val=0.01, gradient_clip_algorithm="norm")).run()
    assert max(norms) > 0.05  # the clipping did act
    assert leaks and max(leaks) < 1e-5
