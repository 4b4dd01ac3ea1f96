"""Behaviour of the CUBER reconstruction (docs/methods/projection.md, docs/results/projection.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import yaml

from clkit.errors import ConfigError
from clkit.nets import MLP
from strategies.projection.basis import weight_matrix
from strategies.projection.cuber import CUBER
from strategies.projection.gpm import GPM
from strategies.projection.trgp import TRGP
from strategies.projection.trust_region import orth
from tests.strategies._projection_streams import ReadoutStream, run_stream
from tests.strategies.kwargs import sgd

ROOT = Path(__file__).resolve().parents[2]
SCARCE = {"n_tasks": 3, "sizes": [24, 400, 400]}  # a data-scarce first task, then related data-rich ones


def _make(cls: type[GPM], seed: int = 0, **kwargs: Any) -> GPM:
    pl.seed_everything(seed, verbose=False)
    kwargs = {"optimizer": sgd(0.05), "threshold": 0.97, **kwargs}
    return cls(backbone=MLP(hidden=[32, 32], bias=False), seed=seed, **kwargs)


def _released_any(cuber: CUBER) -> bool:
    return any(any(layer) for task in cuber.released for layer in task)


def test_docstring_and_label_mark_the_reconstruction() -> None:
    assert (CUBER.__doc__ or "").startswith("Reconstruction of CUBER (Lin et al., NeurIPS 2022); not the authors' "
                                            "algorithm")
    assert CUBER().extra_results(torch.zeros(1, 1))["label"] == "CUBER (clkit reconstruction)"


def test_backward_transfer_when_later_tasks_are_related() -> None:
    stream = ReadoutStream("related", **SCARCE)  # trained for 3 epochs: no under-training of the later tasks
    _, m_cuber = run_stream(cuber := _make(CUBER), stream, epochs=3)
    _, m_gpm = run_stream(_make(GPM), stream, epochs=3)
    _, m_trgp = run_stream(_make(TRGP), stream, epochs=3)
    assert _released_any(cuber)  # the mechanism under test did fire
    assert m_cuber["bwt"] > max(m_gpm["bwt"], m_trgp["bwt"]) + 0.05  # +0.13 against +0.04 and +0.04
    assert m_cuber["acc"] >= m_trgp["acc"]


def test_released_updates_never_move_kept_tasks_and_stay_within_the_budget() -> None:
    cuber = _make(CUBER, seed=1, release_budget=0.05)
    stream = ReadoutStream("mixed", n_tasks=3, sizes=[60, 400, 400], features=8, seed=1)  # 0 and 2 related, 1 not
    leaks: list[float] = []
    moves: list[tuple[float, float]] = []
    original, start_hook, end_hook = cuber.transform_gradients, cuber.on_experience_start, cuber.on_experience_end
    starts: list[torch.Tensor] = []

    def watched() -> None:
        original()
        for l, (ref, release) in enumerate(zip(cuber.projected_layers(), cuber._release)):
            kept = [cuber.task_basis(l, j) for j in range(cuber.active_task) if release and j not in release.tasks]
            if kept:
                g = weight_matrix(ref.weight.grad).double()
                leaks.append(float((g @ orth(torch.cat(kept, 1))).abs().max() / g.abs().max()))

    def on_start(exp):  # type: ignore[no-untyped-def]
        start_hook(exp)
        starts[:] = [ref.weight.detach().clone() for ref in cuber.projected_layers()]

    def on_end(exp):  # type: ignore[no-untyped-def]
        for ref, w0, release in zip(cuber.projected_layers(), starts, cuber._release):
            if release is not None:
                u = release.basis.double()
                moved = float(((weight_matrix(ref.weight.detach()) - weight_matrix(w0)).double() @ u).norm())
                moves.append((moved, release.radius))
        end_hook(exp)

    cuber.transform_gradients = watched  # type: ignore[method-assign]
    cuber.on_experience_start, cuber.on_experience_end = on_start, on_end  # type: ignore[method-assign]
    run_stream(cuber, stream, epochs=3)
    assert cuber.released[2][0] == [0] and cuber.release_log[2]["related"] == [True, False]
    assert leaks and max(leaks) < 1e-5  # kept task 1's inputs never see a changed layer
    assert moves and all(moved <= radius * (1 + 1e-5) for moved, radius in moves)
    assert max(moved / radius for moved, radius in moves) > 0.99  # the bound was reached: it did bind


@pytest.mark.parametrize("mode", ["conflicting", "disjoint"])
def test_nothing_is_released_for_conflicting_labels_or_other_inputs_and_cuber_then_is_trgp(mode: str) -> None:
    stream = ReadoutStream(mode, **SCARCE, features=12)  # conflicting: every task flips the previous one's labels
    acc_cuber, _ = run_stream(cuber := _make(CUBER), stream, epochs=3)
    acc_trgp, _ = run_stream(_make(TRGP), stream, epochs=3)
    assert not _released_any(cuber)
    log = cuber.release_log[2]
    assert not any(log["related"])
    assert (max(log["agreement"]) < 0.5) if mode == "conflicting" else (max(max(o) for o in log["overlap"]) > 0.5 >
                                                                       min(min(o) for o in log["overlap"]))
    assert torch.equal(acc_cuber, acc_trgp)  # the relatedness pass draws no randomness of the training


def test_with_input_side_projection_cuber_that_releases_nothing_is_trgp_bit_for_bit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Layers wider than the batch (64 > 32) project their inputs in the backward pass. TRGP's trust-region gradient
    pass must not leave them marked for a second (idempotent, not bit-identical) projection of the first step's
    gradient: that made TRGP and a CUBER that released nothing differ by a test image or two per cell on PMNIST."""
    from strategies.projection import layers

    calls = []
    original = layers._ProjectedLinear.apply
    monkeypatch.setattr(layers._ProjectedLinear, "apply", lambda *a: calls.append(1) or original(*a))
    stream = ReadoutStream("conflicting", **SCARCE, features=12)

    def make(cls: type[GPM]) -> GPM:
        pl.seed_everything(0, verbose=False)
        return cls(backbone=MLP(hidden=[64, 64], bias=False), seed=0, optimizer=sgd(0.05), threshold=0.97)

    acc_cuber, _ = run_stream(cuber := make(CUBER), stream, epochs=3)
    trgp = make(TRGP)
    acc_trgp, _ = run_stream(trgp, stream, epochs=3)
    assert not _released_any(cuber)
    assert calls  # the input-side route was taken
    assert torch.equal(acc_cuber, acc_trgp)
    for a, b in zip(cuber.parameters(), trgp.parameters()):
        assert torch.equal(a, b)


