# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Reward decoders on frozen embeddings and the preference losses (BTL and DPL heads)."""

from __future__ import annotations

import torch
from torch import nn

from .mlp import mlp

REWARD_HEADS = ("btl", "dpl")


class EmbeddingRewardDecoder(nn.Module):
    r"""Reward decoder `MLP([e(x, y), z])` on frozen embeddings (the paper's reward-model setting).

    Args:
        embedding_dim (`int`): dimension D of e(x, y).
        latent_dim (`int`): dimension of z; `0` gives a context-free reward model (the BTL / DPL baselines).
        hidden_dim (`int`, *optional*, defaults to `256`): MLP width.
        num_layers (`int`, *optional*, defaults to `3`): MLP depth.
        head (`str`, *optional*, defaults to `"btl"`): `"btl"` (one reward) or `"dpl"` (mean and log-variance, the
            distributional head of [Siththaranjan et al. 2024](https://huggingface.co/papers/2312.08358)).
    """

    def __init__(
        self, embedding_dim: int, latent_dim: int, hidden_dim: int = 256, num_layers: int = 3, head: str = "btl"
    ):
        super().__init__()
        if head not in REWARD_HEADS:
            raise ValueError(f"`reward_head` must be one of {REWARD_HEADS}, got {head!r}.")
        self.head = head
        self.mlp = mlp(embedding_dim + latent_dim, hidden_dim, 2 if head == "dpl" else 1, num_layers)

    def forward(self, embeddings: torch.Tensor, z: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rewards for `(N, D)` embeddings and `(N, latent_dim)` latents: `(mean, variance)`, each `(N,)`.

        The variance is `None` for the BTL head.
        """
        features = embeddings if z is None else torch.cat([embeddings, z.to(embeddings.dtype)], dim=-1)
        out = self.mlp(features)
        if self.head == "btl":
            return out[:, 0], None
        return out[:, 0], nn.functional.softplus(out[:, 1]) + 1e-4


def preference_log_likelihood(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    chosen_var: torch.Tensor | None = None,
    rejected_var: torch.Tensor | None = None,
    margin: torch.Tensor | None = None,
) -> torch.Tensor:
    """log p(chosen > rejected) per pair, shape `(N,)`.

    BTL: `log sigmoid(r_c - r_r [- margin])`. DPL (variances given): `log Phi((mu_c - mu_r) / sqrt(s_c^2 + s_r^2))`.
    """
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin
    if chosen_var is None:
        return nn.functional.logsigmoid(diff)
    return torch.special.log_ndtr(diff / torch.sqrt(chosen_var + rejected_var))
