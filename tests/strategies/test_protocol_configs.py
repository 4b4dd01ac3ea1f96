"""Every strategy config under configs/ builds its strategy and scenario; paper protocols carry their published values.

Building reads no data (scenarios load files when the stream is first used), so the protocol configs are checked
here without CIFAR, 5-Datasets or miniImageNet on disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from clkit.cli.fit import _build_cli
from clkit.optim import probe
from strategies.projection.nets import ReducedResNet18

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
RESNET_SAMPLES = [10] * 9 + [50] * 4 + [100] * 7  # 17 main convs + 3 shortcuts in order

# the protocol tables of docs/methods/projection.md: (data class, threshold, lr, lr_factor, lr_patience, lr_min, epochs, seed, passes)
PROJECTION: dict[str, tuple[Any, ...]] = {
    "pmnist": ("PermutedMNIST", [0.95, 0.99, 0.99], 0.01, None, None, None, 5, 2, 1),
    "cifar100": ("SplitCIFAR100", 0.97, 0.01, 2.0, 6, 1e-5, 200, 1, 10),
    "5datasets": ("FiveDatasets", 0.965, 0.1, 3.0, 5, 1e-3, 100, 37, 5),
    "miniimagenet": ("SplitMiniImageNet", 0.985, 0.1, 3.0, 5, 1e-3, 200, 37, 5),
}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_builds_its_strategy_and_scenario(path: Path) -> None:
    cli = _build_cli(["--config", str(path)])
    assert cli.model.__class__.__name__.lower() == path.stem.split("_")[0].replace("quickstart", "naive")
    assert cli.datamodule is not None and cli.trainer.max_epochs >= 1


@pytest.mark.parametrize("method", ["gpm", "trgp", "cuber"])
@pytest.mark.parametrize("bench", sorted(PROJECTION))
def test_projection_protocol_configs_follow_the_spec(method: str, bench: str) -> None:
    data, threshold, lr, factor, patience, lr_min, epochs, seed, passes = PROJECTION[bench]
    cli = _build_cli(["--config", str(CONFIGS[0].parent / f"{method}_{bench}.yaml")])
    hp, dm = cli.model, cli.datamodule
    assert type(dm).__name__ == data and dm.batch_size == (10 if bench == "pmnist" else 64)
    assert dm.val_split == ("first" if bench == "pmnist" else "random")
    assert hp.threshold == threshold and hp.lr == lr and cli.config.test_passes == passes
    assert cli.config.seed_everything == seed
    optimizer = probe(hp.optimizer_factory)
    assert type(optimizer) is torch.optim.SGD and optimizer.defaults["momentum"] == 0.0
    assert cli.trainer.max_epochs == epochs
    if factor is not None:
        assert (hp.lr_factor, hp.lr_patience, hp.lr_min) == (factor, patience, lr_min)
    if method != "gpm":
        assert hp.eps_proj == (0.2 if bench == "pmnist" else 0.5) and hp.top_k == 2
        assert hp.trust_samples == {"pmnist": 300, "cifar100": 125}.get(bench, 500)
    if bench in ("5datasets", "miniimagenet"):
        backbone = cli.model.backbone
        assert isinstance(backbone, ReducedResNet18) and backbone.nf == 20
        assert backbone.first_stride == (2 if bench == "miniimagenet" else 1)  # 1440-d vs 640-d features
        assert hp.layer_samples == RESNET_SAMPLES


@pytest.mark.parametrize("path", sorted((CONFIGS[0].parent / "sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_sweep_configs_plan_distinct_runs_of_buildable_configs(path: Path, tmp_path: Path) -> None:
    import yaml

    from clkit.cli.sweep import load_sweep, plan

    runs = plan(load_sweep(path))[0]
    assert len(runs) >= 2 and len({r.run_id for r in runs}) == len(runs)
    for name in sorted({r.run_id.split("-", 1)[0] for r in runs}):  # one config per strategy builds
        config = next(r.config for r in runs if r.run_id.startswith(name + "-"))
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
        cli = _build_cli(["--config", str(tmp_path / f"{name}.yaml")])
        assert type(cli.model).__name__ == name
