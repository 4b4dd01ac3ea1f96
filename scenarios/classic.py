"""The scenario catalogue in one namespace, so configs can say ``class_path: scenarios.classic.SplitCIFAR100``.

Importing this module is cheap: Avalanche, torchvision and scikit-learn are imported only when a stream is built.
See ``docs/scenarios.md`` for the table of scenarios and how to point them at local files.
"""

from scenarios.celeba import CelebAAttributes
from scenarios.cifar import SplitCIFAR10, SplitCIFAR100
from scenarios.cifar_pairs import CIFAR100Pairs
from scenarios.core50 import CORe50
from scenarios.five_datasets import FiveDatasets
from scenarios.miniimagenet import SplitMiniImageNet
from scenarios.mnist import PermutedMNIST, RotatedMNIST, SplitMNIST
from scenarios.newsgroups import NewsgroupPairs
from scenarios.tinyimagenet import SplitTinyImageNet
from scenarios.tinyimagenet_pairs import TinyImageNetPairs

__all__ = [
    "CIFAR100Pairs",
    "CORe50",
    "CelebAAttributes",
    "FiveDatasets",
    "NewsgroupPairs",
    "PermutedMNIST",
    "RotatedMNIST",
    "SplitCIFAR10",
    "SplitCIFAR100",
    "SplitMNIST",
    "SplitMiniImageNet",
    "SplitTinyImageNet",
    "TinyImageNetPairs",
]
