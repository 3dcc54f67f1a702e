from .np_reward_config import NPEpisodeArguments, NPRewardConfig
from .np_reward_trainer import NPRewardTrainer

__all__ = ["NPEpisodeArguments", "NPRewardConfig", "NPRewardTrainer"]
