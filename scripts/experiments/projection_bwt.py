"""Backward transfer of the gradient-projection family on real images: GPM, TRGP, CUBER and Naive, over seeds.

Runs (method x stream x seed) one after the other in this process and appends one JSON line per finished run to
``--out`` (runs already there are skipped, so an interrupted sweep continues where it stopped); ``--table`` prints
mean ± std tables from such files (``docs/results/projection.md`` was made this way).

Methods are built from the shipped configs (``configs/{gpm,trgp,cuber}_pmnist.yaml`` for MNIST streams,
``configs/{gpm,trgp,cuber}_digits.yaml`` for digits streams: the model's ``init_args`` and the trainer's epochs);
``naive`` is fine-tuning of the same network with the same optimizer. ``--set key=value`` overrides a strategy
argument of every run (YAML values), for candidate rules measured on validation. Streams (the stream seed is the
run seed, as in the configs' ``seed: ${seed_everything}``):

==================  ================================================================================================
``pmnist``          PermutedMNIST on ``--mnist`` (the PMNIST protocol: 10 permutations, batch 10, first 10 % validate)
``rotated_mnist``   RotatedSteps, 5 x 800 images, step 5 degrees, the same protocol
``scarce_mnist``    RotatedSteps, train sizes 100 / 900 x 4 (a data-scarce first task), step 5
``mixed_mnist``     MixedRelated, 6 x 666 images: rotations 0 / 5 / 10 alternating with 3 permutations
``permuted_digits`` PermutedDigits (5 permutations of scikit-learn's digits; the digits protocol: batch 32, 3 epochs)
``rotated_digits``  RotatedSteps on digits, 5 x 251 images, step 10
``scarce_digits``   RotatedSteps on digits, train sizes 50 / 300 x 4
``mixed_digits``    MixedRelated on digits, 6 x 209 images
==================  ================================================================================================

For TRGP and CUBER in domain-IL the test matrix is task-aware (each task's stored scales, chosen by the test batch's
task id); every run also records the matrices of the task-agnostic evaluation rules (``eval_scales``) from the same
training run, in ``matrices``.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python scripts/experiments/projection_bwt.py \\
        --methods naive,gpm,trgp,cuber --streams pmnist --seeds 0-4 --out results/pmnist.jsonl
    PYTHONPATH=$PWD python scripts/experiments/projection_bwt.py --table results/pmnist.jsonl
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from clkit.data import ContinualDataModule  # noqa: E402
from clkit.loop import StreamRun, trainer_factory  # noqa: E402
from clkit.metrics import stream_metrics  # noqa: E402
from clkit.module import ContinualModule  # noqa: E402

MNIST = "/work/data/mnist5k"
MNIST_PROTOCOL = {"val_fraction": 0.1, "val_split": "first", "batch_size": 10, "eval_batch_size": 64}
DIGITS_PROTOCOL = {"val_fraction": 0.1, "batch_size": 32}
STREAMS: dict[str, tuple[str, str, dict[str, Any]]] = {  # name: (protocol, class, init_args)
    "pmnist": ("pmnist", "scenarios.PermutedMNIST", {"n_experiences": 10, "download": False}),
    "rotated_mnist": ("pmnist", "scenarios.related.RotatedSteps",
                      {"dataset": "mnist", "n_experiences": 5, "step": 5.0}),
    "scarce_mnist": ("pmnist", "scenarios.related.RotatedSteps",
                     {"dataset": "mnist", "n_experiences": 5, "step": 5.0, "train_sizes": [100, 900, 900, 900, 900]}),
    "mixed_mnist": ("pmnist", "scenarios.related.MixedRelated", {"dataset": "mnist", "n_experiences": 6, "step": 5.0}),
    "permuted_digits": ("digits", "scenarios.PermutedDigits", {"n_experiences": 5}),
    "rotated_digits": ("digits", "scenarios.related.RotatedSteps", {"dataset": "digits", "n_experiences": 5,
                                                                    "step": 10.0}),
    "scarce_digits": ("digits", "scenarios.related.RotatedSteps",
                      {"dataset": "digits", "n_experiences": 5, "step": 10.0, "train_sizes": [50, 300, 300, 300, 300]}),
    "mixed_digits": ("digits", "scenarios.related.MixedRelated", {"dataset": "digits", "n_experiences": 6,
                                                                  "step": 10.0}),
}
EPOCHS = {"rotated_digits": 12, "scarce_digits": 12, "mixed_digits": 12}
"""Epochs per experience where a stream's shares are smaller than the protocol's tasks (the digits shares hold a
fifth of the images of a PermutedDigits task: 12 epochs give about the same number of steps as its 3)."""
METHOD_CONFIGS = {"gpm": "gpm", "trgp": "trgp", "cuber": "cuber", "naive": "gpm"}  # naive: GPM's network and optimizer


def _load(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _instantiate(spec: Any) -> Any:
    if isinstance(spec, dict) and "class_path" in spec:
        return _load(spec["class_path"])(**{k: _instantiate(v) for k, v in spec.get("init_args", {}).items()})
    return spec


def build_stream(name: str, seed: int, mnist: str) -> ContinualDataModule:
    protocol, cls, args = STREAMS[name]
    kwargs = dict(args)
    kwargs.update(MNIST_PROTOCOL if protocol == "pmnist" else DIGITS_PROTOCOL)
    if protocol == "pmnist":
        kwargs["dataset_root"] = mnist
    return _load(cls)(seed=seed, **kwargs)


VARIANTS = {"end_gradient": "scripts.experiments.cuber_candidates.EndGradientCUBER",
            "displacement": "scripts.experiments.cuber_candidates.DisplacementCUBER"}
"""Candidate CUBER relatedness signals (``--variant``), measured against the shipped rule."""


def build_method(method: str, protocol: str, seed: int, overrides: dict[str, Any],
                 variant: str = "") -> tuple[ContinualModule, int]:
    """The strategy of ``configs/<method>_<protocol>.yaml`` (``naive``: fine-tuning of GPM's network and optimizer;
    ``variant``: a candidate CUBER class) and the config's epochs per experience."""
    config = yaml.safe_load((ROOT / "configs" / f"{METHOD_CONFIGS[method]}_{protocol}.yaml").read_text())
    init = dict(config["model"]["init_args"])
    epochs = int(config["trainer"]["max_epochs"])
    if method == "naive":
        init = {"backbone": init["backbone"], "optimizer": init["optimizer"]}
        cls: Any = _load("strategies.Naive")
    else:
        cls = _load(VARIANTS[variant] if variant and method == "cuber" else config["model"]["class_path"])
        init.update(overrides)
    init["backbone"] = _instantiate(init["backbone"])
    torch.manual_seed(seed)
    return cls(seed=seed, **init), epochs


