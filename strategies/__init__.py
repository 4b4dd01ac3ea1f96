"""clkit strategies. Importing this package makes every strategy resolvable by its short name in configs.

The baselines are small modules here (``naive``, ``joint``, ``ewc``); each method family is a sub-package with its
methods, math and protocol networks: :mod:`strategies.projection` (GPM, TRGP, CUBER), :mod:`strategies.supermask`
(SupSup, ExSSNeT) and :mod:`strategies.ibcl` (IBCL). ``STRATEGIES`` is the explicit registry, in README order.
"""

from strategies.agem import AGEM
from strategies.der import DER
from strategies.er import ER
from strategies.ewc import EWC
from strategies.gem import GEM
from strategies.ibcl import IBCL
from strategies.icarl import ICaRL
from strategies.joint import Joint
from strategies.naive import Naive
from strategies.projection import CUBER, GPM, TRGP
from strategies.supermask import ExSSNeT, SupSup

__all__ = ["AGEM", "CUBER", "DER", "ER", "EWC", "GEM", "GPM", "IBCL", "STRATEGIES", "TRGP", "ExSSNeT", "ICaRL", "Joint",
           "Naive", "SupSup"]

STRATEGIES = (Naive, Joint, EWC, ER, DER, AGEM, GEM, ICaRL, GPM, TRGP, CUBER, IBCL, SupSup, ExSSNeT)
