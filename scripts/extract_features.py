"""Extract frozen-backbone features from any clkit scenario into a file for ``scenarios.features.FeatureStream``.

Example (IBCL's Split-CIFAR-100 protocol; ImageNet ResNet-18, 512-d)::

    python scripts/extract_features.py --config configs/scenarios/cifar100_pairs.yaml \\
        --data.init_args.dataset_root ~/data --out features/cifar100_pairs_resnet18.pt

``--config`` takes a data snippet (``data: {class_path, init_args}``) or a whole ``clkit fit`` config (only its
``data`` section is used); ``--data.init_args.KEY VALUE`` overrides a scenario argument. The experiences are written
in their natural order (``task_order`` / ``shuffle_tasks`` apply when the feature stream is read). Training inputs
are embedded without augmentation. Scenarios that stream their images from disk (CelebA) are never loaded whole.

Weights: ``--weights imagenet`` (default) reads torchvision's cached ImageNet weights and, when they are missing,
says where to put them (add ``--download_weights`` to fetch them); ``--weights PATH`` loads a state dict;
``--weights random`` uses an untrained backbone (for tests).
"""

from __future__ import annotations

import sys
import time
from typing import Any, Optional


def _parser() -> Any:
    from jsonargparse import ActionConfigFile, ArgumentParser

    from clkit.data import ContinualDataModule

    p = ArgumentParser(prog="extract_features.py", description=__doc__.split("\n\n")[0], parser_mode="omegaconf+",
                       exit_on_error=False)
    p.add_argument("--config", action=ActionConfigFile, help="data snippet or full clkit config (YAML)")
    p.add_subclass_arguments(ContinualDataModule, "data", required=True, help="the scenario")
    p.add_argument("--out", type=str, required=True, help="output file (.pt or .npz)")
    p.add_argument("--backbone", type=str, default="resnet18", help="torchvision model name")
    p.add_argument("--weights", type=str, default="imagenet", help="'imagenet', 'random' or a state-dict path")
    p.add_argument("--download_weights", type=bool, default=False, help="let torchvision download missing weights")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--device", type=str, default="cpu")
    p.add_argument("--num_workers", type=int, default=0, help="image-decoding workers (streaming scenarios)")
    p.add_argument("--image_size", type=Optional[int], default=None,
                   help="resize streamed images to this square size (default: full size, as IBCL)")
    for ignored in ("model", "trainer", "run_dir", "resume", "ckpt_path", "optimizer", "lr_scheduler"):
        p.add_argument(f"--{ignored}", type=Any, default=None, help="(ignored: part of clkit fit configs)")
    p.add_argument("--seed_everything", type=Any, default=0, help="(only for ${seed_everything} interpolation)")
    return p


def run(argv: list[str]) -> str:
    """Parse ``argv``, extract, write the file; returns its path."""
    from clkit.errors import ConfigError
    from scenarios._extract import experiences_to_features, load_backbone, stream_to_features
    from scenarios.features import save_feature_file

    parser = _parser()
    try:
        cfg = parser.parse_args(argv)
        scenario = parser.instantiate(cfg).data
    except Exception as err:
        raise ConfigError(_reason(err)) from None
    backbone = load_backbone(cfg.backbone, cfg.weights, cfg.download_weights).to(cfg.device)
    t0 = time.perf_counter()
    if hasattr(scenario, "input_splits"):
        exps = stream_to_features(scenario, backbone, cfg.batch_size, cfg.device, cfg.num_workers, cfg.image_size)
    else:
        exps = experiences_to_features(scenario.build(), backbone, cfg.batch_size, cfg.device)
    meta = {"backbone": cfg.backbone, "weights": cfg.weights, "scenario": type(scenario).__name__,
            "scenario_args": {k: v for k, v in (cfg.data.init_args or {}).items() if _plain(v)},
            "seconds": round(time.perf_counter() - t0, 2)}
    path = save_feature_file(cfg.out, exps, setting=scenario.setting, task_ids_at_test=scenario.task_ids_at_test,
                             class_names=getattr(scenario, "_class_names", None), meta=meta)
    dim = exps[0].train.x.shape[1:]
    print(f"extract_features: {len(exps)} experiences, features {tuple(dim)}, {meta['seconds']} s -> {path}")
    return str(path)


def _reason(err: BaseException) -> str:
    """The informative line of a jsonargparse error (it wraps the scenario's own message in union noise)."""
    lines = [ln.strip().lstrip("- ") for ln in str(err).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Does not validate", "Subtypes:", "Errors:", "Given value",
                                                       "Expected a <class 'NoneType'>"))]
    return useful[0] if useful else (lines[0] if lines else type(err).__name__)


def _plain(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str, list, tuple, dict))


def main(argv: Optional[list[str]] = None) -> None:
    from clkit.errors import ClkitError

    try:
        run(list(sys.argv[1:] if argv is None else argv))
    except ClkitError as err:
        print(f"extract_features: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