def _evaluation_modes(strategy: ContinualModule) -> list[str]:
    modes = getattr(strategy, "EVAL_SCALES", ())
    return [m for m in modes if m != getattr(strategy, "eval_scales", None)]


class _ExtraMatrices:
    """Test matrices of the other evaluation rules of a TRGP/CUBER run, filled after every experience."""

    def __init__(self, run: StreamRun, modes: list[str]) -> None:
        self.run, self.modes = run, modes
        t = run.stream.spec.n_experiences if modes else 0
        self.rows: dict[str, list[list[float]]] = {m: [[math.nan] * t for _ in range(t)] for m in modes}
        self.init: dict[str, list[float]] = {m: [math.nan] * t for m in modes}

    def install(self) -> None:
        if not self.modes:
            return
        strategy = self.run.strategy
        original = strategy.on_evaluation_end

        def hook(split: str, row: int, data: Any) -> None:
            original(split, row, data)  # type: ignore[arg-type]
            if split == "test":
                self.fill(row)

        strategy.on_evaluation_end = hook  # type: ignore[method-assign]

    def fill(self, row: int) -> None:
        strategy, stream = self.run.strategy, self.run.stream
        own = strategy.eval_scales  # type: ignore[attr-defined]
        try:
            for mode in self.modes:
                strategy.eval_scales = mode  # type: ignore[attr-defined]
                for j, exp in enumerate(stream.experiences):
                    correct = total = 0
                    with torch.no_grad():
                        for x, y, t in stream.eval_loader(exp.test, seed=0):
                            correct += int((strategy.predict(x.to(strategy.device), t.to(strategy.device)).cpu()
                                            == y).sum())
                            total += int(y.numel())
                    (self.rows[mode][row] if row >= 0 else self.init[mode])[j] = correct / total
        finally:
            strategy.eval_scales = own  # type: ignore[attr-defined]

    def results(self) -> dict[str, Any]:
        out = {}
        for mode in self.modes:
            matrix = torch.tensor(self.rows[mode])
            out[mode] = {"accuracy_matrix": self.rows[mode],
                         "metrics": stream_metrics(matrix, torch.tensor(self.init[mode]))}
        return out


