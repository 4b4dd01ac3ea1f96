"""clkit strategies. Importing this package makes every strategy resolvable by name in configs.

``STRATEGIES`` is the explicit registry: every class here, in the order the README lists them.
"""

from strategies.projection.cuber import CUBER
from strategies.ewc import EWC
from strategies.supermask.exssnet import ExSSNeT
from strategies.projection.gpm import GPM
from strategies.ibcl import IBCL
from strategies.joint import Joint
from strategies.naive import Naive
from strategies.supermask.supsup import SupSup
from strategies.projection.trgp import TRGP

__all__ = ["CUBER", "EWC", "GPM", "IBCL", "STRATEGIES", "TRGP", "ExSSNeT", "Joint", "Naive", "SupSup"]

STRATEGIES = (Naive, Joint, EWC, GPM, TRGP, CUBER, IBCL, SupSup, ExSSNeT)
