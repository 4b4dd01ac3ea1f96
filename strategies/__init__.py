"""clkit strategies. Importing this package makes every strategy resolvable by name in configs.

``STRATEGIES`` is the explicit registry: every class here, in the order the README lists them.
"""

from strategies.ewc import EWC
from strategies.ibcl import IBCL
from strategies.joint import Joint
from strategies.naive import Naive

__all__ = ["EWC", "IBCL", "Joint", "Naive", "STRATEGIES"]

STRATEGIES = (Naive, Joint, EWC, IBCL)
