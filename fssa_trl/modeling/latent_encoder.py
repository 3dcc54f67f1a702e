# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Neural-process latent encoder: a user's context set of pairwise choices -> preference latent z."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .mlp import mlp

AGGREGATIONS = ("mean", "shrunk_mean", "sum", "attention")
LATENT_TYPES = ("deterministic", "gaussian")
PAIR_FEATURES = ("difference", "concat")


@dataclass
class LatentOutput:
    """Output of [`NPLatentEncoder`].

    Args:
        z (`torch.Tensor` of shape `(B, latent_dim)`):
            The latent used downstream: a sample of q(z | set) in training for a Gaussian latent, its mean otherwise.
        mean (`torch.Tensor` of shape `(B, latent_dim)`):
            Mean of q(z | set) (equal to `z` for a deterministic latent).
        std (`torch.Tensor` of shape `(B, latent_dim)`, *optional*):
            Standard deviation of q(z | set); `None` for a deterministic latent.
    """

    z: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor | None = None


class NPLatentEncoder(nn.Module):
    r"""Permutation-invariant encoder of a set of pairwise choices (the neural-process encoder of
    [Few-shot Steerable Alignment](https://huggingface.co/papers/2412.13998)).

    Each context pair (as in the paper, `[e(chosen), e(rejected)]` through a pair MLP, or antisymmetric features of
    the pair and its difference, see `pair_features`) is encoded, aggregated over the set
    (masked mean, shrunk mean, masked sum, or masked self-attention followed by a masked mean) and mapped to z.

    With `pair_features="concat"` an empty set (0-shot, an unknown user) aggregates to a learned vector, so z is then
    the learned population prior. With `pair_features="difference"` the whole encoder is odd: flipping every choice of
    a context flips z (`z(flipped) = -z(context)`), and the empty set maps to z = 0 by construction, halfway between
    users with opposite tastes. That makes the 0-shot model the one users share, and stops training from moving the
    prior onto one user (issue 7: with a learned empty set the 0-shot policy sided with one of two opposite users).

    Args:
        embedding_dim (`int`):
            Dimension D of the response embeddings e(prompt, response).
        latent_dim (`int`, *optional*, defaults to `64`):
            Dimension of z.
        hidden_dim (`int`, *optional*, defaults to `256`):
            Width of the pair MLP and of the latent head.
        aggregation (`str`, *optional*, defaults to `"mean"`):
            `"mean"`, `"shrunk_mean"` (the sum over n pairs divided by n + 1: the mean with one pseudo-pair at the
            empty set's representation, so the set representation moves away from the prior as evidence accumulates
            instead of jumping to full size at one pair), `"sum"` or `"attention"` (one masked self-attention layer
            over the set, then masked mean).
        latent_type (`str`, *optional*, defaults to `"deterministic"`):
            `"deterministic"` (conditional NP) or `"gaussian"` (latent NP; q(z | set) is a diagonal Gaussian).
        num_heads (`int`, *optional*, defaults to `4`):
            Attention heads when `aggregation="attention"`.
        pair_features (`str`, *optional*, defaults to `"concat"`):
            `"difference"`: `f(c, r) = g([c, r, c - r]) - g([r, c, r - c])`. The difference makes what the two
            responses share cancel, so a choice that turns on a few tokens of long responses stays visible; the
            antisymmetry makes the opposite choice give the opposite features, so users with opposite tastes sit
            on either side of the empty context; the encoder is then odd (see above). `"concat"` is the paper's
            `g([e(chosen), e(rejected)])`.
        bounded (`bool`, *optional*, defaults to `False`):
            Squash z (the mean of a Gaussian latent) into (-1, 1) with `tanh`. Unbounded, nothing limits how large
            a deterministic latent grows (norms of 150-200 in the NP-DPO runs of issue 7, whose policies stopped
            improving for one of two users, at any latent); bounded, the same runs steered both users. `tanh` is
            odd, so the odd encoder stays odd (an empty context still gives z = 0). The calibrated `prior_shift` is
            added after the squash.

    Example:

    ```python
    >>> import torch
    >>> from fssa_trl.modeling import NPLatentEncoder
    >>> encoder = NPLatentEncoder(embedding_dim=8, latent_dim=4, hidden_dim=16)
    >>> chosen, rejected = torch.randn(2, 3, 8), torch.randn(2, 3, 8)  # (B, C, D)
    >>> mask = torch.tensor([[True, True, False], [False, False, False]])  # second user: empty context
    >>> encoder(chosen, rejected, mask).z.shape
    torch.Size([2, 4])
    ```
    """

    def __init__(
        self,
        embedding_dim: int,
        latent_dim: int = 64,
        hidden_dim: int = 256,
        aggregation: str = "mean",
        latent_type: str = "deterministic",
        num_heads: int = 4,
        pair_features: str = "concat",
        bounded: bool = False,
    ):
        super().__init__()
        if pair_features not in PAIR_FEATURES:
            raise ValueError(f"`pair_features` must be one of {PAIR_FEATURES}, got {pair_features!r}.")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"`aggregation` must be one of {AGGREGATIONS}, got {aggregation!r}.")
        if latent_type not in LATENT_TYPES:
            raise ValueError(f"`latent_type` must be one of {LATENT_TYPES}, got {latent_type!r}.")
        for name, value in (("embedding_dim", embedding_dim), ("hidden_dim", hidden_dim), ("num_heads", num_heads)):
            if value < 1:
                raise ValueError(f"`{name}` must be >= 1, got {value}.")
        if latent_dim < 0:
            raise ValueError(f"`latent_dim` must be >= 0 (0: a context-free model), got {latent_dim}.")
        self.embedding_dim = embedding_dim
        self.latent_dim = latent_dim
        self.aggregation = aggregation
        self.latent_type = latent_type
        self.pair_features = pair_features
        self.bounded = bounded
        self.pair_encoder = mlp((3 if pair_features == "difference" else 2) * embedding_dim, hidden_dim, hidden_dim)
        self.attention = (
            nn.MultiheadAttention(hidden_dim, num_heads, batch_first=True) if aggregation == "attention" else None
        )
        # Learned representation of an empty context; the odd ("difference") encoder maps it to the origin instead.
        self.empty_set = None if self.antisymmetric else nn.Parameter(torch.zeros(hidden_dim))
        out_dim = latent_dim * (2 if latent_type == "gaussian" else 1)
        self.latent_head = mlp(hidden_dim, hidden_dim, out_dim)
        # Added to an empty set's latent (mean); zero until `SteerableModel.calibrate_prior` fits it. A frozen parameter,
        # not a buffer: FSDP2 (accelerate's full-state-dict loading) expects every state-dict entry to be sharded.
        self.prior_shift = nn.Parameter(torch.zeros(latent_dim), requires_grad=False)

    @property
    def antisymmetric(self) -> bool:
        """Whether the encoder is odd in the choices (`pair_features="difference"`): flipped choices give -z."""
        return self.pair_features == "difference"

    def pair_features_of(self, chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
        """Features `(..., H)` of pairs `(..., D)`. With `pair_features="difference"` they are antisymmetric:
        `f(c, r) = g([c, r, c - r]) - g([r, c, r - c])`, so the opposite choice gives the opposite features."""
        if self.pair_features == "concat":
            return self.pair_encoder(torch.cat([chosen, rejected], dim=-1))
        difference = chosen - rejected
        # Two calls, not one on the stacked pair and flip: the hard-task NP-DPO test's outcome moves with bit-level
        # differences (issue 7 note), and the batched call changes the matmul shapes.
        return self.pair_encoder(torch.cat([chosen, rejected, difference], dim=-1)) - self.pair_encoder(
            torch.cat([rejected, chosen, -difference], dim=-1)
        )

    def aggregate(self, chosen: torch.Tensor, rejected: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Set representation `(B, hidden_dim)` of `(B, C, D)` pair embeddings with a `(B, C)` boolean mask."""
        pairs = self.pair_features_of(chosen, rejected)  # (B, C, H)
        if mask.dtype != torch.bool:
            mask = mask.to(torch.bool)
        if self.attention is None:
            return self._pool(pairs, mask)
        if pairs.shape[1] == 0:
            # Attention runs even when every set of the batch is empty (on one masked slot, dropped below), still
            # connected to pair_encoder: under DeepSpeed ZeRO-3 all processes must call the same modules and give
            # every parameter a gradient, or their parameter gathers and gradient reductions mismatch.
            pairs = torch.cat([pairs, pairs.new_zeros(pairs.shape[0], 1, pairs.shape[2])], dim=1)
            mask = mask.new_zeros(mask.shape[0], 1)
        # A fully masked row would make attention return NaN: let empty sets attend to themselves, then drop them.
        key_padding = ~mask & mask.any(dim=1, keepdim=True)  # no boolean indexing: no device sync
        if self.antisymmetric:  # attention(x) - attention(-x) keeps the encoder odd (its projections have biases)
            both = torch.cat([pairs, -pairs])
            attended, _ = self.attention(
                both, both, both, key_padding_mask=key_padding.repeat(2, 1), need_weights=False
            )
            positive, negative = attended.chunk(2)
            return self._pool(positive - negative, mask)
        attended, _ = self.attention(pairs, pairs, pairs, key_padding_mask=key_padding, need_weights=False)
        return self._pool(attended, mask)

    def _pool(self, pairs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked mean / shrunk mean / sum of `(B, C, H)` pair features; an empty set gives the empty-set vector (the
        origin for the odd encoder)."""
        weights = mask.to(pairs.dtype).unsqueeze(-1)  # (B, C, 1)
        summed = (pairs * weights).sum(dim=1)  # (B, H)
        counts = weights.sum(dim=1)  # (B, 1)
        empty_set = None
        if self.empty_set is not None:
            empty_set = self.empty_set if self.empty_set.dtype == summed.dtype else self.empty_set.to(summed.dtype)
        if self.aggregation == "shrunk_mean":  # one pseudo-pair at the empty set's representation
            return (summed if empty_set is None else summed + empty_set) / (counts + 1.0)
        aggregated = summed if self.aggregation == "sum" else summed / counts.clamp(min=1.0)
        if empty_set is None:
            return aggregated  # an empty set sums to the origin
        return torch.where(counts == 0, empty_set, aggregated)  # broadcast over the batch

    def forward(
        self,
        chosen: torch.Tensor,
        rejected: torch.Tensor,
        mask: torch.Tensor,
        sample: bool = False,
    ) -> LatentOutput:
        """Encode a batch of context sets.

        Args:
            chosen (`torch.Tensor` of shape `(B, C, D)`): embeddings of the chosen responses.
            rejected (`torch.Tensor` of shape `(B, C, D)`): embeddings of the rejected responses.
            mask (`torch.Tensor` of shape `(B, C)`): `True` where a context pair exists (C may be 0).
            sample (`bool`): for a Gaussian latent, draw z with the reparameterisation trick instead of using the mean.
        """
        aggregated = self.aggregate(chosen, rejected, mask)
        if not self.antisymmetric:
            hidden = self.latent_head(aggregated)
        else:  # odd latent head: head(r) - head(-r) for z (and the mean), even for the spread
            hidden, flipped = self.latent_head(torch.cat([aggregated, -aggregated])).chunk(2)
            if self.latent_type == "deterministic":
                hidden = hidden - flipped
            else:
                (mean, raw_std), (flipped_mean, flipped_std) = hidden.chunk(2, dim=-1), flipped.chunk(2, dim=-1)
                hidden = torch.cat([mean - flipped_mean, (raw_std + flipped_std) / 2], dim=-1)
        # The calibrated population prior: `prior_shift` moves the latent of empty sets (adding zero changes nothing).
        empty = (~mask.to(torch.bool).any(dim=1, keepdim=True)).to(hidden.dtype)  # (B, 1)
        if self.latent_type == "deterministic":
            if self.bounded:
                hidden = torch.tanh(hidden)
            hidden = hidden + empty * self.prior_shift.to(hidden.dtype)
            return LatentOutput(z=hidden, mean=hidden)
        mean, raw_std = hidden.chunk(2, dim=-1)
        if self.bounded:
            mean = torch.tanh(mean)
        mean = mean + empty * self.prior_shift.to(mean.dtype)
        std = 0.01 + 0.99 * nn.functional.softplus(raw_std)  # bounded below, as in the NP literature
        z = mean + std * torch.randn_like(std) if sample else mean
        return LatentOutput(z=z, mean=mean, std=std)


def gaussian_kl(q: LatentOutput, p: LatentOutput) -> torch.Tensor:
    """KL(q || p) of two diagonal Gaussians, summed over latent dimensions: shape `(B,)`."""
    if q.std is None or p.std is None:
        raise ValueError("gaussian_kl needs Gaussian latents (latent_type='gaussian').")
    var_q, var_p = q.std.pow(2), p.std.pow(2)
    kl = torch.log(p.std / q.std) + (var_q + (q.mean - p.mean).pow(2)) / (2 * var_p) - 0.5
    return kl.sum(dim=-1)
