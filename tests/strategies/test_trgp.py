"""Behaviour of the TRGP strategy on toy streams."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clkit.errors import ConfigError
from clkit.loop import StreamRun, trainer_factory
from clkit.nets import MLP
from scenarios.toy import ToySplit
from strategies.projection.gpm import GPM
from strategies.projection.nets import AlexNetGPM
from strategies.projection.trgp import TRGP, _input_side_scaling
from strategies.projection.trust_region import scaled_weight
from tests.strategies._projection_streams import ReadoutStream, run_stream
from tests.strategies.kwargs import sgd


def _trgp(**kwargs: object) -> TRGP:
    kwargs = {"optimizer": sgd(0.05), "threshold": 0.97, "seed": 0, **kwargs}
    return TRGP(backbone=MLP(hidden=[32, 32], bias=False), **kwargs)  # type: ignore[arg-type]


def test_scales_start_at_identity_and_are_stored_as_independent_clones() -> None:
    strategy = _trgp()
    at_start: list[bool] = []
    after_task_1: list[list[torch.Tensor]] = []
    start, end = strategy.on_experience_start, strategy.on_experience_end

    def on_start(exp):  # type: ignore[no-untyped-def]
        start(exp)
        weights = dict(strategy.named_parameters())
        for name, w_eff in strategy.effective_weights(exp.index).items():
            at_start.append(torch.allclose(w_eff, weights[name], atol=1e-6))  # W_eff = W at Q = I

    live_matches_exact: list[bool] = []

    def on_end(exp):  # type: ignore[no-untyped-def]
        live = strategy.effective_weights(exp.index)  # uses W B_s fixed at the experience start
        for l, (ref, sel) in enumerate(zip(strategy.projected_layers(), strategy.selection)):
            if sel:
                exact = scaled_weight(ref.weight, [strategy.task_basis(l, s).float() for s in sel],
                                      [strategy.scales[f"{l}_{s}"] for s in sel])
                live_matches_exact.append(torch.allclose(live[f"{ref.name}.weight"], exact, atol=1e-5))
        end(exp)
        if exp.index == 1:
            after_task_1.extend([q.clone() for q in qs] for qs in strategy.task_scales[1])

    strategy.on_experience_start, strategy.on_experience_end = on_start, on_end  # type: ignore[method-assign]
    run_stream(strategy, ReadoutStream("related", n_tasks=3), epochs=1)
    assert at_start and all(at_start)
    assert live_matches_exact and all(live_matches_exact)  # W B_s stayed constant under projected training
    assert len(strategy.scales) == 0  # no live scale parameters outside an experience
    params = {p.data_ptr() for p in strategy.parameters()}
    n_scaled = 0
    for task, (selection, scales) in enumerate(zip(strategy.task_selection, strategy.task_scales)):
        for layer, (sel, qs) in enumerate(zip(selection, scales)):
            for s, q in zip(sel, qs):
                k = strategy.task_basis(layer, s).shape[1]
                assert s < task and q.shape == (k, k) and q.data_ptr() not in params
                n_scaled += 1
    assert n_scaled > 0
    for stored, snapshot in zip(strategy.task_scales[1], after_task_1):  # task 2's training left them unchanged
        assert all(torch.equal(q, p) for q, p in zip(stored, snapshot))
    assert any(not torch.allclose(q, torch.eye(q.shape[0])) for qs in after_task_1 for q in qs)  # Q's did train


def test_old_task_is_evaluated_with_its_own_scales() -> None:
    strategy = _trgp()
    stream = ReadoutStream("related", n_tasks=3)
    run_stream(strategy, stream, epochs=1)
    x = stream.experiences[1].test.x[:16]
    net, head = strategy.backbone.net, strategy.heads[0]  # type: ignore[union-attr]
    weights = [net[1].weight, net[3].weight, head.weight]
    for l, (sel, qs) in enumerate(zip(strategy.task_selection[1], strategy.task_scales[1])):
        if sel:
            weights[l] = scaled_weight(weights[l], [strategy.task_basis(l, s).float() for s in sel], qs)
    h = torch.relu(torch.relu(x @ weights[0].T) @ weights[1].T)  # (16, 8) -> (16, 32) -> (16, 32)
    expected = h @ weights[2].T  # (16, 32) @ (32, C) -> (16, C)
    with torch.no_grad():
        got = strategy.eval()(x, torch.full((16,), 1))
        plain = strategy(x, torch.full((16,), 99))  # a task without stored scales: the plain weights
    assert torch.allclose(got, expected.detach(), atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-4)


def test_trgp_learns_a_related_task_better_than_gpm() -> None:
    stream = ReadoutStream("related", n_tasks=2, noise=0.7)  # 8 input features: task 0 saturates fc1's memory
    acc_trgp, m_trgp = run_stream(_trgp(optimizer=sgd(0.2)), stream, epochs=5)
    gpm = GPM(backbone=MLP(hidden=[32, 32], bias=False), optimizer=sgd(0.2), threshold=0.97, seed=0)
    acc_gpm, _ = run_stream(gpm, stream, epochs=5)
    assert acc_trgp[0, 0] == acc_gpm[0, 0]  # identical first task: the difference comes from the trust region
    assert acc_trgp[1, 1] > acc_gpm[1, 1] + 0.3  # (seeds 0-4: 0.86-0.96 against 0.11-0.14)
    assert m_trgp["bwt"] > -0.01  # and it is still forgetting-free


def test_faithful_switch() -> None:
    assert TRGP().freezes_bn and TRGP(faithful=True).freezes_bn  # row 4 is a bug of the AlexNet script only
    assert TRGP(backbone=AlexNetGPM()).freezes_bn and not TRGP(faithful=True, backbone=AlexNetGPM()).freezes_bn


def test_faithful_fixes_the_third_experience_trust_region_to_task_1() -> None:
    stream = ToySplit(n_experiences=4, classes_per_experience=2, setting="task-il", seed=0)
    runs = {}
    for faithful in (False, True):
        strategy = _trgp(faithful=faithful, eps_proj=0.0)  # every old task qualifies: top-2 by projection norm
        StreamRun(strategy, stream, trainer_factory(max_epochs=1)).run()
        runs[faithful] = strategy.task_selection
    scalable = [sel for sel in runs[False][2] if sel]
    assert scalable and all(sorted(sel) == [0, 1] for sel in scalable)  # both old tasks by default
    assert all(sel in ([1], []) for sel in runs[True][2]) and any(runs[True][2])  # official: old task 1 only
    assert all(len(sel) == 2 for sel in runs[True][3] if sel)  # other experiences select as usual


@pytest.mark.parametrize("with_products", [False, True])
def test_input_side_scaling_equals_the_scaled_weight(with_products: bool) -> None:
    """Small batches add ((x B)(Q - I)^T)(W B)^T to a Linear's output instead of building W_eff: same values and
    gradients (for Q, and for W)."""
    g = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(30, 7, bias=False)
    bases = [torch.linalg.qr(torch.randn(30, k, generator=g))[0] for k in (4, 6)]
    x = torch.randn(3, 30, generator=g)
    results = []
    for input_side in (True, False):
        layer.weight.grad = None
        w = layer.weight
        qs = [(torch.eye(k) + 0.3 * torch.randn(k, k, generator=torch.Generator().manual_seed(k))).requires_grad_(True)
              for k in (4, 6)]
        products = [w.detach() @ b for b in bases] if with_products else None
        if input_side:
            y = _input_side_scaling(bases, qs, products)(layer, (x,), F.linear(x, w))
        else:
            y = F.linear(x, scaled_weight(w, bases, qs, products))
        y.square().sum().backward()
        results.append((y.detach(), w.grad.clone(), [q.grad for q in qs]))
    (y1, gw1, gq1), (y2, gw2, gq2) = results
    torch.testing.assert_close(y1, y2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gw1, gw2, atol=1e-5, rtol=1e-5)
    for a, b in zip(gq1, gq2):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_small_and_large_batches_see_the_same_scaled_model() -> None:
    stream = ToySplit(n_experiences=3, classes_per_experience=2, setting="task-il", seed=0)
    strategy = _trgp(eps_proj=0.0)
    StreamRun(strategy, stream, trainer_factory(max_epochs=1)).run()
    strategy.eval()
    x, _, t = stream.experiences[2].test[torch.arange(16)]
    assert any(isinstance(ref.module, torch.nn.Linear) for ref, *_ in strategy.scaling_terms(2))
    with torch.no_grad():
        one_by_one = torch.cat([strategy(x[i: i + 2], t[i: i + 2]) for i in range(0, 16, 2)])  # input side
        strategy._in_scaled_call = True  # the plain W_eff route for comparison
        exact = torch.func.functional_call(strategy, strategy.effective_weights(2), (x, t))
        strategy._in_scaled_call = False
    torch.testing.assert_close(one_by_one, exact, atol=1e-5, rtol=1e-5)


def test_task_agnostic_evaluation_rules_ignore_the_task_ids() -> None:
    stream = ReadoutStream("related", n_tasks=3)
    run = StreamRun(strategy := _trgp(), stream, trainer_factory(max_epochs=1))
    result = run.run()
    assert strategy.task_aware and result.evaluation["mode"] == "task-aware"
    assert any(any(sel) for sel in strategy.task_selection)  # stored scales exist: the rules have something to ignore
    strategy.eval()
    x = stream.experiences[1].test.x[:32]
    t_own, t_other = torch.full((32,), 1), torch.full((32,), 2)
    with torch.no_grad():
        plain = strategy(x, torch.full((32,), 99)).argmax(-1)  # no stored scales for task 99: the shared weights
        per_task = torch.stack([strategy(x, torch.full((32,), s)) for s in range(3)])  # (T, N, C)
        entropy = -(per_task.log_softmax(-1) * per_task.softmax(-1)).sum(-1)  # (T, N)
        chosen = per_task[entropy.argmin(0), torch.arange(32)].argmax(-1)
        strategy.eval_scales = "identity"
        assert not strategy.task_aware
        assert torch.equal(strategy.predict(x, t_own), plain) and torch.equal(strategy.predict(x, t_other), plain)
        strategy.eval_scales = "min_entropy"
        assert not strategy.task_aware
        assert torch.equal(strategy.predict(x, t_own), chosen) and torch.equal(strategy.predict(x, t_other), chosen)
        strategy.eval_scales = "task"
        assert not torch.equal(strategy.predict(x, t_own), strategy.predict(x, t_other))  # the ids do matter here
    agnostic = StreamRun(_trgp(eval_scales="identity"), stream, trainer_factory(max_epochs=1)).run()
    assert agnostic.evaluation["mode"] == "task-agnostic" and not agnostic.evaluation["task_ids"]


def test_eval_scales_errors() -> None:
    with pytest.raises(ConfigError, match="eval_scales='nearest' is not one of 'task', 'identity', 'min_entropy'"):
        TRGP(eval_scales="nearest")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="eval_scales='identity' is for domain-IL streams"):
        TRGP(eval_scales="identity").bind(ToySplit(setting="task-il").spec)
