# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""The frozen-backbone fast path: a reward model on cached embeddings whose only parameters are the NP modules."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from .latent_encoder import LatentOutput, gaussian_kl
from .np_modules import NPModules


@dataclass
class EpisodeLatents(ModelOutput):
    """Latents of a batch of episodes. `z_rows` has one row per target pair `(N, latent_dim)`; `kl` is the mean
    KL(q(z | targets) || q(z | context)) of a Gaussian latent in training, else `None`."""

    z_rows: torch.Tensor | None = None
    kl: torch.Tensor | None = None
    context: LatentOutput | None = None


def encode_episodes(modules: NPModules, batch: dict[str, torch.Tensor], training: bool) -> EpisodeLatents:
    """z for every target pair of a collated batch (see [`DataCollatorForContextSets`]).

    Deterministic latent: z = f(context). Gaussian latent in training (the neural-process ELBO): z ~ q(z | targets),
    plus KL(q(z | targets) || q(z | context)); at evaluation z is the mean of q(z | context).
    """
    encoder = modules.encoder
    context = encoder(batch["context_chosen_embeddings"], batch["context_rejected_embeddings"], batch["context_mask"])
    if encoder.latent_type == "gaussian" and training:
        targets = encoder(
            batch["target_chosen_embeddings"], batch["target_rejected_embeddings"], batch["target_mask"], sample=True
        )
        return EpisodeLatents(targets.z[batch["target_episode"]], gaussian_kl(targets, context).mean(), context)
    return EpisodeLatents(context.z[batch["target_episode"]], None, context)


class NPEmbeddingRewardConfig(PretrainedConfig):
    """Config of [`NPEmbeddingRewardModel`]: `np_modules` holds the keyword arguments of [`NPModules`]."""

    model_type = "fssa_np_embedding_reward"

    def __init__(self, np_modules: dict | None = None, **kwargs):
        kwargs.setdefault("num_labels", 1)
        super().__init__(**kwargs)
        self.np_modules = np_modules


@dataclass
class EmbeddingRewardOutput(ModelOutput):
    """Rewards of the chosen and rejected target responses `(N,)` (and their variances for the DPL head)."""

    chosen: torch.Tensor | None = None
    rejected: torch.Tensor | None = None
    chosen_var: torch.Tensor | None = None
    rejected_var: torch.Tensor | None = None
    kl: torch.Tensor | None = None


class NPEmbeddingRewardModel(PreTrainedModel):
    """NP-BTL (or DPL) reward model on frozen embeddings: r(x, y, z) = MLP([e(x, y), z]), z from the context set.

    This is what [`NPRewardTrainer`] trains with `frozen_backbone=True`. Its inputs are the embedding tensors of
    [`DataCollatorForContextSets`] with `include_target_embeddings=True`.
    """

    config_class = NPEmbeddingRewardConfig
    base_model_prefix = "fssa_np"
    main_input_name = "target_chosen_embeddings"
    _no_split_modules = []

    def __init__(self, config: NPEmbeddingRewardConfig):
        super().__init__(config)
        self.fssa_np = NPModules(**config.np_modules)

    def _init_weights(self, module):  # the NP modules initialise themselves (zero-init heads included)
        pass

    def forward(self, **batch: torch.Tensor) -> EmbeddingRewardOutput:
        latents = encode_episodes(self.fssa_np, batch, self.training)
        mask = batch["target_mask"]
        decoder = self.fssa_np.decoder
        chosen, chosen_var = decoder(batch["target_chosen_embeddings"][mask], latents.z_rows)
        rejected, rejected_var = decoder(batch["target_rejected_embeddings"][mask], latents.z_rows)
        return EmbeddingRewardOutput(chosen, rejected, chosen_var, rejected_var, latents.kl)
