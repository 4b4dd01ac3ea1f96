"""Behaviour tests of the IBCL strategy on tiny binary domain-IL streams (seconds each)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from clkit.errors import ConfigError
from clkit.loop import StreamRun, trainer_factory
from clkit.module import memory_bytes
from scenarios.ibcl_toy import RotatingBinary
from scenarios.toy import ToySplit
from strategies.ibcl import IBCL
from strategies.ibcl.bayes import mlp_forward
from strategies.ibcl.cli import main as generate_main
from strategies.ibcl.credal import KnowledgeBase, combination_weights, preferences
from strategies.ibcl.evaluation import _FAITHFUL, DEFAULT_D_REL, prune_threshold, task_accuracies
from strategies.ibcl.hdr import mixture_log_prob
from strategies.ibcl.plot import non_dominated, pareto_points, plot_pareto
from tests.strategies.kwargs import adam

STDS = [1.0, 1.5, 2.0]


NO_MATRIX = torch.zeros(1, 1)  # (IBCL's results do not depend on the test matrix)


def _train(stream: RotatingBinary, epochs: int = 5, run_dir: Path | None = None, **kwargs: object) -> IBCL:
    pl.seed_everything(0, verbose=False)
    kwargs = {"optimizer": adam(0.05), "prior_stds": STDS, "num_preferences": 4, "num_samples": 5, **kwargs}
    module = IBCL(**kwargs)  # type: ignore[arg-type]
    result = StreamRun(module, stream, trainer_factory(max_epochs=epochs), run_dir=run_dir).run()
    if run_dir is not None:
        result.save(run_dir)
    return module


@pytest.fixture(scope="module")
def conflicting() -> RotatingBinary:
    """Two tasks with orthogonal decision normals: no linear model solves both."""
    return RotatingBinary(n_experiences=2, angle=90.0, seed=0)


@pytest.fixture(scope="module")
def trained(conflicting: RotatingBinary, tmp_path_factory: pytest.TempPathFactory) -> tuple[IBCL, Path]:
    run_dir = tmp_path_factory.mktemp("ibcl_run")
    return _train(conflicting, run_dir=run_dir), run_dir


def _test_acc(module: IBCL, theta: torch.Tensor, stream: RotatingBinary) -> torch.Tensor:
    return task_accuracies(theta.unsqueeze(0), [e.test for e in stream.experiences], module.features, module.sizes)[0]


def test_combination_weights_of_the_trained_knowledge_base_are_convex(trained: tuple[IBCL, Path]) -> None:
    module = trained[0]
    for w in preferences(1, 50, seed=5):
        beta = combination_weights(w, module.kb.slots, len(module.kb))
        assert (beta >= 0).all() and float(beta.sum()) == pytest.approx(1.0)


def test_one_hot_preference_reproduces_the_task_posterior_mean(trained: tuple[IBCL, Path]) -> None:
    module = trained[0]
    for task in (0, 1):
        w = [1.0 if k == task else 0.0 for k in range(2)]
        theta = module.generate_theta(w, mode="mean")
        task_mean = torch.stack([module.kb.mus[s] for s in module.kb.slots[task]]).mean(0)  # the m chains' average
        assert torch.allclose(theta, task_mean, atol=1e-6)
    single = _train(RotatingBinary(n_experiences=2, angle=90.0, seed=0), epochs=1, prior_stds=[1.0])
    assert torch.equal(single.generate_theta([0.0, 1.0], mode="mean"), single.kb.mus[1])  # m = 1: the posterior


def test_accuracy_on_a_task_rises_with_its_preference_weight(trained: tuple[IBCL, Path],
                                                               conflicting: RotatingBinary) -> None:
    module = trained[0]
    weights = [0.0, 0.25, 0.5, 0.75, 1.0]
    acc = torch.stack([_test_acc(module, module.generate_theta([w, 1 - w], mode="mean"), conflicting)
                       for w in weights])  # (5, 2): rows = weight on task 0
    assert (acc[1:, 0] - acc[:-1, 0] >= -0.02).all() and acc[-1, 0] - acc[0, 0] > 0.15, acc
    assert (acc[:-1, 1] - acc[1:, 1] >= -0.02).all() and acc[0, 1] - acc[-1, 1] > 0.15, acc
    selected = torch.stack([_test_acc(module, module.generate_theta([w, 1 - w]), conflicting) for w in (0.1, 0.9)])
    assert selected[1, 0] > selected[0, 0] + 0.1 and selected[0, 1] > selected[1, 1] + 0.1, selected


def test_pruning_is_on_by_default_and_slows_growth_on_a_repeated_task() -> None:
    """Six fresh samples of one task: the default threshold DEFAULT_D_REL * mean(s) * sqrt(P) prunes refits onto
    stored posteriors (growth per task <= m, fewer than without pruning); d = 0 stores every fit."""
    stream = RotatingBinary(n_experiences=6, angle=0.0, seed=1, train_samples=200)
    full = _train(stream, d=0.0, num_preferences=1, num_samples=2)
    pruned = _train(stream, num_preferences=1, num_samples=2)
    m, tasks, p = len(STDS), 6, full.kb.mus[0].numel()
    kb_bytes = m * tasks * 2 * p * 4  # posteriors: mean and std, float32
    assert len(full.kb) == m * tasks and full.strategy_state_bytes() == kb_bytes + memory_bytes(full.val_sets)
    curve = pruned.extra_results(NO_MATRIX)["ibcl"]["kb_size"]
    assert curve[-1] == len(pruned.kb) <= m * tasks * 2 // 3, curve
    assert all(0 <= b - a <= m for a, b in zip(curve, curve[1:])), curve
    assert pruned.stage_results[-1]["prune_d"] == pytest.approx(DEFAULT_D_REL * sum(STDS) / len(STDS) * math.sqrt(p))
    reused = [s for task, row in enumerate(pruned.kb.slots) for s in row if pruned.kb.origins[s][0] < task]
    assert reused  # later tasks point at earlier tasks' posteriors
    assert pruned.strategy_state_bytes() < full.strategy_state_bytes()


def test_default_threshold_keeps_m_per_distinct_task_for_near_duplicate_posteriors() -> None:
    """At the knowledge-base level: refits that differ by 0.03 prior stds per coordinate are pruned (m per distinct
    task over three repeats of two tasks), posteriors of tasks 0.3 prior stds apart are all kept."""
    gen = torch.Generator().manual_seed(0)
    p, s = 65, 1.5
    opts = IBCL(prior_stds=[1.0, 1.5, 2.0]).opts
    d = prune_threshold(opts, p, s)
    tasks = [torch.randn(3, p, generator=gen) * 0.3 * s for _ in range(2)]  # two tasks' m = 3 chain means
    kb = KnowledgeBase()
    for _ in range(3):
        for mu in tasks:
            noisy = mu + torch.randn(3, p, generator=gen) * 0.03 * s
            kb.update(noisy, torch.full((3, p), 0.5 * s), d=d)
    assert len(kb) == 2 * 3, kb.slots
    assert min(v for row in kb.nn_distances[:2] for v in row if v == v) > d  # distinct posteriors are never merged


def test_same_seed_gives_the_same_generated_model(trained: tuple[IBCL, Path], conflicting: RotatingBinary) -> None:
    module = trained[0]
    again = _train(conflicting)
    for mode in ("select", "sample", "mean"):
        assert torch.equal(module.generate_theta([0.3, 0.7], mode=mode), again.generate_theta([0.3, 0.7], mode=mode))
    assert not torch.equal(module.generate_theta([0.3, 0.7], mode="sample", seed=1),
                           module.generate_theta([0.3, 0.7], mode="sample", seed=2))
    assert again.extra_results(NO_MATRIX) == module.extra_results(NO_MATRIX)  # NaN-free copy of every stage's results


def test_preferences_are_saved_and_shared(trained: tuple[IBCL, Path]) -> None:
    """Each stage's preferences are the pure function of (seed, stage) every method calls."""
    module = trained[0]
    for stage, result in enumerate(module.stage_results):
        assert torch.equal(torch.tensor(result["preferences"], dtype=torch.float64),
                           preferences(stage, 4, seed=module.seed))


