# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Hypernetwork that modulates PEFT LoRA adapters per example from a user latent z.

For every LoRA layer l with rank r the hypernetwork produces rank-wise gates g_l(z) in R^r and the layer computes

    delta W_l(z) x = B_l diag(g_l(z)) A_l x * scaling

so that, for a fixed z, `B_l diag(g_l(z))` is an ordinary LoRA B matrix ([`fold_latent_into_lora`]). The last layer
of the hypernetwork is zero-initialised, so g(z) = 1 and the model equals plain LoRA at initialisation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .latent_encoder import _mlp


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
    direction of size `head_dim`). Identity at initialisation: gates are `1 + MLP(z)` with a zero-initialised output.

    Args:
        latent_dim (`int`): dimension of z.
        num_layers (`int`): number of modulated LoRA layers.
        rank (`int`): LoRA rank r.
        hidden_dim (`int`, *optional*, defaults to `256`): width of the MLP.
        head_dim (`int`, *optional*): hidden size of the reward head to condition; `None` leaves the head alone.

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
        self, latent_dim: int, num_layers: int, rank: int, hidden_dim: int = 256, head_dim: int | None = None
    ):
        super().__init__()
        self.num_layers = num_layers
        self.rank = rank
        self.head_dim = head_dim
        out_dim = num_layers * rank + (head_dim or 0)
        self.mlp = _mlp(latent_dim, hidden_dim, out_dim)
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, z: torch.Tensor) -> Modulation:
        out = self.mlp(z)  # (N, num_layers * rank [+ head_dim])
        gates = 1.0 + out[:, : self.num_layers * self.rank].view(-1, self.num_layers, self.rank)
        head = out[:, self.num_layers * self.rank :] if self.head_dim else None
        return Modulation(gates=gates, head=head)


def find_lora_layers(model: nn.Module, adapter_name: str = "default") -> list[tuple[str, nn.Module]]:
    """The LoRA layers of a PEFT model that carry `adapter_name`, in module order, as `(name, layer)`.

    Only `nn.Linear` LoRA (the layers of attention and MLP projections) can be gated rank-wise; DoRA, embedding and
    convolution LoRA raise a `ValueError`.
    """
    from peft.tuners.lora import LoraLayer

    layers = []
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and adapter_name in module.lora_A:
            if not isinstance(module.lora_A[adapter_name], nn.Linear):
                raise ValueError(
                    f"LoRA layer {name!r} is not a Linear LoRA layer; the hypernetwork gates Linear LoRA only. Restrict "
                    "`target_modules` in your LoraConfig to linear projections (e.g. q_proj, v_proj)."
                )
            if module.use_dora.get(adapter_name, False):
                raise ValueError(
                    "DoRA adapters cannot be modulated rank-wise: set `use_dora=False` in the LoraConfig."
                )
            layers.append((name, module))
    if not layers:
        raise ValueError(
            f"No LoRA layer with adapter {adapter_name!r} was found: pass a `peft_config` (a `LoraConfig`) to the "
            "trainer, or a PEFT model with that adapter."
        )
    return layers


