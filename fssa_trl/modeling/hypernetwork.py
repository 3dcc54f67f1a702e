# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Hypernetwork that maps a user latent z to per-example rank-wise gates of every LoRA layer.

For every LoRA layer l with rank r the hypernetwork produces gates g_l(z) in R^r, which the gated layer applies as
`delta W_l(z) x = B_l diag(g_l(z)) A_l x * scaling` (see `gated_lora.py`). The last layer of the hypernetwork is
zero-initialised, so g(z) = 1 and the model equals plain LoRA at initialisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .mlp import mlp


@dataclass
class Modulation:
    """Per-example modulation produced by [`LoRAHypernetwork`].

    Args:
        gates (`torch.Tensor` of shape `(N, num_layers, rank)`): rank-wise LoRA gates.
        head (`torch.Tensor` of shape `(N, head_dim)`, *optional*): direction added to the reward head
            (`r = score(h) + h . head`), when the hypernetwork also conditions the head.
    """

    gates: torch.Tensor
    head: torch.Tensor | None = None

    def repeat(self, sizes: torch.Tensor | int) -> Modulation:
        """Rows repeated `repeat_interleave`-style (one latent per episode -> one per target sequence)."""
        head = None if self.head is None else self.head.repeat_interleave(sizes, dim=0)
        return Modulation(self.gates.repeat_interleave(sizes, dim=0), head)


class LoRAHypernetwork(nn.Module):
    r"""Maps a latent z to rank-wise gates for `num_layers` LoRA layers of rank `rank` (and optionally a reward-head
    direction of size `head_dim`). Gates are `1 + MLP(z)`; with the default zero-initialised output layer the model is
    plain LoRA at initialisation.

    Args:
        latent_dim (`int`): dimension of z.
        num_layers (`int`): number of modulated LoRA layers.
        rank (`int`): LoRA rank r.
        hidden_dim (`int`, *optional*, defaults to `256`): width of the MLP.
        head_dim (`int`, *optional*): hidden size of the reward head to condition; `None` leaves the head alone.
        init_std (`float`, *optional*, defaults to `0.0`): standard deviation of the output layer's initial weights.
            `0` makes every gate exactly 1 at initialisation (plain LoRA); a small positive value gives users
            different gates from the first step, so that LoRA B (zero at initialisation) gets a gradient that does not
            cancel between users with opposite preferences.

    Example:

    ```python
    >>> import torch
    >>> from fssa_trl.modeling import LoRAHypernetwork
    >>> hypernet = LoRAHypernetwork(latent_dim=4, num_layers=3, rank=8)
    >>> hypernet(torch.randn(2, 4)).gates.shape  # (N, num_layers, rank), all ones at init
    torch.Size([2, 3, 8])
    ```
    """

    def __init__(
        self,
        latent_dim: int,
        num_layers: int,
        rank: int,
        hidden_dim: int = 256,
        head_dim: int | None = None,
        init_std: float = 0.0,
    ):
        super().__init__()
        for name, value in (("num_layers", num_layers), ("rank", rank), ("hidden_dim", hidden_dim)):
            if value < 1:
                raise ValueError(f"`{name}` must be >= 1, got {value}.")
        if latent_dim < 0 or (head_dim is not None and head_dim < 1):
            raise ValueError(
                f"`latent_dim` must be >= 0 and `head_dim` None or >= 1, got {latent_dim} and {head_dim}."
            )
        self.num_layers = num_layers
        self.rank = rank
        self.head_dim = head_dim
        out_dim = num_layers * rank + (head_dim or 0)
        self.mlp = mlp(latent_dim, hidden_dim, out_dim)
        if init_std > 0:
            nn.init.normal_(self.mlp[-1].weight, std=init_std)
        else:
            nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, z: torch.Tensor) -> Modulation:
        out = self.mlp(z)  # (N, num_layers * rank [+ head_dim])
        gates = 1.0 + out[:, : self.num_layers * self.rank].view(-1, self.num_layers, self.rank)
        head = out[:, self.num_layers * self.rank :] if self.head_dim else None
        return Modulation(gates=gates, head=head)
