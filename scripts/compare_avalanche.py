"""clkit's baselines against Avalanche 0.6's, on the same stream, initial weights, batch size, epochs and budget.

    OMP_NUM_THREADS=1 python scripts/compare_avalanche.py --out docs/results/avalanche.jsonl     # everything
    python scripts/compare_avalanche.py --only ER,AGEM --scenarios split --seeds 0             # a subset
    python scripts/compare_avalanche.py --table docs/results/avalanche.jsonl                   # the markdown table

For every (scenario, seed, strategy) both frameworks train a copy of the same freshly initialised network (clkit's
default MLP for the stream, built from the seed) on the same experiences (the clkit scenario's own Avalanche
benchmark; no validation split, so both see every training sample) with plain SGD, the same learning rate, batch
size, epochs and memory budget; the test accuracy matrix of each is filled by the same tensor evaluation after
every experience. Avalanche draws its own batch order, so single runs differ by chance: compare means over seeds.
Training seconds (evaluation excluded) are measured in the same process, the two frameworks alternating, and the
ratio is Avalanche's / clkit's. One JSON line per run is appended to ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clkit.data import ContinualDataModule  # noqa: E402
from clkit.metrics import backward_transfer  # noqa: E402

BUDGET = 200
# scenario -> (batch size, epochs); per-strategy learning rate (split digits: chosen on the validation matrix)
PROTOCOL = {"split": (10, 5), "permuted": (32, 3)}
SETTINGS: dict[str, dict[str, Any]] = {
    "ER": {"lr": 0.1},
    "DER": {"lr": 0.1, "alpha": 0.3, "beta": 0.5},
    "LwF": {"lr": 0.03, "lambda_old": 1.0, "temperature": 2.0},
    "AGEM": {"lr": 0.01, "sample_size": 256},
    "GEM": {"lr": 0.03, "margin": 0.5},
    "SI": {"lr": 0.03, "c": 0.1, "xi": 0.1},
    "MAS": {"lr": 0.03, "lambda_reg": 0.1},  # (lambda 1 diverges at this lr once importances have accumulated)
    "ICaRL": {"lr": 0.01},
}
CLASS_IL_ONLY = {"ICaRL"}


def quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "avalanche"):
        logging.getLogger(name).setLevel(logging.ERROR)


def stream_for(scenario: str, seed: int) -> ContinualDataModule:
    from scenarios.digits import PermutedDigits, SplitDigits

    bs, _ = PROTOCOL[scenario]
    if scenario == "split":
        return SplitDigits(setting="class-il", seed=seed, val_fraction=0.0, batch_size=bs)
    return PermutedDigits(seed=seed, val_fraction=0.0, batch_size=bs)


def clkit_strategy(name: str, seed: int) -> Any:
    import strategies

    cfg = dict(SETTINGS[name])
    lr = cfg.pop("lr")
    if name in ("ER", "DER", "AGEM", "GEM", "ICaRL"):
        cfg["buffer_size"] = BUDGET
    return getattr(strategies, name)(optimizer={"class_path": "torch.optim.SGD", "init_args": {"lr": lr}},
                                     seed=seed, **cfg)


class Net(nn.Module):
    """The clkit strategy's backbone and single head as a plain module for Avalanche."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


def evaluate(predict: Callable[[Tensor], Tensor], stream: ContinualDataModule) -> list[float]:
    out = []
    with torch.no_grad():
        for exp in stream.experiences:
            out.append(float((predict(exp.test.x) == exp.test.y).float().mean()))
    return out


def avalanche_strategy(name: str, model: Net, n_experiences: int, bs: int, epochs: int) -> Any:
    from avalanche.training import AGEM, DER, GEM, MAS, ICaRL, LwF, Naive, SynapticIntelligence
    from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
    from avalanche.training.storage_policy import ReservoirSamplingBuffer

    cfg = SETTINGS[name]
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"])
    common: dict[str, Any] = {"train_mb_size": bs, "train_epochs": epochs, "eval_mb_size": 256, "device": "cpu",
                              "evaluator": EvaluationPlugin(loggers=[])}
    ce = nn.CrossEntropyLoss()
    per_exp = BUDGET // max(1, n_experiences - 1)  # the memory the last experience sees equals the budget
    if name == "ER":
        replay = ReplayPlugin(mem_size=BUDGET, batch_size_mem=bs, storage_policy=ReservoirSamplingBuffer(BUDGET))
        return Naive(model=model, optimizer=opt, criterion=ce, plugins=[replay], **common)
    if name == "DER":
        return DER(model=model, optimizer=opt, criterion=ce, mem_size=BUDGET, batch_size_mem=bs, alpha=cfg["alpha"],
                   beta=cfg["beta"], **common)
    if name == "LwF":
        return LwF(model=model, optimizer=opt, criterion=ce, alpha=cfg["lambda_old"],
                   temperature=cfg["temperature"], **common)
    if name == "AGEM":
        return AGEM(model=model, optimizer=opt, criterion=ce, patterns_per_exp=per_exp,
                    sample_size=cfg["sample_size"], **common)
    if name == "GEM":
        return GEM(model=model, optimizer=opt, criterion=ce, patterns_per_exp=per_exp,
                   memory_strength=cfg["margin"], **common)
    if name == "SI":  # Avalanche's penalty is si_lambda / 2 · Σ Ω (θ − θ*)²; clkit's (the paper's) c · Σ ...
        return SynapticIntelligence(model=model, optimizer=opt, criterion=ce, si_lambda=2 * cfg["c"],
                                    eps=cfg["xi"], **common)
    if name == "MAS":
        return MAS(model=model, optimizer=opt, criterion=ce, lambda_reg=cfg["lambda_reg"], **common)
    if name == "ICaRL":
        return ICaRL(feature_extractor=model.backbone, classifier=model.head, optimizer=opt, memory_size=BUDGET,
                     buffer_transform=None, fixed_memory=True, **common)
    raise ValueError(name)