def run_one(method: str, stream_name: str, seed: int, mnist: str, overrides: dict[str, Any],
            variant: str = "") -> dict[str, Any]:
    protocol = STREAMS[stream_name][0]
    stream = build_stream(stream_name, seed, mnist)
    strategy, epochs = build_method(method, protocol, seed, overrides, variant)
    epochs = EPOCHS.get(stream_name, epochs)
    run = StreamRun(strategy, stream, trainer_factory(max_epochs=epochs))
    extra = _ExtraMatrices(run, _evaluation_modes(strategy))
    extra.install()
    t0 = time.perf_counter()
    result = run.run()
    wall = time.perf_counter() - t0
    res = result.results(seed=seed)
    keep = ("accuracy_matrix", "val_accuracy_matrix", "metrics", "val_metrics", "evaluation",
            "strategy_state_bytes", "released", "release_log", "guard_keep_fraction", "basis_ranks")
    out = {"method": method, "stream": stream_name, "seed": seed, "overrides": overrides, "variant": variant,
           "label": strategy.label,
           "wall_seconds": round(wall, 2), **{k: res[k] for k in keep if k in res}}
    out["other_evaluations"] = extra.results()
    return out


def _key(rec: dict[str, Any]) -> tuple[str, str, int, str, str]:
    return (rec["method"], rec["stream"], int(rec["seed"]), json.dumps(rec.get("overrides", {}), sort_keys=True),
            rec.get("variant", ""))


def _seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def sweep(methods: list[str], streams: list[str], seeds: list[int], out: Path, mnist: str,
          overrides: dict[str, Any], tag: str, variant: str = "") -> None:
    done = set()
    if out.exists():
        done = {_key(json.loads(line)) for line in out.read_text().splitlines() if line.strip()}
    out.parent.mkdir(parents=True, exist_ok=True)
    for stream in streams:
        for seed in seeds:
            for method in methods:
                ov = overrides if method in ("cuber", "trgp", "gpm") else {}
                var = variant if method == "cuber" else ""
                key = (method, stream, seed, json.dumps(ov, sort_keys=True), var)
                if key in done:
                    continue
                rec = run_one(method, stream, seed, mnist, ov, var)
                rec["tag"] = tag
                with out.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                m, v = rec["metrics"], rec.get("val_metrics") or {}
                print(f"{stream:16s} seed {seed} {method:6s} {tag}: acc {m['acc']:.4f} bwt {m['bwt']:+.4f} "
                      f"val acc {v.get('acc', float('nan')):.4f} val bwt {v.get('bwt', float('nan')):+.4f} "
                      f"{rec['wall_seconds']:.0f} s", flush=True)


# ------------------------------------------------------------------------------------------------------- tables
def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {std:.3f}"


def table(paths: list[Path], split: str = "test") -> str:
    """Markdown: per stream and method (and override set), mean ± std over seeds of acc / bwt / fwt / forgetting."""
    recs = [json.loads(line) for p in paths for line in p.read_text().splitlines() if line.strip()]
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in recs:
        groups.setdefault((r["stream"], r["method"], r.get("tag", "")), []).append(r)
    key = "metrics" if split == "test" else "val_metrics"
    lines = ["| stream | method | variant | evaluation | seeds | acc | bwt | fwt | forgetting | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (stream, method, tag), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["seed"])
        ms = [r[key] for r in rs if r.get(key)]
        mode = rs[0].get("evaluation", {}).get("mode", "?")
        cells = [_mean_std([m[k] for m in ms]) for k in ("acc", "bwt", "fwt", "forgetting")]
        lines.append(f"| {stream} | {rs[0]['label']} | {tag} | {mode} | {len(ms)} | " + " | ".join(cells) +
                     f" | {statistics.mean(r['wall_seconds'] for r in rs):.0f} |")
        for other, res in sorted(rs[0].get("other_evaluations", {}).items()):
            if split != "test":
                continue
            oms = [r["other_evaluations"][other]["metrics"] for r in rs if other in r.get("other_evaluations", {})]
            cells = [_mean_std([m[k] for m in oms]) for k in ("acc", "bwt", "fwt", "forgetting")]
            lines.append(f"| {stream} | {rs[0]['label']} | {tag} eval_scales={other} | task-agnostic | {len(oms)} | "
                         + " | ".join(cells) + " | |")
    return "\n".join(lines)


def paired(paths: list[Path], a: tuple[str, str], b: tuple[str, str], metric: str, split: str = "test") -> str:
    """``a - b`` (method, tag) per stream over shared seeds: mean, std of the difference, and mean / std."""
    recs = [json.loads(line) for p in paths for line in p.read_text().splitlines() if line.strip()]
    key = "metrics" if split == "test" else "val_metrics"
    by: dict[tuple[str, str, str, int], float] = {}
    for r in recs:
        if r.get(key):
            by[(r["stream"], r["method"], r.get("tag", ""), int(r["seed"]))] = r[key][metric]
    lines = []
    for stream in sorted({k[0] for k in by}):
        seeds = sorted(s for (st, m, t, s) in by if st == stream and (m, t) == a and (stream, *b, s) in by)
        if not seeds:
            continue
        d = [by[(stream, *a, s)] - by[(stream, *b, s)] for s in seeds]
        sd = statistics.stdev(d) if len(d) > 1 else 0.0
        lines.append(f"{stream}: {metric} {a} - {b}: {statistics.mean(d):+.4f} ± {sd:.4f} (n={len(d)}; "
                     f"mean/std {statistics.mean(d) / sd if sd else math.inf:.1f})")
    return "\n".join(lines)


ORDER = {"naive": 0, "gpm": 1, "trgp": 2, "cuber": 3}


def _ms(values: list[float], sign: bool = False) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):{'+' if sign else ''}.3f} ± {std:.3f}"


