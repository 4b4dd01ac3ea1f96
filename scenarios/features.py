"""Streams of pre-extracted feature vectors (IBCL's protocol; also handy for fast sweeps).

``scripts/extract_features.py`` runs a frozen backbone over any scenario and writes such a file; :class:`FeatureStream`
reads it back as a scenario. :class:`PerClassFeatures` reads the official IBCL code's per-class ``.npz`` files
(``<prefix>_{train,test}_<class>.npz``) directly, as binary pair tasks, with no conversion step (config class path
``scenarios.features.PerClassFeatures``). The stream is already tensors, so it is built directly (no Avalanche round trip, which
would copy features that experiences share, e.g. CelebA's 15 tasks over the same images).

File format, ``.pt`` (``torch.save`` of a dict; tensors shared between experiences are stored once)::

    {"format": "clkit.features", "version": 1,
     "setting": "task-il" | "domain-il" | "class-il",
     "task_ids_at_test": bool,                        # optional, default: setting == "task-il"
     "class_names": [str, ...],                       # optional, indexed by original class id
     "meta": {...},                                   # optional: backbone, source scenario, ...
     "experiences": [{"name": str, "classes": [int, ...],
                      "train": {"x": float (N, D), "y": int64 (N,)},
                      "val": {"x": ..., "y": ...} or None,   # optional
                      "test": {"x": ..., "y": ...}}, ...]}

``.npz`` (``numpy.savez``, read with ``allow_pickle=False``): scalars ``format``, ``setting``, ``task_ids_at_test``,
``n_experiences``; per experience ``i``: ``exp{i}_name``, ``exp{i}_classes``, ``exp{i}_{train,val,test}_{x,y}``
(``val`` optional); an array that repeats an earlier one may instead be given as ``exp{i}_{part}_x_ref`` = the key
of that array; optional ``class_names``.

Labels follow the scenario conventions: task-IL labels are ranks within the experience's ``classes``; domain-IL
labels are the shared label values; class-IL labels are the global class ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from clkit.data import SETTINGS, ContinualDataModule, Experience, TensorData, split_train_val
from clkit.errors import ConfigError, DataError

__all__ = ["FORMAT", "FeatureStream", "PerClassFeatures", "load_feature_file", "save_feature_file"]

FORMAT = "clkit.features"
PARTS = ("train", "val", "test")


def _part(data: Optional[TensorData]) -> Optional[dict[str, Tensor]]:
    if data is None:
        return None
    x = data.x if data.transform is None else data[torch.arange(len(data))][0]
    return {"x": x, "y": data.y}


def save_feature_file(path: str | Path, experiences: list[Experience], *, setting: str, task_ids_at_test: bool,
                      class_names: Optional[list[str]] = None, meta: Optional[dict[str, Any]] = None) -> Path:
    """Write ``experiences`` (inputs already features) as a ``.pt`` or ``.npz`` feature file; returns the path."""
    if setting not in SETTINGS:
        raise ConfigError(f"setting={setting!r} is not one of {list(SETTINGS)}")
    path = Path(path)
    doc: dict[str, Any] = {"format": FORMAT, "version": 1, "setting": setting, "task_ids_at_test": task_ids_at_test,
                           "experiences": [{"name": e.name, "classes": list(e.classes), "train": _part(e.train),
                                            "val": _part(e.val), "test": _part(e.test)} for e in experiences]}
    if class_names is not None:
        doc["class_names"] = list(class_names)
    if meta is not None:
        doc["meta"] = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npz":
        np.savez(path, **_to_npz(doc))  # type: ignore[arg-type]
    elif path.suffix == ".pt":
        torch.save(doc, path)
    else:
        raise ConfigError(f"feature file {path} must end in .pt or .npz")
    return path


def _to_npz(doc: dict[str, Any]) -> dict[str, np.ndarray]:
    flat: dict[str, np.ndarray] = {"format": np.array(FORMAT), "setting": np.array(doc["setting"]),
                                   "task_ids_at_test": np.array(doc["task_ids_at_test"]),
                                   "n_experiences": np.array(len(doc["experiences"]))}
    written: dict[int, str] = {}  # id of an x tensor -> key it was written under
    for i, e in enumerate(doc["experiences"]):
        flat[f"exp{i}_name"], flat[f"exp{i}_classes"] = np.array(e["name"]), np.array(e["classes"], dtype=np.int64)
        for part in PARTS:
            if e[part] is None:
                continue
            key = f"exp{i}_{part}_x"
            if id(e[part]["x"]) in written:
                flat[f"{key}_ref"] = np.array(written[id(e[part]["x"])])
            else:
                flat[key], written[id(e[part]["x"])] = e[part]["x"].numpy(), key
            flat[f"exp{i}_{part}_y"] = e[part]["y"].numpy()
    if "class_names" in doc:
        flat["class_names"] = np.array(doc["class_names"])
    return flat


def _from_npz(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    if "n_experiences" not in arrays or "setting" not in arrays:
        raise DataError(f"{path} is not a clkit feature file: it needs 'setting' and 'n_experiences' arrays")
    tensors: dict[str, Tensor] = {}

    def x_of(key: str) -> Tensor:
        ref = arrays.get(f"{key}_ref")
        name = str(ref) if ref is not None else key
        if name not in arrays:
            raise DataError(f"{path}: missing array {name!r}")
        if name not in tensors:
            tensors[name] = torch.from_numpy(arrays[name])
        return tensors[name]

    exps = []
    for i in range(int(arrays["n_experiences"])):
        e: dict[str, Any] = {"name": str(arrays.get(f"exp{i}_name", f"experience {i}")),
                             "classes": arrays[f"exp{i}_classes"].tolist() if f"exp{i}_classes" in arrays else None}
        for part in PARTS:
            has = f"exp{i}_{part}_y" in arrays
            y_key = f"exp{i}_{part}_y"
            e[part] = {"x": x_of(f"exp{i}_{part}_x"), "y": torch.from_numpy(arrays[y_key])} if has else None
        exps.append(e)
    doc: dict[str, Any] = {"format": str(arrays.get("format", FORMAT)), "setting": str(arrays["setting"]),
                           "experiences": exps}
    if "task_ids_at_test" in arrays:
        doc["task_ids_at_test"] = bool(arrays["task_ids_at_test"])
    if "class_names" in arrays:
        doc["class_names"] = [str(n) for n in arrays["class_names"]]
    return doc


def load_feature_file(path: str | Path) -> dict[str, Any]:
    """Read a ``.pt`` or ``.npz`` feature file into the ``.pt`` dict layout, checking its structure."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"feature file {path} not found; write one with scripts/extract_features.py (a frozen "
                        "backbone over any scenario) or scenarios.features.save_feature_file")
    if path.suffix == ".npz":
        doc = _from_npz(path)
    else:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(doc, dict) or doc.get("format", FORMAT) != FORMAT or "experiences" not in doc:
        raise DataError(f"{path} is not a clkit feature file (expected a dict with format={FORMAT!r} and "
                        "'experiences')")
    if doc.get("setting") not in SETTINGS:
        raise DataError(f"{path}: setting={doc.get('setting')!r} is not one of {list(SETTINGS)}")
    if not doc["experiences"]:
        raise DataError(f"{path} has no experiences")
    return doc


def _tensor_data(part: dict[str, Tensor], where: str, task: int) -> TensorData:
    x, y = part.get("x"), part.get("y")
    if not isinstance(x, Tensor) or not isinstance(y, Tensor) or x.dim() < 2 or y.shape != (x.shape[0],):
        shapes = (getattr(x, "shape", None), getattr(y, "shape", None))
        raise DataError(f"{where} needs x (N, D...) and y (N,) tensors, got shapes {shapes}")
    return TensorData(x.float(), y.long(), torch.full((len(y),), task, dtype=torch.long))


class FeatureStream(ContinualDataModule):
    """A stream read from a feature file (format in the module docstring).

    Args:
        path: The ``.pt`` or ``.npz`` file.
        val_fraction: Seeded validation split carved from the training part of experiences that have no validation
            part in the file (experiences with one keep it).
        **kwargs: Other :class:`clkit.data.ContinualDataModule` arguments (``seed``, ``batch_size``,
            ``task_order``, ``shuffle_tasks``, ...).
    """

    def __init__(self, *, path: str, val_fraction: float = 0.0, **kwargs: Any) -> None:
        super().__init__(val_fraction=val_fraction, **kwargs)
        self.path = path

    def build(self) -> list[Experience]:
        doc = load_feature_file(self.path)
        self._file_setting = doc["setting"]
        self._file_task_ids = bool(doc.get("task_ids_at_test", doc["setting"] == "task-il"))
        self.class_names: Optional[list[str]] = doc.get("class_names")
        self.meta: dict[str, Any] = dict(doc.get("meta") or {})
        out = []
        for i, e in enumerate(doc["experiences"]):
            where = f"{self.path}: experience {i}"
            if e.get("train") is None or e.get("test") is None:
                raise DataError(f"{where} needs 'train' and 'test' parts")
            train, test = _tensor_data(e["train"], f"{where} train", i), _tensor_data(e["test"], f"{where} test", i)
            val = None if e.get("val") is None else _tensor_data(e["val"], f"{where} val", i)
            if val is None:  # the file's own validation part wins; val_fraction only fills in missing ones
                train, val = split_train_val(train, self.val_fraction, seed=self.seed * 7919 + i,
                                             first=self.val_split == "first")
            classes = e.get("classes") or sorted(int(c) for c in train.y.unique())
            out.append(Experience(i, i, tuple(int(c) for c in classes), train, val, test, e.get("name") or ""))
        if len({tuple(e.train.x.shape[1:]) for e in out}) != 1:
            raise DataError(f"{self.path}: experiences have different feature shapes")
        return out

    @property  # type: ignore[override]
    def setting(self) -> str:  # type: ignore[override]
        """The file's setting (reading the file if needed)."""
        self.experiences
        return self._file_setting

    @property  # type: ignore[override]
    def task_ids_at_test(self) -> bool:  # type: ignore[override]
        self.experiences
        return self._file_task_ids


