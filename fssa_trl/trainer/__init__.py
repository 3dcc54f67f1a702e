from .np_dpo_config import NPDPOConfig
from .np_dpo_trainer import NPDPOTrainer
from .np_reward_config import NPEpisodeArguments, NPRewardConfig
from .np_reward_trainer import NPRewardTrainer

__all__ = ["NPDPOConfig", "NPDPOTrainer", "NPEpisodeArguments", "NPRewardConfig", "NPRewardTrainer"]
