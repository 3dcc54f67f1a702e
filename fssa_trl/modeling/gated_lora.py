# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Per-example, rank-wise gated LoRA: the gate is applied where PEFT computes LoRA, inside the layer.

For every gated LoRA layer l with rank r and a per-example gate vector g_l(z) in R^r (from [`LoRAHypernetwork`]) the
layer computes

    y = W x + B_l ((A_l x) * g_l(z) * scaling)

[`GatedLoraLinear`] is PEFT's own `lora.Linear` with this one change in `forward`: the gate and the LoRA scaling are
multiplied into `A x` in one op, and the separate `* scaling` after `B` is skipped, so a gated layer dispatches no more
forward ops than plain LoRA. It is registered through PEFT's custom-module mapping ([`gated_lora_config`]), so
`get_peft_model`, TRL's trainers, `save_pretrained` and `PeftModel.from_pretrained` build, train and save it as plain
LoRA: the adapter files are standard, and for a fixed z, `B diag(g(z))` is an ordinary LoRA B matrix
([`fold_latent_into_lora`]).

Per-call gates reach the layers through a context manager, [`LoRAModulator.apply`], in the spirit of PEFT's
`LoraModel._enable_peft_forward_hooks`: entering it hands each layer its gates, leaving it takes them back. No forward
hook is registered on any LoRA module. A layer is ungated (plain LoRA) outside the context, when its adapters are
disabled (`disable_adapter()`, the DPO reference pass), and for adapters other than the gated one (TRL's "ref"
adapter).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from peft import LoraConfig
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers.pytorch_utils import Conv1D

from .hypernetwork import Modulation


