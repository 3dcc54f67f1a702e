# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""fssa_trl: few-shot steerable alignment (NP-BTL reward models, NP-DPO policies) on top of TRL and PEFT."""

from .data import DataCollatorForContextSets, users_from_attributes
from .evaluation import FewShotResults, evaluate_few_shot
from .modeling import (
    ContextFreeRewardModel,
    SteerableEmbeddingRewardModel,
    SteerableLoRARewardModel,
    SteerablePolicy,
    SteerableRewardModel,
    fold_latent_into_lora,
    gated_lora_config,
)
from .trainer import (
    MemorisationWarning,
    NPDPOConfig,
    NPDPOTrainer,
    NPEmbeddingRewardConfig,
    NPEmbeddingRewardTrainer,
    NPRewardConfig,
    NPRewardTrainer,
)
from .version import __version__

__all__ = [
    "ContextFreeRewardModel",
    "DataCollatorForContextSets",
    "FewShotResults",
    "MemorisationWarning",
    "NPDPOConfig",
    "NPDPOTrainer",
    "NPEmbeddingRewardConfig",
    "NPEmbeddingRewardTrainer",
    "NPRewardConfig",
    "NPRewardTrainer",
    "SteerableEmbeddingRewardModel",
    "SteerableLoRARewardModel",
    "SteerablePolicy",
    "SteerableRewardModel",
    "__version__",
    "evaluate_few_shot",
    "fold_latent_into_lora",
    "gated_lora_config",
    "users_from_attributes",
]
