"""clkit scenarios: continual-learning streams as Lightning data modules.

Only this package imports Avalanche, and only lazily (inside functions), so importing a scenario module is cheap.
"""

import warnings

# Avalanche imports qpsolvers (for its GEM strategy), which warns at every import when no QP solver is installed;
# no clkit scenario or strategy uses one.
warnings.filterwarnings("ignore", message="no QP solver found", category=UserWarning)

from scenarios.avalanche import FromAvalanche
from scenarios.classic import (  # noqa: E402
    CelebAAttributes,
    CIFAR100Pairs,
    CORe50,
    FiveDatasets,
    NewsgroupPairs,
    PermutedMNIST,
    RotatedMNIST,
    SplitCIFAR10,
    SplitCIFAR100,
    SplitMiniImageNet,
    SplitMNIST,
    SplitTinyImageNet,
    TinyImageNetPairs,
)
from scenarios.digits import PermutedDigits, SplitDigits
from scenarios.features import FeatureStream
from scenarios.ibcl_toy import BinaryDigits
from scenarios.related import MixedRelated, RotatedSteps
from scenarios.toy import ToyPermuted, ToyShared, ToySplit

__all__ = ["BinaryDigits", "CIFAR100Pairs", "CORe50", "CelebAAttributes", "FeatureStream", "FiveDatasets", "FromAvalanche",
           "MixedRelated", "NewsgroupPairs", "PermutedDigits", "PermutedMNIST", "RotatedMNIST", "RotatedSteps",
           "SplitCIFAR10", "SplitCIFAR100", "SplitDigits",
           "SplitMNIST", "SplitMiniImageNet", "SplitTinyImageNet", "TinyImageNetPairs", "ToyPermuted", "ToyShared",
           "ToySplit"]
