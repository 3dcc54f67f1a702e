# Copyright 2026 The fssa_trl developers. Apache-2.0.
from __future__ import annotations

from dataclasses import dataclass, field

from trl import RewardConfig

from .np_arguments import GatedLoRAArguments, NPEpisodeArguments


@dataclass
class NPRewardConfig(NPEpisodeArguments, GatedLoRAArguments, RewardConfig):
    r"""Configuration of [`NPRewardTrainer`] (LoRA reward models): TRL's [`~trl.RewardConfig`] (`max_length`,
    `center_rewards_coefficient`, ...) plus the fields of [`NPEpisodeArguments`], [`GatedLoRAArguments`] and the
    following. For the frozen-embedding reward model use [`NPEmbeddingRewardConfig`] with
    [`NPEmbeddingRewardTrainer`].

    Parameters:
        condition_reward_head (`bool`, *optional*, defaults to `False`):
            Let z also steer the reward head: `r = score(h) + h . u(z)`, `u` zero-initialised.
    """

    condition_reward_head: bool = field(default=False, metadata={"help": "Let z also steer the reward head."})

    def __post_init__(self):
        super().__post_init__()
        self._check_episode_arguments()
        self._check_hypernetwork_arguments()
