"""EWC's shipped config chosen on validation: lambda x lr on PermutedDigits (5 permutations, 5 epochs, batch 32),
five seeds each, with Naive at the same lr beside it. Writes one JSON line per run; a diverged run is recorded as
such (its NaN/inf message), not dropped.

    OMP_NUM_THREADS=1 python scripts/experiments/ewc_grid.py --out docs/results/ewc_permuted_digits_grid.jsonl
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import warnings
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    from clkit import fit_stream, trainer_factory
    from clkit.errors import NonFiniteLossError
    from clkit.optim import spec
    from scenarios import PermutedDigits
    from strategies import EWC, Naive

    grid = [("Naive", None, 0.05)] + [("EWC", lam, lr) for lam, lr in itertools.product((100.0, 10.0, 1.0),
                                                                                         (0.05, 0.01))]
    with args.out.open("w") as out:
        for (name, lam, lr), seed in itertools.product(grid, range(args.seeds)):
            opt = spec("torch.optim.SGD", lr=lr)
            strategy = (Naive(optimizer=opt, seed=seed) if lam is None else
                        EWC(ewc_lambda=lam, fisher_samples=1024, optimizer=opt, seed=seed))
            stream = PermutedDigits(n_experiences=5, seed=seed, val_fraction=0.1, batch_size=32)
            row: dict[str, object] = {"strategy": name, "lambda": lam, "lr": lr, "seed": seed}
            try:
                r = fit_stream(strategy, stream, trainer_factory(max_epochs=5))
                row.update(val_acc=r.val_metrics["acc"], acc=r.metrics["acc"], bwt=r.metrics["bwt"])
            except NonFiniteLossError as e:
                row["diverged"] = str(e)
            print(json.dumps(row), flush=True)
            out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