class PerClassFeatures(ContinualDataModule):
    """Binary pair tasks read from feature files in the official IBCL code's per-class layout.

    The layout (what the official ``preprocess_data.py`` writes for Split-CIFAR-10/100 and TinyImageNet)::

        <root>/<prefix>_train_<class>.npz    # arrays "features" (N, D) or (N, D, 1, 1) and "labels" (N,)
        <root>/<prefix>_test_<class>.npz

    Task ``t`` is ``pairs[t] = (a, b)``: class ``a`` is label 0 and ``b`` label 1 (as the official loaders, whose
    second class of each pair is the positive one). As the official split does, the first ``train_per_class`` rows
    of each class's train file train and the remaining rows validate; the test file tests. Domain-IL, one shared
    head, no task id at test.

    Args:
        root: Folder of the ``.npz`` files.
        prefix: File prefix (``cifar100``, ``tinyimagenet``, ``mnist``, ...).
        pairs: Class pairs, one per task.
        train_per_class: Training rows per class (the rest validate; ``None``: all train, ``val_fraction`` then
            carves a seeded validation split).
        feature_key, label_key: Array names inside the files.
        **kwargs: Other :class:`clkit.data.ContinualDataModule` arguments.
    """

    setting = "domain-il"
    task_ids_at_test = False

    def __init__(self, *, root: str, prefix: str, pairs: list[list[int]], train_per_class: Optional[int] = None,
                 feature_key: str = "features", label_key: str = "labels", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not pairs or any(len(p) != 2 or p[0] == p[1] for p in pairs):
            raise ConfigError(f"pairs must be a non-empty list of two different class ids each, got {pairs}")
        if train_per_class is not None and train_per_class < 1:
            raise ConfigError(f"train_per_class must be >= 1 (or null), got {train_per_class}")
        self.root, self.prefix, self.pairs = root, prefix, [[int(a), int(b)] for a, b in pairs]
        self.train_per_class, self.feature_key, self.label_key = train_per_class, feature_key, label_key

    def _read(self, part: str, cls: int) -> Tensor:
        path = Path(self.root).expanduser() / f"{self.prefix}_{part}_{cls}.npz"
        if not path.is_file():
            raise DataError(f"per-class feature file {path} not found (expected <root>/<prefix>_{{train,test}}_"
                            f"<class>.npz, the official IBCL layout)")
        with np.load(path, allow_pickle=False) as z:
            if self.feature_key not in z.files:
                raise DataError(f"{path} has no array {self.feature_key!r} (it has {z.files})")
            x = torch.from_numpy(np.asarray(z[self.feature_key], dtype=np.float32))
        return x.reshape(len(x), -1)  # (N, D, 1, 1) -> (N, D)

    def build(self) -> list[Experience]:
        exps = []
        for i, (a, b) in enumerate(self.pairs):
            parts: dict[str, list[TensorData]] = {"train": [], "val": [], "test": []}
            for label, cls in ((0, a), (1, b)):
                train, test = self._read("train", cls), self._read("test", cls)
                n = self.train_per_class or len(train)
                if n > len(train) or (self.train_per_class is not None and n == len(train)):
                    raise DataError(f"class {cls} has {len(train)} training rows; train_per_class={n} leaves no "
                                    "validation rows")
                for name, x in (("train", train[:n]), ("val", train[n:]), ("test", test)):
                    if len(x):
                        parts[name].append(TensorData(x, torch.full((len(x),), label), torch.full((len(x),), i)))
            joined = {k: TensorData(torch.cat([d.x for d in v]), torch.cat([d.y for d in v]),
                                    torch.cat([d.t for d in v])) for k, v in parts.items() if v}
            train_part, val_part = joined["train"], joined.get("val")
            if val_part is None:
                train_part, val_part = split_train_val(train_part, self.val_fraction, seed=self.seed * 7919 + i,
                                                       first=self.val_split == "first")
            exps.append(Experience(i, i, (0, 1), train_part, val_part, joined["test"], f"{a} vs {b}"))
        return exps
