"""Imprecise Bayesian Continual Learning: Bayesian heads, the credal knowledge base, HDRs and zero-shot models."""

from strategies.ibcl.ibcl import IBCL

__all__ = ["IBCL"]
