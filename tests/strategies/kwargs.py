"""Fast constructor kwargs per strategy class name for the conformance battery (toy streams, seconds)."""

from typing import Any

STRATEGY_KWARGS: dict[str, dict[str, Any]] = {
    "Naive": {"lr": 0.05},
    "Joint": {"lr": 0.05},
    "EWC": {"lr": 0.05, "ewc_lambda": 10.0, "fisher_samples": 64},
    "GPM": {"lr": 0.05, "rep_samples": 64},
    "TRGP": {"lr": 0.05, "rep_samples": 64, "trust_samples": 64},
    "CUBER": {"lr": 0.05, "rep_samples": 64, "trust_samples": 64},
    "IBCL": {"lr": 0.05, "prior_stds": [1.0, 1.5], "num_preferences": 3, "num_samples": 4},
    "SupSup": {"lr": 0.05, "density": 0.3},
    "ExSSNeT": {"density": 0.3, "mask_epochs": 1, "weight_epochs": 1, "mask_lr": 0.05, "weight_lr": 0.01},
}
