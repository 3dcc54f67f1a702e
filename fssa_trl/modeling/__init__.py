from .embedding_model import NPEmbeddingRewardConfig, NPEmbeddingRewardModel, encode_episodes
from .hypernetwork import LoRAHypernetwork, LoRAModulator, Modulation, find_lora_layers, fold_latent_into_lora
from .latent_encoder import LatentOutput, NPLatentEncoder, gaussian_kl
from .np_modules import NPModules, load_np_modules, save_np_modules
from .policy import SteerablePolicy
from .reward_head import EmbeddingRewardDecoder, preference_log_likelihood
from .reward_model import SteerableRewardModel
from .steerable import SteerableModel

__all__ = [
    "EmbeddingRewardDecoder",
    "LatentOutput",
    "LoRAHypernetwork",
    "LoRAModulator",
    "Modulation",
    "NPEmbeddingRewardConfig",
    "NPEmbeddingRewardModel",
    "NPLatentEncoder",
    "NPModules",
    "SteerableModel",
    "SteerablePolicy",
    "SteerableRewardModel",
    "encode_episodes",
    "find_lora_layers",
    "fold_latent_into_lora",
    "gaussian_kl",
    "load_np_modules",
    "preference_log_likelihood",
    "save_np_modules",
]
