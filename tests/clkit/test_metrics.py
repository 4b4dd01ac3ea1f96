"""Metrics on hand-computed matrices, the torchmetrics twin, and equality with Avalanche's own metrics."""

from __future__ import annotations

import pytest
import torch

from clkit.metrics import (
    AccuracyMatrix,
    average_accuracy,
    backward_transfer,
    forgetting,
    forward_transfer,
    learning_accuracy,
    max_forgetting,
    stream_metrics,
)

R = torch.tensor([[0.90, 0.20, 0.10],
                  [0.70, 0.80, 0.30],
                  [0.60, 0.75, 0.95]], dtype=torch.float64)
B = torch.tensor([0.10, 0.15, 0.25], dtype=torch.float64)


def test_hand_computed_values() -> None:
    assert average_accuracy(R).item() == pytest.approx((0.60 + 0.75 + 0.95) / 3)
    assert learning_accuracy(R).item() == pytest.approx((0.90 + 0.80 + 0.95) / 3)
    assert backward_transfer(R).item() == pytest.approx(((0.60 - 0.90) + (0.75 - 0.80)) / 2)
    assert forward_transfer(R, B).item() == pytest.approx(((0.20 - 0.15) + (0.30 - 0.25)) / 2)
    # Chaudhry et al.: best over rows l <= T-2 minus final; column 1's best (0.80) is at row 1.
    assert forgetting(R).item() == pytest.approx(((0.90 - 0.60) + (0.80 - 0.75)) / 2)


def test_forgetting_differs_from_minus_bwt_when_accuracy_peaks_later() -> None:
    peaked = torch.tensor([[0.5, 0.0], [0.9, 0.8]])  # task 0 improved after task 1: no forgetting, positive bwt
    assert backward_transfer(peaked).item() == pytest.approx(0.4)
    assert forgetting(peaked).item() == pytest.approx(0.5 - 0.9)
    three = torch.tensor([[0.5, 0.0, 0.0], [0.9, 0.8, 0.0], [0.7, 0.8, 0.6]])
    assert forgetting(three).item() == pytest.approx(((0.9 - 0.7) + (0.8 - 0.8)) / 2)
    assert backward_transfer(three).item() == pytest.approx(((0.7 - 0.5) + (0.8 - 0.8)) / 2)


def test_max_forgetting_ignores_rows_before_a_task_is_learned() -> None:
    preview = torch.tensor([[0.9, 0.7, 0.0], [0.9, 0.6, 0.0], [0.9, 0.6, 0.5]])  # R[0, 1] = 0.7 before task 1 learned
    assert max_forgetting(preview).item() == pytest.approx(0.0)  # unchanged since learned: no forgetting
    assert forgetting(preview).item() == pytest.approx((0.0 + 0.1) / 2)  # Chaudhry's formula counts the preview row
    assert max_forgetting(R).item() == pytest.approx(((0.60 - 0.90) + (0.75 - 0.80)) / 2)
    assert max_forgetting(torch.tensor([[0.4]])).item() == 0.0


def test_single_experience_and_bad_shapes() -> None:
    one = torch.tensor([[0.7]])
    assert stream_metrics(one, torch.tensor([0.1])) == {"acc": pytest.approx(0.7), "bwt": 0.0, "fwt": 0.0,
                                                        "forgetting": 0.0, "learning_acc": pytest.approx(0.7)}
    with pytest.raises(ValueError, match="square"):
        backward_transfer(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="random_init"):
        forward_transfer(R, torch.zeros(2))


def test_accuracy_matrix_metric_matches_counts() -> None:
    metric = AccuracyMatrix(3)
    gen = torch.Generator().manual_seed(0)
    expected = torch.full((3, 3), float("nan"), dtype=torch.float64)
    for i in range(3):
        for j in range(3):
            target = torch.randint(0, 4, (50,), generator=gen)
            preds = torch.where(torch.rand(50, generator=gen) < 0.3 * (j + 1), target, (target + 1) % 4)
            metric.update(preds[:20], target[:20], train_exp=i, eval_exp=j)  # two batches per cell
            metric.update(preds[20:], target[20:], train_exp=i, eval_exp=j)
            expected[i, j] = (preds == target).double().mean()
    assert torch.allclose(metric.compute(), expected)
    untouched = AccuracyMatrix(2)
    assert torch.isnan(untouched.compute()).all()


def test_avalanche_standalone_forgetting_is_minus_bwt() -> None:
    from avalanche.evaluation.functional import forgetting as av_forgetting

    per_exp = av_forgetting(R.numpy())  # (T, T): accuracy right after learning minus accuracy at time t
    assert per_exp[-1, :-1].mean() == pytest.approx(-backward_transfer(R).item())


def _avalanche_run() -> tuple[torch.Tensor, dict[str, float]]:
    """Train Avalanche's Naive on a 3-experience permuted toy stream; return its accuracy matrix and stream metrics."""
    from avalanche.benchmarks import tensors_benchmark
    from avalanche.evaluation.metrics import accuracy_metrics, bwt_metrics, forgetting_metrics
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.supervised import Naive as AvalancheNaive

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 8, generator=g)
    train, test = [], []
    for _ in range(3):
        y = torch.arange(4).repeat_interleave(40)
        x = (centres[y] + 0.8 * torch.randn(160, 8, generator=g))[:, torch.randperm(8, generator=g)]
        p = torch.randperm(160, generator=g)
        x, y = x[p], y[p]
        train.append((x[:120], y[:120]))
        test.append((x[120:], y[120:]))
    bench = tensors_benchmark(train, test, task_labels=[0, 0, 0])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True), forgetting_metrics(stream=True),
                                 bwt_metrics(stream=True), loggers=[])
    strategy = AvalancheNaive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=16,
                              train_epochs=3, eval_mb_size=64, evaluator=evaluator, device="cpu")
    acc = torch.zeros(3, 3, dtype=torch.float64)
    for i, exp in enumerate(bench.train_stream):
        strategy.train(exp)
        res = strategy.eval(bench.test_stream)
        for j in range(3):
            acc[i, j] = res[f"Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp{j:03d}"]
    return acc, res


def test_bwt_and_forgetting_equal_avalanche_on_the_same_run() -> None:
    acc, res = _avalanche_run()
    bwt = backward_transfer(acc).item()
    assert bwt < -0.01  # the run forgets, so the comparison is not 0 == 0
    assert res["StreamBWT/eval_phase/test_stream"] == pytest.approx(bwt, abs=1e-6)
    assert res["StreamForgetting/eval_phase/test_stream"] == pytest.approx(-bwt, abs=1e-6)
