"""The supermask family: SupSup and ExSSNeT, masked layers and networks, KKT and task inference."""

from strategies.supermask.exssnet import ExSSNeT
from strategies.supermask.nets import MaskedBackbone, MaskedCNN, MaskedGEMResNet18, MaskedMLP
from strategies.supermask.supsup import SupSup

__all__ = ["ExSSNeT", "MaskedBackbone", "MaskedCNN", "MaskedGEMResNet18", "MaskedMLP", "SupSup"]