def doc_tables(paths: list[Path], tag: str, split: str = "test") -> str:
    """Per stream, the docs table: Naive, GPM, TRGP, CUBER (``tag`` selects the CUBER variant), then TRGP's and
    CUBER's task-agnostic evaluations of the same runs, each row with its evaluation mode; then CUBER's paired
    differences to GPM and TRGP (mean ± std of the per-seed difference)."""
    recs = [json.loads(line) for p in paths for line in p.read_text().splitlines() if line.strip()]
    key = "metrics" if split == "test" else "val_metrics"
    out = []
    for stream in [s for s in STREAMS if any(r["stream"] == s for r in recs)]:
        rows: dict[tuple[str, str], dict[int, dict[str, float]]] = {}
        for r in recs:
            if r["stream"] != stream or (r["method"] == "cuber" and r.get("tag", "") != tag):
                continue
            if r["method"] != "cuber" and r.get("tag", ""):
                continue
            label = {"naive": "Naive", "gpm": "GPM", "trgp": "TRGP", "cuber": "CUBER (clkit reconstruction)"}
            mode = r.get("evaluation", {}).get("mode", "?")
            rows.setdefault((f"{ORDER[r['method']]}{label[r['method']]}", mode), {})[int(r["seed"])] = r[key]
            if split == "test":
                for other, res in r.get("other_evaluations", {}).items():
                    rows.setdefault((f"{4 + ORDER[r['method']]}{label[r['method']]}, eval_scales={other}",
                                     "task-agnostic"), {})[int(r["seed"])] = res["metrics"]
        out += [f"#### {stream}", "", "| method | evaluation | seeds | acc | bwt | fwt | forgetting |",
                "|---|---|---|---|---|---|---|"]
        for (name, mode), by_seed in sorted(rows.items()):
            ms = [by_seed[k] for k in sorted(by_seed)]
            out.append(f"| {name[1:]} | {mode} | {len(ms)} | " + " | ".join(
                _ms([m[k] for m in ms], sign=k in ("bwt", "fwt")) for k in ("acc", "bwt", "fwt", "forgetting")) + " |")
        cuber = rows.get(("3CUBER (clkit reconstruction)", "task-aware"), {})
        diffs = []
        for other in ("1GPM", "2TRGP"):
            base = next((v for (n, _), v in rows.items() if n == other), {})
            seeds = sorted(set(cuber) & set(base))
            if len(seeds) > 1:
                for metric in ("bwt", "acc"):
                    d = [cuber[s_][metric] - base[s_][metric] for s_ in seeds]
                    sd = statistics.stdev(d)
                    if not any(d):
                        diffs.append(f"CUBER - {other[1:]} {metric}: 0 in every seed (identical)")
                        continue
                    size = f"{statistics.mean(d) / sd:+.1f} std" if sd else "the same in every seed"
                    diffs.append(f"CUBER - {other[1:]} {metric}: {statistics.mean(d):+.3f} ± {sd:.3f} ({size})")
        out += ["", "Paired over seeds: " + "; ".join(diffs) + ".", ""]
    return "\n".join(out)


