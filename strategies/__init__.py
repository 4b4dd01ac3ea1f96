"""clkit strategies. Importing this package makes every strategy resolvable by its short name in configs.

The baselines are small modules here (``naive``, ``joint``, ``ewc``, ``si``, ``mas``, ``lwf``, ``hat``, ``ogd``,
``vcl``, and the replay strategies ``er``, ``der``, ``agem``, ``gem``, ``icarl`` on the buffer of ``rehearsal``); each
method family is a sub-package with its methods, math and protocol networks: :mod:`strategies.projection` (GPM, TRGP, CUBER), :mod:`strategies.supermask`
(SupSup, ExSSNeT) and :mod:`strategies.ibcl` (IBCL). ``STRATEGIES`` is the explicit registry, in README order.
"""

from strategies.agem import AGEM
from strategies.der import DER
from strategies.er import ER
from strategies.ewc import EWC
from strategies.gem import GEM
from strategies.hat import HAT
from strategies.ibcl import IBCL
from strategies.icarl import ICaRL
from strategies.joint import Joint
from strategies.lwf import LwF
from strategies.mas import MAS
from strategies.naive import Naive
from strategies.ogd import OGD
from strategies.projection import CUBER, GPM, TRGP
from strategies.si import SI
from strategies.supermask import ExSSNeT, SupSup
from strategies.vcl import VCL

__all__ = ["AGEM", "CUBER", "DER", "ER", "EWC", "GEM", "GPM", "HAT", "IBCL", "MAS", "OGD", "SI", "STRATEGIES", "TRGP",
           "VCL", "ExSSNeT", "ICaRL", "Joint", "LwF", "Naive", "SupSup"]

STRATEGIES = (Naive, Joint, EWC, SI, MAS, LwF, ER, DER, AGEM, GEM, ICaRL, HAT, OGD, GPM, TRGP, CUBER, SupSup, ExSSNeT, IBCL,
              VCL)
