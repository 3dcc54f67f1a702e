# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Reward decoders on frozen embeddings and the preference losses (BTL and DPL heads)."""

from __future__ import annotations

import torch
from torch import nn

from .mlp import mlp

REWARD_HEADS = ("btl", "dpl")
CONDITIONINGS = ("concat", "film")


class EmbeddingRewardDecoder(nn.Module):
    r"""Reward decoder on frozen embeddings (the paper's reward-model setting), conditioned on the user latent z.

    - `conditioning="film"`: `h = MLP(e(x, y))`, then feature-wise modulation by z, `h' = h * (1 + gamma(z)) +
      beta(z)` (gamma, beta linear and zero-initialised), and a linear read-out `r = w . h'`. The reward is then
      bilinear in the response features and z, so a user's latent picks a direction in feature space from the first
      step.
    - `conditioning="concat"`: `r = MLP([e(x, y), z])`, the paper's decoder. It can learn to ignore z.

    Args:
        embedding_dim (`int`): dimension D of e(x, y).
        latent_dim (`int`): dimension of z; `0` gives a context-free reward model (the BTL / DPL baselines).
        hidden_dim (`int`, *optional*, defaults to `256`): MLP width.
        num_layers (`int`, *optional*, defaults to `3`): linear layers from e(x, y) to the reward (at least 2 for
            `"film"`: the modulated features and the read-out).
        head (`str`, *optional*, defaults to `"btl"`): `"btl"` (one reward) or `"dpl"` (mean and log-variance, the
            distributional head of [Siththaranjan et al. 2024](https://huggingface.co/papers/2312.08358)).
        conditioning (`str`, *optional*, defaults to `"concat"`): `"film"` or `"concat"` (see above).
    """

    def __init__(
        self,
        embedding_dim: int,
        latent_dim: int,
        hidden_dim: int = 256,
        num_layers: int = 3,
        head: str = "btl",
        conditioning: str = "concat",
    ):
        super().__init__()
        if head not in REWARD_HEADS:
            raise ValueError(f"`reward_head` must be one of {REWARD_HEADS}, got {head!r}.")
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"`conditioning` must be one of {CONDITIONINGS}, got {conditioning!r}.")
        self.head = head
        self.conditioning = conditioning
        out_dim = 2 if head == "dpl" else 1
        if conditioning == "concat":
            self.mlp = mlp(embedding_dim + latent_dim, hidden_dim, out_dim, num_layers)
            return
        if num_layers < 2:
            raise ValueError(f"A FiLM decoder needs `num_layers >= 2` (features and read-out), got {num_layers}.")
        self.features = nn.Sequential(mlp(embedding_dim, hidden_dim, hidden_dim, num_layers - 1), nn.GELU())
        self.film = nn.Linear(latent_dim, 2 * hidden_dim) if latent_dim > 0 else None
        if self.film is not None:
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)
        self.readout = nn.Linear(hidden_dim, out_dim)

    def forward(self, embeddings: torch.Tensor, z: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rewards for `(N, D)` embeddings and `(N, latent_dim)` latents: `(mean, variance)`, each `(N,)`.

        The variance is `None` for the BTL head.
        """
        if self.conditioning == "concat":
            out = self.mlp(embeddings if z is None else torch.cat([embeddings, z.to(embeddings.dtype)], dim=-1))
        else:
            hidden = self.features(embeddings)
            if self.film is not None and z is not None:
                gamma, beta = self.film(z.to(hidden.dtype)).chunk(2, dim=-1)
                hidden = hidden * (1 + gamma) + beta
            out = self.readout(hidden)
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