def summary(paths: list[Path], streams: list[str], split: str = "val") -> str:
    """Per (method, variant): the mean over ``streams`` of the per-stream mean acc and bwt (the selection rule of
    docs/results/projection.md: candidates are compared on the validation matrix only)."""
    recs = [json.loads(line) for p in paths for line in p.read_text().splitlines() if line.strip()]
    key = "metrics" if split == "test" else "val_metrics"
    cells = {(r["method"], r.get("tag", "")) for r in recs if r["stream"] in streams and r.get(key)}
    lines = [f"| method | variant | streams | mean {split} acc | mean {split} bwt | worst-stream {split} bwt |",
             "|---|---|---|---|---|---|"]
    for (method, tag) in sorted(cells):
        accs, bwts = [], []
        for stream in streams:
            rs = [r for r in recs if r["stream"] == stream and r["method"] == method and r.get("tag", "") == tag
                  and r.get(key)]
            if rs:
                accs.append(statistics.mean(r[key]["acc"] for r in rs))
                bwts.append(statistics.mean(r[key]["bwt"] for r in rs))
        lines.append(f"| {method} | {tag} | {len(accs)} | {statistics.mean(accs):.4f} | {statistics.mean(bwts):+.4f} | "
                     f"{min(bwts):+.4f} |")
    return "\n".join(lines)


def per_seed_csv(paths: list[Path]) -> str:
    """One CSV row per run: test and validation acc / bwt, the evaluation mode, wall time and CUBER's releases."""
    recs = [json.loads(line) for p in paths for line in p.read_text().splitlines() if line.strip()]
    lines = ["stream,method,tag,seed,evaluation,acc,bwt,val_acc,val_bwt,wall_seconds,released_task_layers"]
    for r in sorted(recs, key=lambda r: (r["stream"], ORDER[r["method"]], r.get("tag", ""), r["seed"])):
        v = r.get("val_metrics") or {}
        n_rel = sum(len(layer) for task in r.get("released") or [] for layer in task)
        lines.append(",".join(map(str, [r["stream"], r["method"], r.get("tag", ""), r["seed"],
                                        r.get("evaluation", {}).get("mode", "?"), r["metrics"]["acc"],
                                        r["metrics"]["bwt"], v.get("acc", ""), v.get("bwt", ""),
                                        r["wall_seconds"], n_rel])))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="naive,gpm,trgp,cuber")
    parser.add_argument("--streams", default="pmnist")
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--mnist", default=MNIST, help="MNIST dataset_root (default: the 5k subset)")
    parser.add_argument("--set", action="append", default=[], help="strategy argument key=value (YAML value)")
    parser.add_argument("--tag", default="", help="label of this variant in the tables")
    parser.add_argument("--variant", default="", choices=["", *VARIANTS], help="a candidate CUBER class")
    parser.add_argument("--table", nargs="*", type=Path, help="print tables of these JSONL files instead")
    parser.add_argument("--split", choices=["test", "val"], default="test")
    parser.add_argument("--summary", help="with --table: comma-separated streams to average over (selection)")
    parser.add_argument("--doc", metavar="CUBER_TAG", help="with --table: the docs tables, CUBER rows of this tag")
    parser.add_argument("--csv", action="store_true", help="with --table: one CSV row per run")
    parser.add_argument("--paired", nargs=5, metavar=("A", "A_TAG", "B", "B_TAG", "METRIC"),
                        help="with --table: paired differences A - B")
    args = parser.parse_args()
    if args.table is not None:
        if args.csv:
            print(per_seed_csv(args.table))
        elif args.doc is not None:
            print(doc_tables(args.table, args.doc, args.split))
        elif args.summary:
            print(summary(args.table, args.summary.split(","), args.split))
        elif args.paired:
            a, at, b, bt, metric = args.paired
            print(paired(args.table, (a, at), (b, bt), metric, args.split))
        else:
            print(table(args.table, args.split))
        return
    if args.out is None:
        parser.error("--out is required to run")
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("strategies").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    unknown = [s for s in args.streams.split(",") if s not in STREAMS]
    if unknown:
        parser.error(f"unknown streams {unknown}; valid: {', '.join(STREAMS)}")
    sweep(args.methods.split(","), args.streams.split(","), _seeds(args.seeds), args.out, args.mnist, overrides,
          args.tag, args.variant)


if __name__ == "__main__":
    main()