def test_results_json_entry(trained: tuple[IBCL, Path]) -> None:
    module = trained[0]
    res = module.extra_results(NO_MATRIX)["ibcl"]
    json.dumps(res, allow_nan=False)
    stages = res["stages"]
    assert [s["stage"] for s in stages] == [0, 1] and stages[1]["selection"] == "validation"
    a = stages[1]["per_task_acc"]
    assert res["avg_per_task_acc"][1] == pytest.approx(sum(a) / 2)
    assert res["bt_ibcl"][1] == pytest.approx(a[1] - a[0])
    assert res["bwt"][1] == pytest.approx(a[0] - stages[0]["per_task_acc"][0])
    assert all(0.0 <= v <= 1.0 for row in stages[1]["reported_test_acc"] for v in row)
    lo, hi = torch.tensor(stages[1]["sample_test_acc_min"]), torch.tensor(stages[1]["sample_test_acc_max"])
    assert (lo <= torch.tensor(stages[1]["reported_test_acc"]) + 1e-9).all()
    assert (torch.tensor(stages[1]["reported_test_acc"]) <= hi + 1e-9).all()


def test_matrix_cells_use_the_one_hot_preference_of_the_tested_task(trained: tuple[IBCL, Path],
                                                                    conflicting: RotatingBinary) -> None:
    """R[i][j] is the stage-i model for task j alone: the diagonal is the model for the newest task."""
    module, run_dir = trained
    assert module.task_aware and module.matrix_preference == "task"
    last = module.stage_results[-1]
    for task in (0, 1):
        x = conflicting.experiences[task].test.x
        z = mlp_forward(module.matrix_thetas[task].unsqueeze(0), x, module.sizes)[0, :, 0]
        assert torch.equal(module.predict(x, torch.full((len(x),), task)), (z >= 0).long())
        got = _test_acc(module, module.matrix_thetas[task], conflicting)
        assert got.tolist() == pytest.approx(last["task_models"]["test_acc"][task])
    matrix = json.loads((run_dir / "results.json").read_text())["accuracy_matrix"]
    assert [matrix[1][0], matrix[1][1]] == pytest.approx([last["task_models"]["test_acc"][0][0],
                                                          last["task_models"]["test_acc"][1][1]])
    first = module.stage_results[0]
    assert matrix[0][0] == pytest.approx(first["task_models"]["test_acc"][0][0])
    # the one-hot models trade the tasks off: each is better on its own task than the other task's model
    models = torch.tensor(last["task_models"]["test_acc"])  # (model for task j, tested on task l)
    assert models[0, 0] > models[1, 0] + 0.1 and models[1, 1] > models[0, 1] + 0.1, models