class LoRAModulator:
    """Applies a [`Modulation`] to a PEFT model's LoRA layers (and optionally its reward head) through forward hooks.

    Hooks are registered once, on the `lora_A` module of `adapter_name` in every LoRA layer, and are the identity while
    no modulation is set. Because they sit on `lora_A`, they are inactive whenever the adapter is not running:
    `disable_adapter()`, another active adapter (TRL's "ref" adapter) or merged weights.

    The modulation stays set until [`LoRAModulator.clear`] so that the gradient-checkpointing recompute, which runs
    during `backward()`, sees the same per-example gates as the first forward. The batch dimension of a hooked call may
    be a multiple k of the modulation's (generation with `num_return_sequences` or beams expands the batch with
    `repeat_interleave`); the gates follow.
    """

    def __init__(self, model: nn.Module, adapter_name: str = "default", head_module: nn.Module | None = None):
        self.layers = find_lora_layers(model, adapter_name)
        self.adapter_name = adapter_name
        self.modulation: Modulation | None = None
        self._layer_gates: dict[torch.dtype, tuple[torch.Tensor, ...]] = {}  # per dtype: one (N, 1, r) per layer
        self._handles = []
        for index, (_, layer) in enumerate(self.layers):
            hook = self._make_lora_hook(index)
            self._handles.append(layer.lora_A[adapter_name].register_forward_hook(hook))
        if head_module is not None:
            self._handles.append(head_module.register_forward_hook(self._head_hook))

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def rank(self) -> int:
        ranks = {layer.r[self.adapter_name] for _, layer in self.layers}
        if len(ranks) != 1:
            raise ValueError(
                f"All LoRA layers must share one rank to be gated by the hypernetwork, got ranks {ranks}."
            )
        return ranks.pop()

    @staticmethod
    def _expand(rows: torch.Tensor, batch: int) -> torch.Tensor:
        if rows.shape[0] == batch:
            return rows
        if batch % rows.shape[0] != 0:
            raise RuntimeError(
                f"The modulation holds {rows.shape[0]} latents but the model was called with a batch of {batch}."
            )
        return rows.repeat_interleave(batch // rows.shape[0], dim=0)

    def _make_lora_hook(self, index: int):
        def hook(module, inputs, output):
            if self.modulation is None:
                return output
            gates = self._gates(output.dtype)[index]  # (N, 1, r)
            gates = self._expand(gates, output.shape[0])
            if output.dim() != 3:
                gates = gates.view(gates.shape[0], *([1] * (output.dim() - 2)), gates.shape[-1])
            return output * gates

        return hook

    def _head_hook(self, module, inputs, output):
        if self.modulation is None or self.modulation.head is None:
            return output
        hidden = inputs[0]  # (N, L, H)
        head = self._expand(self.modulation.head, hidden.shape[0]).to(hidden.dtype)  # (N, H)
        return output + (hidden * head.unsqueeze(1)).sum(dim=-1, keepdim=True)

    def _gates(self, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """The per-layer gates in `dtype`, cast and split once per modulation rather than once per LoRA layer: with
        hundreds of LoRA layers the per-layer slice, cast and reshape (and their backward) would cost more kernel
        launches than the gating itself."""
        if dtype not in self._layer_gates:
            self._layer_gates[dtype] = self.modulation.gates.to(dtype).unsqueeze(2).unbind(dim=1)
        return self._layer_gates[dtype]

    def set(self, modulation: Modulation | None) -> None:
        self.modulation = modulation
        self._layer_gates = {}

    def clear(self) -> None:
        self.set(None)

    @contextlib.contextmanager
    def apply(self, modulation: Modulation | None) -> Iterator[None]:
        """Run the model under `modulation` (e.g. for scoring or generation), then clear it."""
        previous = self.modulation
        self.set(modulation)
        try:
            yield
        finally:
            self.set(previous)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


@torch.no_grad()
def fold_latent_into_lora(model: nn.Module, gates: torch.Tensor, adapter_name: str = "default") -> None:
    """Fold one user's gates `(num_layers, rank)` into the LoRA B matrices in place: B_l <- B_l diag(g_l).

    Afterwards the plain LoRA adapter (no hypernetwork, no hooks) computes exactly the modulated model for that user.
    Apply it to a copy of the model, with the modulator removed or cleared.
    """
    layers = find_lora_layers(model, adapter_name)
    if gates.shape != (len(layers), gates.shape[-1]):
        raise ValueError(f"`gates` must have shape ({len(layers)}, rank), got {tuple(gates.shape)}.")
    for index, (_, layer) in enumerate(layers):
        weight = layer.lora_B[adapter_name].weight  # (out, r)
        weight.mul_(gates[index].to(weight.dtype).unsqueeze(0))
