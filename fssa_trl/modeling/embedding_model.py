# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""The reward model of the frozen-embedding path: its only parameters are the NP modules."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from .np_modules import NPModules, encode_episodes


@dataclass
class EmbeddingRewardOutput(ModelOutput):
    """Rewards of the chosen and rejected target responses `(N,)`, their variances for the DPL head, and the KL
    term of a Gaussian latent in training."""

    chosen: torch.Tensor | None = None
    rejected: torch.Tensor | None = None
    chosen_var: torch.Tensor | None = None
    rejected_var: torch.Tensor | None = None
    kl: torch.Tensor | None = None


class NPEmbeddingRewardModel(nn.Module):
    """NP-BTL (or DPL) reward model on frozen embeddings: r(x, y, z) = MLP([e(x, y), z]) (or FiLM, see
    `RewardDecoderConfig.conditioning`), z from the context set.

    What [`NPEmbeddingRewardTrainer`] trains. Its inputs are the embedding tensors of [`DataCollatorForContextSets`]
    with `include_target_embeddings=True`; the NP modules (encoder and decoder, no hypernetwork) are `self.fssa_np`.
    """

    main_input_name = "target_chosen_embeddings"

    def __init__(self, np_modules: NPModules):
        super().__init__()
        if np_modules.decoder is None:
            raise ValueError("NPEmbeddingRewardModel needs NP modules with a reward decoder.")
        self.fssa_np = np_modules

    def forward(self, **batch: torch.Tensor) -> EmbeddingRewardOutput:
        latents = encode_episodes(self.fssa_np.encoder, batch, self.training)
        mask = batch["target_mask"]
        decoder = self.fssa_np.decoder
        chosen, chosen_var = decoder(batch["target_chosen_embeddings"][mask], latents.z_rows)
        rejected, rejected_var = decoder(batch["target_rejected_embeddings"][mask], latents.z_rows)
        return EmbeddingRewardOutput(chosen, rejected, chosen_var, rejected_var, latents.kl)
