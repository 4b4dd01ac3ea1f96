"""clkit scenarios: continual-learning streams as Lightning data modules.

Only this package imports Avalanche, and only lazily (inside functions), so importing a scenario module is cheap.
"""

from scenarios.digits import PermutedDigits, SplitDigits
from scenarios.toy import ToyPermuted, ToyShared, ToySplit

__all__ = ["PermutedDigits", "SplitDigits", "ToyPermuted", "ToyShared", "ToySplit"]
