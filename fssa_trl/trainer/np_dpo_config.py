# Copyright 2026 The fssa_trl developers. Apache-2.0.
from __future__ import annotations

from dataclasses import dataclass

from trl import DPOConfig

from .np_arguments import GatedLoRAArguments, NPEpisodeArguments


@dataclass
class NPDPOConfig(NPEpisodeArguments, GatedLoRAArguments, DPOConfig):
    r"""Configuration of [`NPDPOTrainer`]: TRL's [`~trl.DPOConfig`] (every `loss_type`, `beta`, `f_divergence_type`,
    `precompute_ref_log_probs`, ...) plus the fields of [`NPEpisodeArguments`] and [`GatedLoRAArguments`]. Nothing
    else is added: the policy is the causal LM whose LoRA adapter the hypernetwork modulates per example, and the
    reference is the same model with adapters and modulation off.
    """

    def __post_init__(self):
        super().__post_init__()
        self._check_episode_arguments()
        self._check_hypernetwork_arguments()
        if self.sync_ref_model:
            raise ValueError(
                "`sync_ref_model=True` is not supported: the NP-DPO reference is the frozen base model (adapters and "
                "modulation off). Set `sync_ref_model=False`."
            )
