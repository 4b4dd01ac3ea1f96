"""Fine-tuning: train on each experience in turn with no protection against forgetting."""

from __future__ import annotations

from clkit.module import ContinualModule

__all__ = ["Naive"]


class Naive(ContinualModule):
    """Naive fine-tuning, the lower bound every continual-learning paper reports.

    Trains the same network on each experience with a fresh optimizer and nothing else. Supports task-IL,
    domain-IL and class-IL. Arguments: those of :class:`clkit.ContinualModule` (``backbone``, ``optimizer``,
    ``lr_scheduler``, ``seed``).
    """
