# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""fssa_trl: few-shot steerable alignment (NP-BTL reward models, NP-DPO policies) on top of TRL and PEFT."""

from .active import OnboardingCurves, QuerySuggestions, simulate_onboarding, suggest_queries
from .data import DataCollatorForContextSets, users_from_attributes
from .data.validation import IdenticalPairsWarning
from .evaluation import FewShotResults, evaluate_few_shot
from .hub import push_folder_to_hub
from .model_card import steerable_model_card
from .modeling import (
    ContextFreeRewardModel,
    PriorCalibration,
    SteerableEmbeddingRewardModel,
    SteerableLoRARewardModel,
    SteerableModel,
    SteerablePolicy,
    SteerableRewardModel,
    export_user,
    fold_latent_into_lora,
    gated_lora_config,
)
from .rewards import RewardModelFunction, SteerableRewardFunction
from .trainer import (
    IncompleteCheckpointWarning,
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
    "IdenticalPairsWarning",
    "IncompleteCheckpointWarning",
    "MemorisationWarning",
    "NPDPOConfig",
    "NPDPOTrainer",
    "NPEmbeddingRewardConfig",
    "NPEmbeddingRewardTrainer",
    "NPRewardConfig",
    "NPRewardTrainer",
    "OnboardingCurves",
    "QuerySuggestions",
    "PriorCalibration",
    "RewardModelFunction",
    "SteerableEmbeddingRewardModel",
    "SteerableLoRARewardModel",
    "SteerableModel",
    "SteerablePolicy",
    "SteerableRewardFunction",
    "SteerableRewardModel",
    "__version__",
    "evaluate_few_shot",
    "export_user",
    "fold_latent_into_lora",
    "gated_lora_config",
    "push_folder_to_hub",
    "simulate_onboarding",
    "steerable_model_card",
    "suggest_queries",
    "users_from_attributes",
]
