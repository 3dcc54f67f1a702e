# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""fssa_trl: few-shot steerable alignment (NP-BTL reward models, NP-DPO policies) on top of TRL and PEFT."""

__version__ = "0.1.0.dev0"

from .data import DataCollatorForContextSets, users_from_attributes  # noqa: E402
from .evaluation import FewShotResults, evaluate_few_shot  # noqa: E402
from .modeling import SteerablePolicy, SteerableRewardModel, fold_latent_into_lora  # noqa: E402
from .trainer import NPDPOConfig, NPDPOTrainer, NPRewardConfig, NPRewardTrainer  # noqa: E402

__all__ = [
    "DataCollatorForContextSets",
    "FewShotResults",
    "NPDPOConfig",
    "NPDPOTrainer",
    "NPRewardConfig",
    "NPRewardTrainer",
    "SteerablePolicy",
    "SteerableRewardModel",
    "evaluate_few_shot",
    "fold_latent_into_lora",
    "users_from_attributes",
]
