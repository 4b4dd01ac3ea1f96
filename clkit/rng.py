"""Explicit randomness: seeds derived per purpose and experience, and a forked global RNG around library work.

No clkit library code consumes the caller's global random state. Where torch's own code draws from the global
generator (``nn.Linear``'s default initialisation, dropout during training), clkit runs it inside
:func:`forked_rng`, seeded from the run's seed, so the draws depend only on that seed and the global state is the
same afterwards as before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional

import torch

__all__ = ["derive_seed", "forked_rng", "generator"]


def derive_seed(seed: int, purpose: str, index: Optional[int] = None) -> int:
    """A 63-bit seed for one ``purpose`` (and experience ``index``) of a run seeded with ``seed``.

    Different purposes give unrelated streams of numbers, so adding a random draw for one purpose never shifts
    another's (e.g. a strategy's sampled representation rows do not move when an initialisation changes).
    """
    key = f"{int(seed)}/{purpose}/{'' if index is None else int(index)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & (2**63 - 1)


def generator(seed: int, purpose: str, index: Optional[int] = None) -> torch.Generator:
    """A CPU generator seeded with :func:`derive_seed`."""
    return torch.Generator().manual_seed(derive_seed(seed, purpose, index))


@contextmanager
def forked_rng(seed: int, device: Optional[torch.device] = None) -> Iterator[None]:
    """Run the block on torch's global generators seeded with ``seed``, restoring their state afterwards.

    Args:
        seed: Seed of the CPU generator (and of ``device``'s generator when it is a CUDA device).
        device: The device whose generator the block may draw from, besides the CPU's.
    """
    cuda = [device.index or 0] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for index in cuda:  # only the forked device: torch.manual_seed would reseed every GPU for good
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield
