"""ExSSNeT's kept state on configs/exssnet_digits.yaml by selection rule, 5 seeds (docs/results/supermask.md).

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python scripts/experiments/exssnet_digits_select.py --out runs/digits_select.jsonl

``select`` = ``val_loss``, ``val_acc`` (ties to the later epoch), ``last``, and ``strict`` (the official and former
clkit rule: highest validation accuracy, ties to the earlier epoch). Records test ACC, FWT and the epochs kept.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clkit.loop import fit_stream, trainer_factory
from scenarios.digits import SplitDigits
from strategies.supermask import ExSSNeT, MaskedMLP
from strategies.supermask.exssnet import BestState


class _Strict(ExSSNeT):
    def _new_best(self) -> BestState:
        return BestState("val_acc", strict=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, required=True)
    a = parser.parse_args()
    for select in ("strict", "val_acc", "val_loss", "last"):
        for seed in a.seeds:
            cls = _Strict if select == "strict" else ExSSNeT
            kwargs = {} if select == "strict" else {"select": select}
            strategy = cls(backbone=MaskedMLP(hidden=[256, 256], norm=True), density=0.1, mask_epochs=5,
                           weight_epochs=5, mask_lr=0.01, seed=seed,
                           optimizer={"class_path": "torch.optim.Adam", "init_args": {"lr": 0.001}}, **kwargs)
            stream = SplitDigits(n_experiences=5, setting="task-il", seed=seed, val_fraction=0.1, batch_size=32)
            result = fit_stream(strategy, stream, trainer_factory(max_epochs=10))
            kept = strategy.extra_results(result.accuracy_matrix)["kept_epochs"]
            row = {"select": select, "seed": seed, "acc": result.metrics["acc"], "fwt": result.metrics.get("fwt"),
                   "kept": {k: [v["mask"], v["weight"]] for k, v in kept.items()}}
            with a.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
