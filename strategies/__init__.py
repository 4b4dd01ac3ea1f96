"""clkit strategies. Importing this package makes every strategy resolvable by its short name in configs.

The baselines are small modules here (``naive``, ``joint``, ``ewc``, ``vcl``); each method family is a sub-package with its
methods, math and protocol networks: :mod:`strategies.projection` (GPM, TRGP, CUBER), :mod:`strategies.supermask`
(SupSup, ExSSNeT) and :mod:`strategies.ibcl` (IBCL). ``STRATEGIES`` is the explicit registry, in README order.
"""

from strategies.ewc import EWC
from strategies.ibcl import IBCL
from strategies.joint import Joint
from strategies.naive import Naive
from strategies.projection import CUBER, GPM, TRGP
from strategies.supermask import ExSSNeT, SupSup
from strategies.vcl import VCL

__all__ = ["CUBER", "EWC", "GPM", "IBCL", "STRATEGIES", "TRGP", "VCL", "ExSSNeT", "Joint", "Naive", "SupSup"]

STRATEGIES = (Naive, Joint, EWC, GPM, TRGP, CUBER, IBCL, VCL, SupSup, ExSSNeT)
