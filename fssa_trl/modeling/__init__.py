from .config import (
    ContextEmbeddingConfig,
    EmbeddingRewardModelConfig,
    GatedLoRAModelConfig,
    HypernetworkConfig,
    LatentEncoderConfig,
    LoRARewardModelConfig,
    PolicyConfig,
    RewardDecoderConfig,
    RewardModelConfig,
    SteerableConfig,
)
from .embedding_model import NPEmbeddingRewardModel
from .export import ExportRecord, export_user
from .gated_lora import (
    GatedLoraLinear,
    LoRAModulator,
    find_gated_lora_layers,
    fold_latent_into_lora,
    folded_lora_weights,
    gated_lora_config,
)
from .hypernetwork import LoRAHypernetwork, Modulation
from .latent_encoder import LatentOutput, NPLatentEncoder, gaussian_kl
from .mlp import mlp
from .np_modules import NPModules, encode_episodes, load_np_modules, load_np_weights, save_np_modules
from .policy import SteerablePolicy
from .reward_head import EmbeddingRewardDecoder, preference_log_likelihood
from .reward_model import (
    ContextFreeRewardModel,
    SteerableEmbeddingRewardModel,
    SteerableLoRARewardModel,
    SteerableRewardModel,
)
from .steerable import PriorCalibration, SteerableModel

__all__ = [
    "ContextEmbeddingConfig",
    "ContextFreeRewardModel",
    "EmbeddingRewardDecoder",
    "EmbeddingRewardModelConfig",
    "ExportRecord",
    "GatedLoRAModelConfig",
    "GatedLoraLinear",
    "HypernetworkConfig",
    "LatentEncoderConfig",
    "LatentOutput",
    "LoRAHypernetwork",
    "LoRAModulator",
    "LoRARewardModelConfig",
    "Modulation",
    "NPEmbeddingRewardModel",
    "NPLatentEncoder",
    "NPModules",
    "PolicyConfig",
    "PriorCalibration",
    "RewardDecoderConfig",
    "RewardModelConfig",
    "SteerableConfig",
    "SteerableEmbeddingRewardModel",
    "SteerableLoRARewardModel",
    "SteerableModel",
    "SteerablePolicy",
    "SteerableRewardModel",
    "encode_episodes",
    "export_user",
    "find_gated_lora_layers",
    "fold_latent_into_lora",
    "folded_lora_weights",
    "gated_lora_config",
    "gaussian_kl",
    "load_np_modules",
    "load_np_weights",
    "mlp",
    "preference_log_likelihood",
    "save_np_modules",
]