def test_uniform_matrix_mode_is_task_agnostic(conflicting: RotatingBinary) -> None:
    module = _train(RotatingBinary(n_experiences=2, angle=90.0, seed=0, train_samples=120), epochs=1,
                    matrix_preference="uniform")
    assert not module.task_aware
    assert torch.equal(module.matrix_thetas[0], module.matrix_thetas[1])
    x = conflicting.experiences[0].test.x
    assert torch.equal(module.predict(x, torch.zeros(len(x))), module.predict(x, torch.ones(len(x))))
    assert module.stage_results[-1]["uniform_model"]["preference"] == [0.5, 0.5]
    with pytest.raises(ConfigError, match="matrix_preference"):
        IBCL(matrix_preference="newest")  # type: ignore[arg-type]


def test_checkpoint_restore_and_generate_command(trained: tuple[IBCL, Path], conflicting: RotatingBinary,
                                                 tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module, run_dir = trained
    restored = IBCL.from_checkpoint(run_dir)
    assert restored.kb.slots == module.kb.slots and torch.equal(restored.matrix_thetas, module.matrix_thetas)
    assert torch.equal(restored.generate_theta([0.4, 0.6], mode="sample"),
                       module.generate_theta([0.4, 0.6], mode="sample"))
    capsys.readouterr()
    out = generate_main(["--run", str(run_dir), "--preference", "0.4", "0.6", "--mode", "mean",
                         "--out", str(tmp_path / "m.pt")])
    printed = capsys.readouterr().out
    val = task_accuracies(module.generate_theta([0.4, 0.6], mode="mean").unsqueeze(0), module._val_data(),
                          module.features, module.sizes)[0]
    assert "validation accuracy per task " + " ".join(f"{v:.4f}" for v in val.tolist()) in printed, printed
    assert "no test accuracy" in printed  # this run directory has no config.yaml to rebuild the test data from
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["val_acc"] == pytest.approx(val.tolist()) and info["test_acc"] is None
    model = torch.load(out, weights_only=False)
    x = conflicting.experiences[1].test.x
    assert torch.allclose(model(x), module.generate([0.4, 0.6], mode="mean")(x))
    assert json.loads(out.with_suffix(".json").read_text())["preference"] == [0.4, 0.6]
    # validation selection works from the checkpoint alone (IBCL keeps the validation splits it selects on)
    selected = generate_main(["--run", str(run_dir), "--preference", "0.4", "0.6", "--out", str(tmp_path / "s.pt")])
    theta = restored.generate_theta([0.4, 0.6])
    assert torch.equal(torch.load(selected, weights_only=False)(x), restored.generate([0.4, 0.6])(x))
    assert torch.equal(theta, module.generate_theta([0.4, 0.6]))
    with pytest.raises(ConfigError, match="config.yaml"):  # the Pareto plot tests on the run's scenario
        generate_main(["--run", str(run_dir), "--preference", "0.5", "0.5", "--pareto", "0", "1",
                       "--out", str(tmp_path / "p.pt")])


def test_pareto_front_trades_the_two_tasks(trained: tuple[IBCL, Path], conflicting: RotatingBinary,
                                           tmp_path: Path) -> None:
    module = trained[0]
    data = [e.test for e in conflicting.experiences]
    pts = pareto_points(module, (0, 1), data, preferences=[(0.9, 0.1), (0.1, 0.9)], n_samples=20, alpha=0.05,
                        extra=[0.3, 0.7])
    assert len(pts["samples"][0]) == 20
    (a0, _), (a1, _) = pts["mean_model"]
    assert a0 > a1 + 0.1
    (s0, _), (s1, _) = pts["selected"]  # the models IBCL returns trade the tasks off too
    assert s0 > s1 + 0.1
    every = [p for group in pts["samples"] for p in group] + pts["mean_model"] + pts["selected"] + [pts["extra"]["acc"]]
    for p in pts["front"]:  # the front: no plotted model is at least as good on both tasks and better on one
        assert not any(q[0] >= p[0] and q[1] >= p[1] and (q[0] > p[0] or q[1] > p[1]) for q in every)
    assert all(any(q[0] >= p[0] and q[1] >= p[1] for q in pts["front"]) for p in every)  # and it covers every model
    assert pts["extra"]["preference"] == [0.3, 0.7]
    path = plot_pareto(pts, tmp_path / "pareto.png")
    assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match="two different tasks"):
        pareto_points(module, (0, 0), data)


