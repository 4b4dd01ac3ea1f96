"""The gradient-projection family: GPM, TRGP and CUBER, their math and their protocol networks."""

from strategies.projection.cuber import CUBER
from strategies.projection.gpm import GPM
from strategies.projection.nets import AlexNetGPM, ReducedResNet18
from strategies.projection.trgp import TRGP

__all__ = ["CUBER", "GPM", "TRGP", "AlexNetGPM", "ReducedResNet18"]
