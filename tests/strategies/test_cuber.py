"""Behaviour of the CUBER reconstruction (docs/methods/projection.md)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from clkit.nets import MLP
from strategies.projection.cuber import CUBER
from strategies.projection.gpm import GPM
from strategies.projection.trust_region import orth
from tests.strategies._projection_streams import ReadoutStream, run_stream
from tests.strategies.kwargs import sgd


def _make(cls: type[GPM], **kwargs: object) -> GPM:
    pl.seed_everything(0, verbose=False)
    return cls(backbone=MLP(hidden=[32, 32], bias=False), optimizer=sgd(0.05), threshold=0.97, **kwargs)  # type: ignore[arg-type]


def test_docstring_and_label_mark_the_reconstruction() -> None:
    assert (CUBER.__doc__ or "").startswith("Reconstruction of CUBER (Lin et al., NeurIPS 2022); not the authors' "
                                            "algorithm")
    assert CUBER().extra_results(torch.zeros(1, 1))["label"] == "CUBER (clkit reconstruction)"


def test_positive_backward_transfer_on_shared_structure() -> None:
    stream = ReadoutStream("related", n_tasks=3, noise=0.2)  # under-trained tasks that share one read-out
    _, m_cuber = run_stream(cuber := _make(CUBER), stream, epochs=1)
    _, m_gpm = run_stream(_make(GPM), stream, epochs=1)
    assert any(any(task) for task in cuber.released)  # the mechanism under test did fire
    assert m_cuber["bwt"] > 0.03
    assert m_cuber["bwt"] > m_gpm["bwt"] + 0.03


def test_released_updates_never_move_kept_tasks() -> None:
    cuber = _make(CUBER, top_k=1)  # one candidate per layer: at task 2 one old task is released, the other kept
    leaks: list[float] = []
    original = cuber.transform_gradients

    def watched() -> None:
        original()
        for l, (ref, release) in enumerate(zip(cuber.projected_layers(), cuber._release)):
            kept = [cuber.task_basis(l, j) for j in range(cuber.active_task) if release and j not in release.tasks]
            if kept:
                g = ref.weight.grad.reshape(ref.weight.shape[0], -1).double()
                leaks.append(float((g @ orth(torch.cat(kept, 1))).abs().max() / g.abs().max()))

    cuber.transform_gradients = watched  # type: ignore[method-assign]
    run_stream(cuber, ReadoutStream("related", n_tasks=3, noise=0.2), epochs=1)
    assert leaks and max(leaks) < 1e-5


def test_no_release_and_no_extra_forgetting_on_conflicting_tasks() -> None:
    stream = ReadoutStream("conflicting", n_tasks=3)  # every task flips the previous task's labels
    _, m_cuber = run_stream(cuber := _make(CUBER), stream, epochs=1)
    _, m_gpm = run_stream(_make(GPM), stream, epochs=1)
    assert not any(any(layer) for task in cuber.released for layer in task)
    # 0.005 = two test samples of 400: the trajectory difference between TRGP scaling and plain GPM
    assert m_cuber["forgetting"] <= m_gpm["forgetting"] + 0.005
    assert m_cuber["bwt"] >= m_gpm["bwt"] - 0.005
