"""20 Newsgroups binary pairs (IBCL protocol, docs/methods/ibcl.md): 5 domain-IL tasks on 512-d TF-IDF + PCA features.

Task ``t`` is newsgroup ``p_t`` (label 0) vs ``q_t`` (label 1) for the pairs in :data:`PAIRS`. Headers, footers and
quotes are removed; ``TfidfVectorizer(stop_words="english", max_df=0.95, min_df=2)`` then ``PCA(512)`` are fitted on
the training documents of the ten groups (validation documents excluded) and applied to every part. The last
``val_per_class`` training documents of each group (in scikit-learn's ``fetch_20newsgroups`` order, shuffled with
``random_state=42``) are the validation set; the official test split tests.

Files under ``dataset_root`` (either): scikit-learn's cache ``20news-bydate_py3.pkz`` (what
``fetch_20newsgroups(data_home=dataset_root)`` writes), or the extracted archive folders ``20news-bydate-train/`` and
``20news-bydate-test/`` (one sub-folder per group). ``download: true`` lets scikit-learn fetch them.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from clkit.errors import ConfigError, DataError
from scenarios._files import downloading, missing_data_error
from scenarios._pairs import BinaryTask, BinaryTaskStream

__all__ = ["PAIRS", "NewsgroupPairs", "load_newsgroups"]

PAIRS: tuple[tuple[str, str], ...] = (
    ("comp.graphics", "misc.forsale"), ("comp.os.ms-windows.misc", "rec.autos"),
    ("comp.sys.ibm.pc.hardware", "rec.motorcycles"), ("comp.sys.mac.hardware", "rec.sport.baseball"),
    ("comp.windows.x", "rec.sport.hockey"))
_REMOVE = ("headers", "footers", "quotes")


def load_newsgroups(root: Any, subset: str, download: bool) -> tuple[list[str], np.ndarray, list[str]]:
    """(texts, labels, group names) of one split, cleaned and ordered as ``fetch_20newsgroups`` returns them."""
    from sklearn.datasets import fetch_20newsgroups, load_files
    from sklearn.datasets._twenty_newsgroups import (
        strip_newsgroup_footer,
        strip_newsgroup_header,
        strip_newsgroup_quoting,
    )

    folder = root / f"20news-bydate-{subset}"
    if (root / "20news-bydate_py3.pkz").is_file() or (download and not folder.is_dir()):
        with downloading("20 Newsgroups", root):
            data = fetch_20newsgroups(data_home=str(root), subset=subset, remove=_REMOVE,
                                      download_if_missing=download)
        return list(data.data), np.asarray(data.target), list(data.target_names)
    if not folder.is_dir():
        raise missing_data_error("20 Newsgroups", root, ["20news-bydate_py3.pkz", "20news-bydate-train/",
                                                         "20news-bydate-test/"],
                                 "Extract 20news-bydate.tar.gz (http://qwone.com/~jason/20Newsgroups/) there, or "
                                 "pass download: true.")
    data = load_files(str(folder), encoding="latin1")  # what scikit-learn caches after downloading
    texts = [strip_newsgroup_quoting(strip_newsgroup_footer(strip_newsgroup_header(t))) for t in data.data]
    order = np.arange(len(texts))
    np.random.RandomState(42).shuffle(order)  # fetch_20newsgroups(shuffle=True, random_state=42)
    return [texts[i] for i in order], np.asarray(data.target)[order], list(data.target_names)


class NewsgroupPairs(BinaryTaskStream):
    """The IBCL 20 Newsgroups stream; inputs are float32 feature vectors (``n_components``-d).

    Args:
        pairs: (label-0 group, label-1 group) per task; default :data:`PAIRS`.
        n_components: PCA dimension (IBCL: 512).
        val_per_class: Last training documents of each group held out for validation.
    """

    DATASET = "20 Newsgroups"
    EXPECTED = ("20news-bydate_py3.pkz",)

    def __init__(self, *, pairs: Optional[list[tuple[str, str]]] = None, n_components: int = 512,
                 val_per_class: int = 50, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if n_components < 1 or val_per_class < 1:
            raise ConfigError(f"n_components and val_per_class must be >= 1, got {n_components}, {val_per_class}")
        self.pairs = [list(p) for p in (pairs if pairs is not None else PAIRS)]
        self.n_components, self.val_per_class = n_components, val_per_class

    def _split_ids(self, labels: np.ndarray, names: list[str]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        train, val = {}, {}
        for group in {g for p in self.pairs for g in p}:
            if group not in names:
                raise ConfigError(f"unknown newsgroup {group!r}; valid names: {names}")
            rows = np.nonzero(labels == names.index(group))[0]
            if len(rows) <= self.val_per_class:
                raise DataError(f"newsgroup {group} has {len(rows)} training documents; val_per_class="
                                f"{self.val_per_class} leaves none to train on")
            train[group], val[group] = rows[: -self.val_per_class], rows[-self.val_per_class:]
        return train, val

    def tasks(self) -> list[BinaryTask]:
        from sklearn.decomposition import PCA
        from sklearn.feature_extraction.text import TfidfVectorizer

        texts, labels, names = load_newsgroups(self.root, "train", self.download)
        test_texts, test_labels, test_names = load_newsgroups(self.root, "test", self.download)
        train_ids, val_ids = self._split_ids(labels, names)
        fit_rows = np.sort(np.concatenate(list(train_ids.values())))
        tfidf = TfidfVectorizer(stop_words="english", max_df=0.95, min_df=2)
        counts = tfidf.fit_transform([texts[i] for i in fit_rows])  # sparse (N, V)
        if self.n_components >= min(counts.shape):
            raise DataError(f"n_components={self.n_components} must be < min(documents, vocabulary) = "
                            f"{min(counts.shape)} for PCA on sparse TF-IDF")
        pca = PCA(n_components=self.n_components, svd_solver="arpack", random_state=self.seed).fit(counts)

        def embed(docs: list[str]) -> torch.Tensor:
            return torch.from_numpy(pca.transform(tfidf.transform(docs)).astype(np.float32))  # (N, n_components)

        def part(rows0: np.ndarray, rows1: np.ndarray, pool: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
            x = embed([pool[i] for i in np.concatenate([rows0, rows1])])
            return x, torch.cat([torch.zeros(len(rows0)), torch.ones(len(rows1))]).long()

        out = []
        for g0, g1 in self.pairs:
            te0 = np.nonzero(test_labels == test_names.index(g0))[0]
            te1 = np.nonzero(test_labels == test_names.index(g1))[0]
            out.append(BinaryTask(f"{g0} vs {g1}", part(train_ids[g0], train_ids[g1], texts),
                                  part(val_ids[g0], val_ids[g1], texts), part(te0, te1, test_texts)))
        return out
