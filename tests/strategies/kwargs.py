"""Fast constructor kwargs per strategy class name for the conformance battery (toy streams, seconds)."""

from typing import Any


def sgd(lr: float) -> dict[str, Any]:
    return {"class_path": "torch.optim.SGD", "init_args": {"lr": lr}}


def adam(lr: float, weight_decay: float = 0.0) -> dict[str, Any]:
    return {"class_path": "torch.optim.Adam", "init_args": {"lr": lr, "weight_decay": weight_decay}}


STRATEGY_KWARGS: dict[str, dict[str, Any]] = {
    "Naive": {"optimizer": sgd(0.05)},
    "Joint": {"optimizer": sgd(0.05)},
    "EWC": {"optimizer": sgd(0.05), "ewc_lambda": 10.0, "fisher_samples": 64},
    "SI": {"optimizer": sgd(0.05), "c": 0.1},
    "MAS": {"optimizer": sgd(0.05), "lambda_reg": 1.0, "importance_samples": 64},
    "LwF": {"optimizer": sgd(0.05)},
    "HAT": {"optimizer": sgd(0.05), "s_max": 50.0},
    "OGD": {"optimizer": sgd(0.05), "gradients_per_task": 10},
    "ER": {"optimizer": sgd(0.05), "buffer_size": 20},
    "DER": {"optimizer": sgd(0.05), "buffer_size": 20},
    "AGEM": {"optimizer": sgd(0.05), "buffer_size": 20, "sample_size": 10},
    "GEM": {"optimizer": sgd(0.05), "buffer_size": 20},
    "ICaRL": {"optimizer": sgd(0.05), "buffer_size": 20},
    "GPM": {"optimizer": sgd(0.05), "rep_samples": 64},
    "TRGP": {"optimizer": sgd(0.05), "rep_samples": 64, "trust_samples": 64},
    "CUBER": {"optimizer": sgd(0.05), "rep_samples": 64, "trust_samples": 64},
    "IBCL": {"optimizer": adam(0.05), "prior_stds": [1.0, 1.5], "num_preferences": 3, "num_samples": 4},
    "VCL": {"optimizer": adam(0.05), "coreset_size": 5, "coreset_epochs": 2},
    "SupSup": {"optimizer": adam(0.05, 1e-4), "density": 0.3},
    "ExSSNeT": {"optimizer": adam(0.01), "density": 0.3, "mask_epochs": 1, "weight_epochs": 1, "mask_lr": 0.05},
}
