"""Binary digit-pair tasks over 512-d PCA features of a small real MNIST (IBCL's feature protocol, offline).

    python scripts/mnist_pairs_features.py --root /work/data/mnist5k --out features/mnist5k_pairs_pca512.pt
    clkit fit --config configs/ibcl_mnist_pairs.yaml

What it writes: 5 domain-IL tasks, digit ``a`` (label 0) vs digit ``b`` (label 1) for the pairs (0, 1), (2, 3), (4, 5),
(6, 7), (8, 9). The split is the official code's per-class one: per class, the first ``--train_per_class`` (320)
training images (in file order) train, the remaining ones validate; every test image of the class tests. The
features are the projections on the first ``--components`` (512) principal components of the pixels (in [0, 1]),
fitted on the training part of all ten classes only (never on validation or test images), then multiplied by
``--scale`` (default 1).

``--layout clkit`` (default) writes one feature file (``scenarios.features.FeatureStream``); ``--layout official``
writes the official code's per-class layout instead, ``<out>/<prefix>_{train,test}_<class>.npz`` with arrays
``features`` (N, D) and ``labels`` (N,) (train files hold the training then the validation images, in order), which
``scenarios.features.PerClassFeatures`` reads back into the same stream.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

import numpy as np
import torch

PAIRS = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))


def load_pixels(root: Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """MNIST files under ``root/MNIST/raw`` as ``((x_train (N, 784) float64 in [0, 1], y_train), (x_test, y_test))``."""
    from scenarios.mnist import load_mnist

    (xtr, ytr), (xte, yte) = load_mnist(Path(root).expanduser(), download=False)
    return ((xtr.reshape(len(xtr), -1).double().numpy() / 255.0, ytr.numpy()),
            (xte.reshape(len(xte), -1).double().numpy() / 255.0, yte.numpy()))


def per_class_split(y: np.ndarray, train_per_class: int) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Row indices per class: the first ``train_per_class`` (file order) train, the rest validate."""
    train, val = {}, {}
    for c in range(10):
        rows = np.flatnonzero(y == c)
        if len(rows) <= train_per_class:
            raise SystemExit(f"mnist_pairs_features: class {c} has {len(rows)} training images, need more than "
                             f"--train_per_class {train_per_class}")
        train[c], val[c] = rows[:train_per_class], rows[train_per_class:]
    return train, val


def fit_pca(x: np.ndarray, components: int) -> tuple[np.ndarray, np.ndarray]:
    """``(mean (D,), basis (D, k))`` of the top ``components`` principal directions of ``x`` (sign-fixed SVD)."""
    if not 1 <= components <= min(x.shape):
        raise SystemExit(f"mnist_pairs_features: --components must be in 1..{min(x.shape)}, got {components}")
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    basis = vt[:components].T  # (D, k)
    signs = np.sign(basis[np.abs(basis).argmax(0), np.arange(components)])  # deterministic orientation
    return mean, basis * signs


def build(root: Path, *, train_per_class: int = 320, components: int = 512,
          scale: float = 1.0) -> dict[str, dict[int, tuple[np.ndarray, np.ndarray]]]:
    """Per part (``train``/``val``/``test``) and class: ``(features (N, k) float32, labels (N,))``."""
    (xtr, ytr), (xte, yte) = load_pixels(root)
    train, val = per_class_split(ytr, train_per_class)
    mean, basis = fit_pca(xtr[np.concatenate([train[c] for c in range(10)])], components)

    def project(x: np.ndarray) -> np.ndarray:
        return ((x - mean) @ basis * scale).astype(np.float32)

    out: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {"train": {}, "val": {}, "test": {}}
    for c in range(10):
        test_rows = np.flatnonzero(yte == c)
        for part, x, rows in (("train", xtr, train[c]), ("val", xtr, val[c]), ("test", xte, test_rows)):
            out[part][c] = (project(x[rows]), np.full(len(rows), c, dtype=np.int64))
    return out


def _pair_part(parts: dict[int, tuple[np.ndarray, np.ndarray]], a: int, b: int) -> dict[str, torch.Tensor]:
    x = np.concatenate([parts[a][0], parts[b][0]])
    y = np.concatenate([np.zeros(len(parts[a][0])), np.ones(len(parts[b][0]))]).astype(np.int64)
    return {"x": torch.from_numpy(x), "y": torch.from_numpy(y)}


def write_clkit(features: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]], out: Path,
                meta: dict[str, object]) -> Path:
    from clkit.data import Experience, TensorData
    from scenarios.features import save_feature_file

    exps = []
    for i, (a, b) in enumerate(PAIRS):
        parts = {p: _pair_part(features[p], a, b) for p in ("train", "val", "test")}
        data = {p: TensorData(v["x"], v["y"], torch.full_like(v["y"], i)) for p, v in parts.items()}
        exps.append(Experience(i, i, (0, 1), data["train"], data["val"], data["test"], f"{a} vs {b}"))
    return save_feature_file(out, exps, setting="domain-il", task_ids_at_test=False,
                             class_names=[str(c) for c in range(10)], meta=meta)


def write_official(features: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]], out: Path, prefix: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for c in range(10):
        (xt, yt), (xv, yv), (xs, ys) = features["train"][c], features["val"][c], features["test"][c]
        np.savez(out / f"{prefix}_train_{c}.npz", features=np.concatenate([xt, xv]), labels=np.concatenate([yt, yv]))
        np.savez(out / f"{prefix}_test_{c}.npz", features=xs, labels=ys)
    return out


def main(argv: Optional[list[str]] = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, default=Path("/work/data/mnist5k"), help="MNIST files under ROOT/MNIST/raw")
    p.add_argument("--out", type=Path, required=True, help="feature file (.pt/.npz), or a folder for --layout official")
    p.add_argument("--layout", choices=("clkit", "official"), default="clkit")
    p.add_argument("--prefix", default="mnist", help="file prefix of --layout official")
    p.add_argument("--train_per_class", type=int, default=320)
    p.add_argument("--components", type=int, default=512)
    p.add_argument("--scale", type=float, default=1.0)
    args = p.parse_args(argv)
    features = build(args.root, train_per_class=args.train_per_class, components=args.components, scale=args.scale)
    if args.layout == "official":
        path = write_official(features, args.out, args.prefix)
    else:
        meta = {"source": "MNIST PCA", "root": str(args.root), "train_per_class": args.train_per_class,
                "components": args.components, "scale": args.scale, "pairs": [list(q) for q in PAIRS]}
        path = write_clkit(features, args.out, meta)
    sizes = {part: sum(len(v[1]) for v in features[part].values()) for part in features}
    print(f"mnist_pairs_features: {len(PAIRS)} pair tasks, {args.components}-d PCA, images {sizes} -> {path}")
    return path


if __name__ == "__main__":
    main()