def run_pair(name: str, scenario: str, seed: int) -> dict[str, Any]:
    import pytorch_lightning as pl

    from clkit.loop import StreamRun, trainer_factory

    bs, epochs = PROTOCOL[scenario]
    stream = stream_for(scenario, seed)
    stream.setup()
    pl.seed_everything(seed, verbose=False)
    strategy = clkit_strategy(name, seed)
    strategy.bind(stream.spec)
    model = Net(copy.deepcopy(strategy.backbone), copy.deepcopy(strategy.heads[0]))  # the same initial weights

    # Avalanche first, then clkit (alternating order over seeds would be fairer still; the script keeps it simple)
    torch.manual_seed(seed)
    bench = stream.benchmark()  # type: ignore[attr-defined]
    av = avalanche_strategy(name, model, len(stream.experiences), bs, epochs)
    av_rows, av_seconds = [], 0.0
    for exp in bench.train_stream:
        t0 = time.perf_counter()
        av.train(exp)
        av_seconds += time.perf_counter() - t0
        av.model.eval()
        av_rows.append(evaluate(lambda x: av.model(x).argmax(1), stream))

    pl.seed_everything(seed, verbose=False)
    result = StreamRun(strategy, stream, trainer_factory(max_epochs=epochs)).run()
    cl_seconds = sum(e["train_seconds"] for e in result.per_experience)
    av_matrix = torch.tensor(av_rows)
    return {"strategy": name, "scenario": scenario, "seed": seed, "batch_size": bs, "epochs": epochs,
            "settings": SETTINGS[name], "budget": BUDGET,
            "clkit_acc": float(result.accuracy_matrix[-1].mean()), "clkit_bwt": float(result.metrics["bwt"]),
            "avalanche_acc": float(av_matrix[-1].mean()), "avalanche_bwt": float(backward_transfer(av_matrix)),
            "clkit_train_s": round(cl_seconds, 3), "avalanche_train_s": round(av_seconds, 3)}


def table(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["scenario"], r["strategy"]), []).append(r)

    def ms(values: list[float]) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.3f} ± {sd:.3f}"

    lines = ["| scenario | strategy | seeds | clkit acc | Avalanche acc | gap (pts) | clkit bwt | Avalanche bwt | "
             "train s clkit / Avalanche | speed-up |", "|---|---|---|---|---|---|---|---|---|---|"]
    order = list(SETTINGS)
    for (scenario, name), rs in sorted(groups.items(), key=lambda kv: (kv[0][0] != "split", order.index(kv[0][1]))):
        ca, aa = [r["clkit_acc"] for r in rs], [r["avalanche_acc"] for r in rs]
        cs, as_ = sum(r["clkit_train_s"] for r in rs), sum(r["avalanche_train_s"] for r in rs)
        gap = 100 * (statistics.mean(ca) - statistics.mean(aa))
        label = "SplitDigits class-IL" if scenario == "split" else "PermutedDigits"
        lines.append(f"| {label} | {name} | {len(rs)} | {ms(ca)} | {ms(aa)} | {gap:+.1f} | "
                     f"{ms([r['clkit_bwt'] for r in rs])} | {ms([r['avalanche_bwt'] for r in rs])} | "
                     f"{cs / len(rs):.1f} / {as_ / len(rs):.1f} | {as_ / cs:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("avalanche_comparison.jsonl"))
    parser.add_argument("--only", default=",".join(SETTINGS), help="comma-separated strategies")
    parser.add_argument("--scenarios", default="split,permuted")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--table", type=Path, help="print the markdown table of a results file and exit")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return
    quiet()
    torch.set_num_threads(1)
    done = set()
    if args.out.exists():  # a rerun continues: finished (strategy, scenario, seed) triples are kept
        done = {(r["strategy"], r["scenario"], r["seed"]) for r in map(json.loads, args.out.read_text().splitlines())}
    for scenario in args.scenarios.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            for name in args.only.split(","):
                if (scenario != "split" and name in CLASS_IL_ONLY) or (name, scenario, seed) in done:
                    continue
                record = run_pair(name, scenario, seed)
                with args.out.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
