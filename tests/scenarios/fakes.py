"""Tiny fake data sets in the on-disk formats torchvision / Avalanche / scikit-learn use (no network).

Every fake image encodes its original class id in its top-left pixel (channel 0), so tests can check that labels
still match images after splitting, relabelling and reordering: ``classes[y] == x[..., 0, 0, 0]``.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path
from typing import Optional

import numpy as np

CIFAR100_NAMES = [f"class{i:03d}" for i in range(100)]


def images(labels: np.ndarray, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """uint8 noise images of ``shape`` (C, H, W) whose pixel [0, 0, 0] is the label."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(len(labels), *shape), dtype=np.uint8)
    x[:, 0, 0, 0] = labels
    return x


def balanced_labels(n_classes: int, per_class: int) -> np.ndarray:
    return np.tile(np.arange(n_classes), per_class).astype(np.int64)  # interleaved, like real files


def _idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">i", d) for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def write_mnist(root: Path, per_class: int = 3, test_per_class: int = 2, folder: str = "MNIST",
                gz: bool = False, seed: int = 0) -> None:
    """``root/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` with 10 classes."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", per_class), ("t10k", test_per_class)):
        y = balanced_labels(10, n)
        x = images(y, (1, 28, 28), seed + len(prefix))[:, 0]  # (N, 28, 28)
        _idx(raw / f"{prefix}-images-idx3-ubyte", x, gz)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", y.astype(np.uint8), gz)


def write_cifar(root: Path, which: str = "cifar100", per_class: int = 2, test_per_class: int = 1,
                seed: int = 0) -> None:
    """CIFAR python pickles: ``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` or
    ``cifar-100-python/{train,test,meta}``."""
    n_classes = 10 if which == "cifar10" else 100
    folder = root / ("cifar-10-batches-py" if which == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)
    key = b"labels" if which == "cifar10" else b"fine_labels"
    y = balanced_labels(n_classes, per_class)
    x = images(y, (3, 32, 32), seed).reshape(len(y), -1)
    yt = balanced_labels(n_classes, test_per_class)
    xt = images(yt, (3, 32, 32), seed + 1).reshape(len(yt), -1)
    if which == "cifar10":
        for i, part in enumerate(np.array_split(np.arange(len(y)), 5), start=1):
            _pickle(folder / f"data_batch_{i}", {b"data": x[part], key: y[part].tolist()})
        _pickle(folder / "test_batch", {b"data": xt, key: yt.tolist()})
        _pickle(folder / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    else:
        _pickle(folder / "train", {b"data": x, key: y.tolist()})
        _pickle(folder / "test", {b"data": xt, key: yt.tolist()})
        _pickle(folder / "meta", {b"fine_label_names": [n.encode() for n in CIFAR100_NAMES]})


def _pickle(path: Path, obj: object) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def write_svhn(root: Path, per_class: int = 2, test_per_class: int = 1, seed: int = 0) -> None:
    """``root/{train,test}_32x32.mat`` (X: 32×32×3×N, y: N×1 with 10 for digit 0)."""
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", per_class), ("test", test_per_class)):
        y = balanced_labels(10, n)
        x = images(y, (3, 32, 32), seed + n)  # (N, 3, 32, 32)
        savemat(str(root / f"{name}_32x32.mat"),
                {"X": np.transpose(x, (2, 3, 1, 0)), "y": np.where(y == 0, 10, y).reshape(-1, 1).astype(np.uint8)})


def write_png(path: Path, arr: np.ndarray) -> None:
    """Save a (C, H, W) uint8 array as PNG (lossless, so the label pixel survives)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    img = arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0))
    Image.fromarray(np.ascontiguousarray(img)).save(path, format="PNG")  # PNG even under a .JPEG name


def write_notmnist_folders(root: Path, per_class: int = 3, size: int = 28, seed: int = 0,
                           corrupt: Optional[str] = "A/broken.png") -> None:
    """``root/{A..J}/*.png`` grayscale letters (the notMNIST_small layout), plus one unreadable file."""
    y = balanced_labels(10, per_class)
    x = images(y, (1, size, size), seed)
    for i, (img, label) in enumerate(zip(x, y)):
        write_png(root / "ABCDEFGHIJ"[label] / f"img{i}.png", img)
    if corrupt:
        (root / corrupt).write_bytes(b"not an image")


def write_tinyimagenet(root: Path, per_class: int = 2, val_per_class: int = 1, size: int = 64,
                       seed: int = 0) -> list[str]:
    """``root/tiny-imagenet-200/`` with 200 fake WordNet ids; images are PNG data under ``.JPEG`` names (lossless).

    Returns the wnids in ``wnids.txt`` order (class id = position).
    """
    base = root / "tiny-imagenet-200"
    wnids = [f"n{90000000 - 7 * i:08d}" for i in range(200)]  # deliberately not sorted
    (base / "val" / "images").mkdir(parents=True, exist_ok=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    x = images(balanced_labels(200, per_class), (3, size, size), seed)
    for i, (img, label) in enumerate(zip(x, balanced_labels(200, per_class))):
        write_png(base / "train" / wnids[label] / "images" / f"{wnids[label]}_{i}.JPEG", img)
    lines = []
    yv = balanced_labels(200, val_per_class)
    for i, (img, label) in enumerate(zip(images(yv, (3, size, size), seed + 1), yv)):
        write_png(base / "val" / "images" / f"val_{i}.JPEG", img)
        lines.append(f"val_{i}.JPEG\t{wnids[label]}\t0\t0\t{size}\t{size}")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return wnids


CORE50_CATEGORIES = ["plug_adapter", "mobile_phone", "scissor", "light_bulb", "can", "glass", "ball", "marker", "cup",
                     "remote_control"]


def write_core50(root: Path, sessions: int = 8, seed: int = 0) -> None:
    """A mini (32×32) CORe50: 50 objects, one image per object and training session, one test image per object.

    NI run 0: 8 batches, each with every object (one session each); NC run 0: 9 batches, objects 0-9, then 5 new
    objects per batch (objects ``10 + 5(b-1) ..``). Object ``o`` belongs to category ``o // 5``.
    """
    imgs = root / "core50_32x32"
    paths: list[str] = []
    labels: list[int] = []
    by_batch: list[list[int]] = []
    for s in range(sessions + 1):  # session `sessions` holds the test images
        idx = []
        for o in range(50):
            rel = f"s{s + 1}/o{o + 1}/C_{s + 1:02d}_{o + 1:02d}_000.png"
            write_png(imgs / rel, images(np.array([o]), (3, 32, 32), seed + 50 * s + o)[0])
            idx.append(len(paths))
            paths.append(rel)
            labels.append(o)
        by_batch.append(idx)
    _filelists(root / "batches_filelists" / "NI_inc" / "run0", [b for b in by_batch[:sessions]], by_batch[-1],
               paths, labels)
    nc = [[by_batch[0][o] for o in range(10)]] + [[by_batch[b][o] for o in range(10 + 5 * (b - 1), 15 + 5 * (b - 1))]
                                                  for b in range(1, 9)]
    _filelists(root / "batches_filelists" / "NC_inc" / "run0", nc, by_batch[-1], paths, labels)
    _pickle(root / "paths.pkl", paths)
    _pickle(root / "labels.pkl", {"ni": [[[labels[i] for i in b] for b in by_batch]]})
    _pickle(root / "LUP.pkl", {"ni": [by_batch]})
    _pickle(root / "labels2names.pkl", {"nc": [{o: f"{CORE50_CATEGORIES[o // 5]}{o % 5 + 1}" for o in range(50)}]})


def _filelists(folder: Path, train: list[list[int]], test: list[int], paths: list[str], labels: list[int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for b, idx in enumerate(train):
        (folder / f"train_batch_{b:02d}_filelist.txt").write_text("".join(f"{paths[i]} {labels[i]}\n" for i in idx))
    (folder / "test_filelist.txt").write_text("".join(f"{paths[i]} {labels[i]}\n" for i in test))


def write_miniimagenet(root: Path, per_class: int = 2, test_per_class: int = 1, size: int = 84, seed: int = 0) -> None:
    """``root/miniimagenet/{train,test}.pkl``: dicts with ``images`` (N, H, W, 3) uint8 and ``labels`` (N,)."""
    folder = root / "miniimagenet"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", per_class), ("test", test_per_class)):
        y = balanced_labels(100, n)
        x = np.transpose(images(y, (3, size, size), seed + n), (0, 2, 3, 1))  # (N, H, W, 3)
        _pickle(folder / f"{name}.pkl", {"images": np.ascontiguousarray(x), "labels": y})


CELEBA_ATTRIBUTES = ["5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
                     "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
                     "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
                     "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
                     "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
                     "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
                     "Wearing_Necktie", "Young"]


def write_celeba(root: Path, counts: tuple[int, int, int] = (6, 3, 3), seed: int = 0) -> np.ndarray:
    """``root/celeba/`` with ``list_attr_celeba.txt``, ``list_eval_partition.txt`` and 178×218 PNG images under .jpg
    names. Image ``i`` has pixel [0, 0, 0] = ``i``. Returns the attributes (N, 40) in {0, 1}."""
    folder = root / "celeba"
    rng = np.random.default_rng(seed)
    n = sum(counts)
    attrs = rng.integers(0, 2, size=(n, 40))
    part = np.repeat(np.arange(3), counts)
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    for i, name in enumerate(names):
        img = rng.integers(0, 256, size=(3, 218, 178), dtype=np.uint8)
        img[0, 0, 0] = i
        write_png(folder / "img_align_celeba" / name, img)
    rows = [f"{f} " + " ".join(f"{2 * a - 1:2d}" for a in row) for f, row in zip(names, attrs)]
    (folder / "list_attr_celeba.txt").write_text(f"{n}\n" + " ".join(CELEBA_ATTRIBUTES) + "\n" + "\n".join(rows) + "\n")
    (folder / "list_eval_partition.txt").write_text("".join(f"{f} {p}\n" for f, p in zip(names, part)))
    return attrs


NEWSGROUPS = ["alt.atheism", "comp.graphics", "comp.os.ms-windows.misc", "comp.sys.ibm.pc.hardware",
              "comp.sys.mac.hardware", "comp.windows.x", "misc.forsale", "rec.autos", "rec.motorcycles",
              "rec.sport.baseball", "rec.sport.hockey", "sci.crypt", "sci.electronics", "sci.med", "sci.space",
              "soc.religion.christian", "talk.politics.guns", "talk.politics.mideast", "talk.politics.misc",
              "talk.religion.misc"]


def write_newsgroups(root: Path, per_group: int = 12, test_per_group: int = 4, seed: int = 0) -> None:
    """``root/20news-bydate-{train,test}/<group>/<id>``: short posts (header, body, signature) with words typical of
    their group, so TF-IDF features separate the groups."""
    rng = np.random.default_rng(seed)
    common = [f"word{i}" for i in range(40)]
    for split, n in (("train", per_group), ("test", test_per_group)):
        for g, group in enumerate(NEWSGROUPS):
            topical = [f"{group.split('.')[-1]}{k}" for k in range(6)]
            for i in range(n):
                words = list(rng.choice(common, 12)) + list(rng.choice(topical, 6))
                text = (f"From: user{i}@example.com\nSubject: post {i}\n\n" + " ".join(words) +
                        "\n> quoted reply text\n\n--\nsignature line\n")
                path = root / f"20news-bydate-{split}" / group / str(1000 * g + i)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="latin1")