def test_release_budget_zero_moves_nothing_in_the_released_subspace() -> None:
    stream = ReadoutStream("related", **SCARCE)
    acc_zero, _ = run_stream(zero := _make(CUBER, release_budget=0.0), stream, epochs=3)
    acc_free, _ = run_stream(free := _make(CUBER, release_budget=None), stream, epochs=3)
    assert _released_any(zero) and zero.released == free.released
    assert all(used in (None, 1.0) for task in zero.release_log[1:] for used in task["budget_used"])
    assert all(used is None for task in free.release_log[1:] for used in task["budget_used"])
    assert not torch.equal(acc_zero, acc_free)


def test_configuration_errors() -> None:
    with pytest.raises(ConfigError, match="without momentum"):
        CUBER(optimizer={"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1, "momentum": 0.9}})
    with pytest.raises(ConfigError, match="min_overlap must be in"):
        CUBER(min_overlap=1.5)
    with pytest.raises(ConfigError, match="release_budget must be"):
        CUBER(release_budget=-1.0)


def _shipped_cuber_entries() -> list[tuple[str, dict[str, Any]]]:
    """Every CUBER model of a shipped config or sweep: (where, init_args)."""
    found = []
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        model = yaml.safe_load(path.read_text()).get("model", {})
        if isinstance(model, dict) and model.get("class_path") == "strategies.CUBER":
            found.append((path.name, dict(model.get("init_args", {}))))
    for path in sorted((ROOT / "configs" / "sweeps").glob("*.yaml")):
        for i, model in enumerate(yaml.safe_load(path.read_text()).get("grid", {}).get("model", [])):
            if isinstance(model, dict) and model.get("class_path") == "strategies.CUBER":
                found.append((f"{path.name}[{i}]", dict(model.get("init_args", {}))))
    return found


@pytest.mark.parametrize(("where", "init_args"), _shipped_cuber_entries(),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_shipped_cuber_configs_are_not_trgp(where: str, init_args: dict[str, Any]) -> None:
    """A shipped CUBER config must keep CUBER's mechanism on: run its method settings (thresholds, trust region,
    relatedness, budget) and TRGP's with the same shared settings on a small related stream, compare the matrices.
    The network, per-layer sample counts, LR schedule and optimizer are the protocol's, not the method's: a small
    MLP with SGD 0.05 stands in for them."""
    network_specific = {"backbone", "layer_samples", "lr_patience", "lr_factor", "lr_min", "optimizer"}
    args = {k: v for k, v in init_args.items() if k not in network_specific}
    if isinstance(args.get("threshold"), list) and len(args["threshold"]) != 3:
        args["threshold"] = min(args["threshold"])
    cuber_only = {"min_agreement", "min_overlap", "release_budget"}
    stream = ReadoutStream("related", **SCARCE)
    acc_cuber, _ = run_stream(cuber := _make(CUBER, **args), stream, epochs=3)
    acc_trgp, _ = run_stream(_make(TRGP, **{k: v for k, v in args.items() if k not in cuber_only}), stream, epochs=3)
    assert _released_any(cuber), f"{where}: CUBER released nothing on a related stream"
    assert not torch.equal(acc_cuber, acc_trgp), f"{where}: CUBER's matrix equals TRGP's"
