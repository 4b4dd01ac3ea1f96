"""Readers for the on-disk formats torchvision downloads, returning ``uint8`` images (N, C, H, W) and labels (N,).

They read the files directly because torchvision's CIFAR and SVHN loaders insist on the archives' md5 checksums,
and nothing here downloads. ``fetch_*`` helpers call torchvision with ``download=True`` when asked to.
"""

from __future__ import annotations

import contextlib
import gzip
import pickle
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from clkit.errors import DataError
from scenarios._files import missing_data_error, require_files

__all__ = [
    "CIFAR_FILES",
    "MNIST_FILES",
    "decode_images",
    "read_cifar",
    "read_idx",
    "read_mnist",
    "read_pickle",
    "read_svhn",
]

_IDX_DTYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

MNIST_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
}


@contextlib.contextmanager
def _intact(path: Path) -> Iterator[None]:
    """Turn a read failure of an existing file (cut short by an interrupted copy or download) into one DataError."""
    try:
        yield
    except FileNotFoundError:
        raise
    except (OSError, EOFError, ValueError, pickle.UnpicklingError, zlib.error) as err:
        detail = (str(err).splitlines() or [""])[0]
        raise DataError(f"{path} is truncated or corrupt ({type(err).__name__}: {detail}); delete it and copy or "
                        "download it again") from None


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format), plain or ``.gz``, as a numpy array.

    Raises:
        DataError: If the file is not a complete IDX file.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    with _intact(path):
        with opener(path, "rb") as f:
            raw = f.read()
        if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
            raise ValueError("not an IDX file")
        ndim = raw[3]
        dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
        dtype = np.dtype(_IDX_DTYPES[raw[2]])
        return np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim).reshape(tuple(int(d) for d in dims))


def _find_idx(folder: Path, name: str) -> Path:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(name)


def read_mnist(root: Path, folder: str, train: bool, dataset: str) -> tuple[Tensor, Tensor]:
    """MNIST-format images in ``root/<folder>/raw`` (torchvision's layout): x uint8 (N, 1, 28, 28), y (N,)."""
    raw = root / folder / "raw"
    names = MNIST_FILES[train]
    try:
        x = read_idx(_find_idx(raw, names[0]))
        y = read_idx(_find_idx(raw, names[1]))
    except FileNotFoundError:
        raise missing_data_error(dataset, raw, list(names), "Put the four IDX files (optionally .gz) there, as "
                                 "torchvision downloads them, or pass download: true.") from None
    return torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64))


def read_cifar(root: Path, which: str, train: bool, dataset: str) -> tuple[Tensor, Tensor, list[str]]:
    """CIFAR-10/100 python pickles: x uint8 (N, 3, 32, 32), y (N,), class names."""
    folder, train_files, test_files, label_key = CIFAR_FILES[which]
    files = train_files if train else test_files
    meta = "batches.meta" if which == "cifar10" else "meta"
    require_files(dataset, root, [f"{folder}/{f}" for f in [*files, meta]],
                  f"Extract the python version of {which.upper()} (https://www.cs.toronto.edu/~kriz/cifar.html) "
                  "there, or pass download: true.")
    xs, ys = [], []
    for name in files:
        batch = read_pickle(root / folder / name)
        xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[label_key], dtype=np.int64))
    names_key = b"label_names" if which == "cifar10" else b"fine_label_names"
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in read_pickle(root / folder / meta)[names_key]]
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)), names


def read_svhn(root: Path, train: bool, dataset: str) -> tuple[Tensor, Tensor]:
    """SVHN ``{train,test}_32x32.mat`` (torchvision's layout): x uint8 (N, 3, 32, 32), y (N,) with digit 0 as 0."""
    from scipy.io import loadmat

    name = "train_32x32.mat" if train else "test_32x32.mat"
    require_files(dataset, root, [name], "Download the cropped-digits .mat files from "
                  "http://ufldl.stanford.edu/housenumbers/ there, or pass download: true.")
    mat = loadmat(str(root / name))
    x = np.transpose(np.asarray(mat["X"], dtype=np.uint8), (3, 2, 0, 1))  # (32, 32, 3, N) -> (N, 3, 32, 32)
    y = np.asarray(mat["y"], dtype=np.int64).reshape(-1) % 10  # label 10 means digit 0
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)


def read_pickle(path: Path) -> Any:
    """A python pickle written by python 2 or 3 (bytes keys kept as bytes).

    Raises:
        DataError: If the file is truncated or not a pickle.
    """
    with _intact(path), open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def decode_images(paths: list[Path], size: tuple[int, int] | None = None, mode: str = "RGB") -> Tensor:
    """Decode image files into uint8 (N, C, H, W); ``size`` = (H, W) resizes (bilinear), else sizes must agree."""
    from PIL import Image

    out: list[np.ndarray] = []
    for p in paths:
        with Image.open(p) as opened:
            img = opened.convert(mode)
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
        out.append(arr[:, :, None] if arr.ndim == 2 else arr)
    if not out:
        return torch.zeros(0, 3 if mode == "RGB" else 1, *(size or (0, 0)), dtype=torch.uint8)
    return torch.from_numpy(np.ascontiguousarray(np.stack(out).transpose(0, 3, 1, 2)))  # (N, H, W, C) -> (N, C, H, W)