class GateSet:
    """The gates of one [`LoRAModulator.apply`] call: `(N, num_layers, rank)` gates times each layer's LoRA scaling,
    prepared (scaled, cast, expanded, split) once per batch size and dtype for all layers, not once per layer: with
    hundreds of LoRA layers the per-layer slice, cast and reshape would dispatch more ops than the gating itself.

    A call whose batch is a multiple k of N (generation with `num_return_sequences` or beam search expands the batch
    with `repeat_interleave`) gets each gate repeated k times.
    """

    def __init__(self, gates: torch.Tensor, scaling: float | torch.Tensor, adapter_name: str):
        self.gates = gates
        self.scaling = scaling
        self.adapter_name = adapter_name
        self._prepared: dict[tuple[int, torch.dtype, int], tuple[torch.Tensor, ...]] = {}

    def for_layer(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        """The gates of layer `index`, shaped to multiply `hidden = lora_A(x)` of shape `(B, ..., r)`."""
        key = (hidden.shape[0], hidden.dtype, hidden.dim())
        layers = self._prepared.get(key)
        if layers is None:
            layers = self._prepared[key] = self._prepare(*key)
        return layers[index]

    def _prepare(self, batch: int, dtype: torch.dtype, dim: int) -> tuple[torch.Tensor, ...]:
        rows = self.gates.shape[0]
        if batch % rows != 0:
            raise RuntimeError(
                f"The LoRA gates hold {rows} latents but the model was called with a batch of {batch}: give one latent "
                "per example (or per prompt, when generation expands the batch)."
            )
        gates = self.gates * self.scaling  # (N, L, r)
        if gates.dtype != dtype:
            gates = gates.to(dtype)
        if batch != rows:
            gates = gates.repeat_interleave(batch // rows, dim=0)
        if dim > 2:  # (B, L, 1, ..., r): broadcast over the token dimensions
            gates = gates.view(batch, gates.shape[1], *([1] * (dim - 2)), gates.shape[2])
        return gates.unbind(dim=1)


class GatedLoraLinear(LoraLinear):
    r"""PEFT's LoRA `Linear` layer whose `forward` multiplies `lora_A(x)` by per-example rank-wise gates.

    With gates set (inside [`LoRAModulator.apply`]) and the gated adapter active, it computes
    `base(x) + lora_B(lora_A(dropout(x)) * gates * scaling)`; otherwise it is exactly `lora.Linear`. Weights, merging,
    saving and loading are PEFT's. Built by PEFT from a config returned by [`gated_lora_config`].
    """

    # (gates, index of this layer), set and cleared by `LoRAModulator.apply` only.
    _fssa_gate: tuple[GateSet, int] | None = None

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        gate = self._fssa_gate
        if gate is None or self.disable_adapters:
            return super().forward(x, *args, **kwargs)
        gates, index = gate
        if self.merged:
            raise RuntimeError(
                "A gated LoRA layer has merged weights, so per-example gates cannot apply: call `unmerge_adapter()`, "
                "or fold one user's gates into the adapter with `fold_latent_into_lora` before merging."
            )
        if kwargs.get("adapter_names") is not None:
            raise ValueError("Per-example LoRA gates cannot be combined with PEFT's `adapter_names` batches.")
        self._check_forward_args(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        result_dtype = result.dtype
        for active_adapter in self.active_adapters:
            if active_adapter not in self.lora_A:
                continue
            lora_A = self.lora_A[active_adapter]
            lora_B = self.lora_B[active_adapter]
            dropout = self.lora_dropout[active_adapter]
            x = self._cast_input_dtype(x, lora_A.weight.dtype)
            if active_adapter == gates.adapter_name:
                hidden = lora_A(dropout(x))
                result = result + lora_B(hidden * gates.for_layer(index, hidden))  # gates include the scaling
            else:
                result = result + lora_B(lora_A(dropout(x))) * self.scaling[active_adapter]
        return result if result.dtype == result_dtype else result.to(result_dtype)

    def __repr__(self) -> str:
        return "fssa_trl.gated_" + super().__repr__()


def _dispatch_gated_lora(target: nn.Module, adapter_name: str, config: LoraConfig, **kwargs) -> nn.Module | None:
    """PEFT custom-module dispatcher: a [`GatedLoraLinear`] for `nn.Linear` and `Conv1D` layers (as PEFT's default
    dispatcher builds `lora.Linear` for them), `None` for any other layer type (quantized layers among them), which
    then falls through to PEFT's own dispatchers and is refused by [`find_gated_lora_layers`]."""
    base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
    if type(base) is nn.Linear:
        if config.fan_in_fan_out:
            warnings.warn(
                "fan_in_fan_out is set to True but the target module is `torch.nn.Linear`. Setting it False.",
                stacklevel=2,
            )
            config.fan_in_fan_out = False
        return GatedLoraLinear(target, adapter_name, config=config, **kwargs)
    if type(base) is Conv1D:
        if not config.fan_in_fan_out:
            warnings.warn(
                "fan_in_fan_out is set to False but the target module is `Conv1D`. Setting it True.", stacklevel=2
            )
            config.fan_in_fan_out = True
        return GatedLoraLinear(target, adapter_name, is_target_conv_1d_layer=True, config=config, **kwargs)
    return None


def gated_lora_config(config: LoraConfig) -> LoraConfig:
    """A copy of `config` with which PEFT builds [`GatedLoraLinear`] layers for linear projections.

    The registration goes through PEFT's custom-module mapping (`LoraConfig._register_custom_module`), which is not
    part of the saved `adapter_config.json`: the saved adapter is standard LoRA.

    Example:

    ```python
    >>> from peft import LoraConfig, get_peft_model
    >>> from fssa_trl.modeling import gated_lora_config
    >>> peft_model = get_peft_model(model, gated_lora_config(LoraConfig(r=16, target_modules="all-linear")))
    ```
    """
    if not isinstance(config, LoraConfig):
        raise ValueError(
            f"fssa_trl modulates LoRA adapters: `peft_config` must be a `peft.LoraConfig`, got {type(config).__name__}."
        )
    config = copy.deepcopy(config)
    config._register_custom_module({nn.Linear: _dispatch_gated_lora, Conv1D: _dispatch_gated_lora})
    return config


def find_gated_lora_layers(model: nn.Module, adapter_name: str = "default") -> list[tuple[str, GatedLoraLinear]]:
    """The gated LoRA layers of a PEFT model that carry `adapter_name`, in module order, as `(name, layer)`.

    Raises a `ValueError` naming the fix when a LoRA layer carrying the adapter cannot be gated (a plain PEFT layer,
    DoRA or another LoRA variant, an embedding, convolution or quantized layer), or when there is none.
    """
    layers = []
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer) or adapter_name not in module.lora_A:
            continue
        if not isinstance(module, GatedLoraLinear):
            raise ValueError(
                f"LoRA layer {name!r} ({type(module).__module__}.{type(module).__name__}) cannot be gated: fssa_trl gates "
                "the LoRA layers of `nn.Linear` and `Conv1D` projections built from `gated_lora_config(...)`. Pass the "
                "base model and `peft_config=LoraConfig(...)` to the trainer (it builds the gated layers), or build the "
                "PEFT model with `get_peft_model(model, fssa_trl.modeling.gated_lora_config(lora_config))`; restrict "
                "`target_modules` to linear projections (quantized and embedding layers are not gated)."
            )
        if adapter_name in module.lora_variant:
            raise ValueError(
                f"LoRA layer {name!r} uses the LoRA variant {type(module.lora_variant[adapter_name]).__name__}, which "
                "cannot be gated rank-wise: set `use_dora=False` (and no other variant) in the LoraConfig."
            )
        layers.append((name, module))
    if not layers:
        raise ValueError(
            f"No LoRA layer with adapter {adapter_name!r} was found: pass a `peft_config` (a `LoraConfig`) to the "
            "trainer, or a PEFT model built with `gated_lora_config`."
        )
    return layers


class LoRAModulator:
    """Applies a [`Modulation`] to a PEFT model's gated LoRA layers (and optionally its reward head), per call.

    `with modulator.apply(modulation): ...` hands every [`GatedLoraLinear`] of `adapter_name` its slice of the gates
    for the duration of the block and takes them back on exit; nothing is registered on the LoRA modules. In training,
    the block must also cover `backward()`: gradient checkpointing recomputes the gated layers there, and the recompute
    must see the same gates (the NP trainers hold it open for the whole training step).

    With `head_module` and a modulation that carries `head`, the reward head computes `score(h) + h . head` inside
    the block (a forward hook on the head, registered on entry and removed on exit, as PEFT does for `adapter_names`).

    Args:
        model (`nn.Module`): a PEFT model whose LoRA layers are [`GatedLoraLinear`].
        adapter_name (`str`, *optional*, defaults to `"default"`): the gated adapter.
        head_module (`nn.Module`, *optional*): the reward head to condition.

    Example:

    ```python
    >>> modulator = LoRAModulator(peft_model)
    >>> hypernetwork = LoRAHypernetwork(latent_dim=8, num_layers=modulator.num_layers, rank=modulator.rank)
    >>> with modulator.apply(hypernetwork(z)):  # z: (B, 8), one latent per example
    ...     logits = peft_model(input_ids).logits
    ```
    """

    def __init__(self, model: nn.Module, adapter_name: str = "default", head_module: nn.Module | None = None):
        self.layers = find_gated_lora_layers(model, adapter_name)
        self.adapter_name = adapter_name
        self.head_module = head_module

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def rank(self) -> int:
        ranks = {layer.r[self.adapter_name] for _, layer in self.layers}
        if len(ranks) != 1:
            raise ValueError(
                f"All LoRA layers must share one rank to be gated by the hypernetwork, got ranks {ranks}: remove "
                "`rank_pattern` from the LoraConfig."
            )
        return ranks.pop()

    def _scaling(self, device: torch.device) -> float | torch.Tensor:
        """The layers' LoRA scaling, read at each call (PEFT may rescale adapters): one number when every layer
        shares it (the usual case), else a `(1, num_layers, 1)` tensor (`alpha_pattern`)."""
        scalings = [float(layer.scaling[self.adapter_name]) for _, layer in self.layers]
        if len(set(scalings)) == 1:
            return scalings[0]
        return torch.tensor(scalings, device=device).view(1, -1, 1)

    def gates_active(self) -> bool:
        """Whether a forward pass run now would apply the gates (adapter enabled, active and not merged)."""
        layer = self.layers[0][1]
        return not layer.disable_adapters and not layer.merged and self.adapter_name in layer.active_adapters

    @contextlib.contextmanager
    def apply(self, modulation: Modulation | None) -> Iterator[None]:
        """Run the model under `modulation` (`None`: plain LoRA) inside the block; restore the previous gates after."""
        if modulation is None:
            yield
            return
        if modulation.gates.shape[1:] != (self.num_layers, self.rank):
            raise ValueError(
                f"The modulation's gates have shape {tuple(modulation.gates.shape)}, expected (N, {self.num_layers}, "
                f"{self.rank}) for this model's gated LoRA layers."
            )
        gates = GateSet(modulation.gates, self._scaling(modulation.gates.device), self.adapter_name)
        previous = [layer._fssa_gate for _, layer in self.layers]
        handle = None
        try:
            for index, (_, layer) in enumerate(self.layers):
                layer._fssa_gate = (gates, index)
            if modulation.head is not None:
                if self.head_module is None:
                    raise ValueError("The modulation conditions the reward head, but no `head_module` was given.")
                handle = self.head_module.register_forward_hook(_head_hook(modulation.head))
            yield
        finally:
            for (_, layer), gate in zip(self.layers, previous, strict=True):
                layer._fssa_gate = gate
            if handle is not None:
                handle.remove()


def _head_hook(head: torch.Tensor):
    """Forward hook adding `h . head` to the reward head's output `(B, L, 1)`, one `head` row per example."""

    def hook(module, inputs, output):
        hidden = inputs[0]  # (B, L, H)
        rows = head
        if hidden.shape[0] != rows.shape[0]:
            if hidden.shape[0] % rows.shape[0]:
                raise RuntimeError(
                    f"The reward-head modulation holds {rows.shape[0]} latents but the head got a batch of "
                    f"{hidden.shape[0]}."
                )
            rows = rows.repeat_interleave(hidden.shape[0] // rows.shape[0], dim=0)
        return output + (hidden * rows.to(hidden.dtype).unsqueeze(1)).sum(dim=-1, keepdim=True)

    return hook


@torch.no_grad()
def folded_lora_weights(
    model: nn.Module, gates: torch.Tensor, adapter_name: str = "default"
) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """Each gated layer's LoRA B weight with the value it takes when one user's gates `(num_layers, rank)` are folded
    in, `B_l diag(g_l)`; the model is not changed ([`fold_latent_into_lora`] and the exports apply the values)."""
    layers = find_gated_lora_layers(model, adapter_name)
    if gates.shape != (len(layers), gates.shape[-1]):
        raise ValueError(f"`gates` must have shape ({len(layers)}, rank), got {tuple(gates.shape)}.")
    folded = []
    for index, (_, layer) in enumerate(layers):
        weight = layer.lora_B[adapter_name].weight  # (out, r)
        folded.append((weight, weight * gates[index].to(weight.dtype).unsqueeze(0)))
    return folded


@torch.no_grad()
def fold_latent_into_lora(model: nn.Module, gates: torch.Tensor, adapter_name: str = "default") -> None:
    """Fold one user's gates `(num_layers, rank)` into the LoRA B matrices in place: B_l <- B_l diag(g_l).

    Afterwards the plain LoRA adapter (outside any [`LoRAModulator.apply`] block, or loaded without fssa_trl) computes
    exactly the modulated model for that user. Apply it to a copy of the model, or export the user without copying
    it with `SteerableRewardModel.export` / `SteerablePolicy.export`.
    """
    for weight, value in folded_lora_weights(model, gates, adapter_name):
        weight.copy_(value)
