from .callbacks import HeldoutEvaluationCallback, MemorisationWarning
from .checkpoints import IncompleteCheckpointWarning
from .gated_lora_mixin import GatedLoRATrainerMixin
from .np_arguments import GatedLoRAArguments, NPEpisodeArguments
from .np_dpo_config import NPDPOConfig
from .np_dpo_trainer import NPDPOTrainer
from .np_embedding_reward_config import NPEmbeddingRewardConfig
from .np_embedding_reward_trainer import NPEmbeddingRewardTrainer
from .np_reward_config import NPRewardConfig
from .np_reward_trainer import NPRewardTrainer
from .np_trainer_mixin import NPTrainerMixin

__all__ = [
    "GatedLoRAArguments",
    "GatedLoRATrainerMixin",
    "HeldoutEvaluationCallback",
    "IncompleteCheckpointWarning",
    "MemorisationWarning",
    "NPDPOConfig",
    "NPDPOTrainer",
    "NPEmbeddingRewardConfig",
    "NPEmbeddingRewardTrainer",
    "NPEpisodeArguments",
    "NPRewardConfig",
    "NPRewardTrainer",
    "NPTrainerMixin",
]