def test_non_dominated_by_hand() -> None:
    points = [[0.9, 0.1], [0.5, 0.5], [0.4, 0.4], [0.1, 0.9], [0.5, 0.5], [0.9, 0.05]]
    assert non_dominated(points) == [3, 1, 0]  # sorted by the first task; duplicates once, dominated ones out


def test_faithful_mode_switches_every_row() -> None:
    opts = IBCL(faithful=True).opts
    for name, value in _FAITHFUL.items():
        assert getattr(opts, name) == value, name
    assert opts.alpha == pytest.approx(0.99)  # official --alpha 0.01 is the interval mass
    assert IBCL().opts == dataclasses.replace(opts, **{k: getattr(IBCL().opts, k) for k in (*_FAITHFUL, "alpha")})
    mixed = IBCL(faithful=True, objective="elbo", alpha=0.1, alpha_convention="paper").opts
    assert mixed.objective == "elbo" and mixed.alpha == pytest.approx(0.1) and mixed.distance == "official"
    module = _train(RotatingBinary(n_experiences=2, angle=90.0, seed=0, train_samples=120), epochs=1,
                    faithful=True)
    assert module.posterior is not None and module.stage_results[-1]["selection"] == "test-oracle"
    assert all(len(set(row)) <= 3 for row in module.kb.slots)


def test_mixture_combination_end_to_end() -> None:
    module = _train(RotatingBinary(n_experiences=2, angle=90.0, seed=0, train_samples=120), epochs=1,
                    combine="mixture", n_hdr_samples=400, alpha=0.1)
    theta = module.generate_theta([0.5, 0.5], mode="sample")
    beta = combination_weights([0.5, 0.5], module.kb.slots, len(module.kb))
    mus, sigmas = module.kb.stacked()
    assert torch.isfinite(theta).all()
    assert float(mixture_log_prob(theta.unsqueeze(0), beta, mus, sigmas)) > float("-inf")
    assert 0.0 <= module.stage_results[-1]["avg_per_task_acc"] <= 1.0


