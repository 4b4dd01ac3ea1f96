"""clkit strategies. Importing this package makes every strategy resolvable by name in configs.

``STRATEGIES`` is the explicit registry: every class here, in the order the README lists them.
"""

from strategies.ewc import EWC
from strategies.exssnet import ExSSNeT
from strategies.ibcl import IBCL
from strategies.joint import Joint
from strategies.naive import Naive
from strategies.supsup import SupSup

__all__ = ["EWC", "ExSSNeT", "IBCL", "Joint", "Naive", "STRATEGIES", "SupSup"]

STRATEGIES = (Naive, Joint, EWC, IBCL, SupSup, ExSSNeT)