def test_unsupported_setting_and_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="domain-il"):
        StreamRun(IBCL(), ToySplit(setting="task-il"), trainer_factory(max_epochs=1)).run()
    with pytest.raises(ConfigError, match="prior_stds"):
        IBCL(prior_stds=[0.0])
    with pytest.raises(ConfigError, match="generate needs a trained"):
        IBCL().generate_theta([1.0])


CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize(("name", "stds", "data"), [
    ("ibcl_digits", [1.0, 1.5, 2.0], "BinaryDigits"), ("ibcl_celeba", [0.2, 0.25, 0.3], "FeatureStream"),
    ("ibcl_cifar100_pairs", [2.0, 2.5, 3.0], "FeatureStream"), ("ibcl_20news", [0.2, 0.25, 0.3], "NewsgroupPairs"),
    ("ibcl_tinyimagenet_pairs", [2.0, 2.5, 3.0], "FeatureStream")])
def test_configs_parse_to_ibcl(name: str, stds: list[float], data: str) -> None:
    from clkit.cli.fit import _build_cli

    cli = _build_cli(["--config", str(CONFIGS / f"{name}.yaml")])
    assert isinstance(cli.model, IBCL) and cli.model.prior_stds == stds and cli.model.opts.alpha == 0.01
    assert type(cli.datamodule).__name__ == data


def test_digits_config_end_to_end_with_generate_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from clkit.cli.fit import run_fit

    run_dir = run_fit(["--config", str(CONFIGS / "ibcl_digits.yaml"), "--trainer.max_epochs", "1",
                       "--trainer.enable_progress_bar", "false", "--model.init_args.num_preferences", "2",
                       "--model.init_args.num_samples", "3", "--run_dir", str(tmp_path / "run")])
    results = json.loads((run_dir / "results.json").read_text())
    assert results["strategy"] == "IBCL" and len(results["ibcl"]["stages"]) == 5
    stored = results["ibcl"]["kb_size"][-1]
    assert stored <= 5 * 3 and results["ibcl"]["kb_bytes"] == stored * 2 * 65 * 4  # posteriors: mean + std, 65 params
    assert results["strategy_state_bytes"] > results["ibcl"]["kb_bytes"]  # plus the validation splits it selects on
    from clkit.cli import main as clkit_main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:  # argument errors are one line, like every clkit error
        clkit_main(["ibcl-generate", "--run", str(run_dir), "--preference", "1", "--out", "m.pt", "--mode", "bogus"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "invalid choice: 'bogus'" in err[0], err
    clkit_main(["ibcl-generate", "--run", str(run_dir), "--preference", "0.5", "0.5", "--out", str(tmp_path / "m.pt"),
                "--pareto", "0", "1"])
    model = torch.load(tmp_path / "m.pt", weights_only=False)  # selected on the rebuilt scenario's validation data
    assert model(torch.zeros(4, 1, 8, 8)).shape == (4, 1)
    printed = capsys.readouterr().out
    info = json.loads((tmp_path / "m.json").read_text())
    assert len(info["test_acc"]) == 2 and "test accuracy per task" in printed  # the config rebuilt the test data
    assert (tmp_path / "m_pareto_0_1.png").stat().st_size > 1000 and "with the preference model" in printed


def test_task_accuracies_predict_shared_inputs_once_and_correctly() -> None:
    from clkit.data import TensorData

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(100, 4, generator=gen)
    tasks = [TensorData(x, (x[:, k] > 0).long(), torch.full((100,), k)) for k in range(2)]
    copies = [TensorData(t.x.clone(), t.y, t.t) for t in tasks]
    thetas = torch.tensor([[1.0, 0, 0, 0, 0], [0, 1.0, 0, 0, 0]])  # model k reads feature k

    calls: list[int] = []

    def features(z: torch.Tensor) -> torch.Tensor:
        calls.append(len(z))
        return z

    shared = task_accuracies(thetas, tasks, features, (4, 1), batch_size=32)
    assert sum(calls) == 100  # one pass over the shared inputs
    assert torch.equal(shared, task_accuracies(thetas, copies, features, (4, 1), batch_size=32))
    assert shared.diagonal().tolist() == [1.0, 1.0] and (shared[0, 1] < 0.8)
    dropped = task_accuracies(thetas, tasks, features, (4, 1), batch_size=32, drop_last=True)
    expect = float(((x[:96, 1] > 0) == (x[:96, 0] > 0)).double().mean())
    assert float(dropped[0, 1]) == pytest.approx(expect)
