# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""The trainable neural-process modules, their JSON config and their safetensors file."""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .hypernetwork import LoRAHypernetwork
from .latent_encoder import NPLatentEncoder
from .reward_head import EmbeddingRewardDecoder

FSSA_CONFIG_NAME = "fssa_config.json"
FSSA_WEIGHTS_NAME = "fssa_np.safetensors"
NP_PREFIX = "fssa_np."  # attribute name under which trainers attach NPModules to the model


class NPModules(nn.Module):
    """Container of the latent encoder and either a LoRA hypernetwork (LoRA models) or a reward decoder (frozen
    embeddings). Attached to the trained model as `model.fssa_np` so that the optimizer, Accelerate and DeepSpeed see
    its parameters like any other.

    Args:
        encoder (`dict`): keyword arguments of [`NPLatentEncoder`].
        hypernetwork (`dict`, *optional*): keyword arguments of [`LoRAHypernetwork`].
        decoder (`dict`, *optional*): keyword arguments of [`EmbeddingRewardDecoder`].
    """

    def __init__(self, encoder: dict[str, Any], hypernetwork: dict[str, Any] | None = None, decoder=None):
        super().__init__()
        self.init_kwargs = {"encoder": encoder, "hypernetwork": hypernetwork, "decoder": decoder}
        self.encoder = NPLatentEncoder(**encoder)
        self.hypernetwork = LoRAHypernetwork(**hypernetwork) if hypernetwork else None
        self.decoder = EmbeddingRewardDecoder(**decoder) if decoder else None


def save_np_modules(
    output_dir: str, state_dict: dict[str, torch.Tensor], init_kwargs: dict, extra_config: dict[str, Any]
) -> None:
    """Write `fssa_np.safetensors` (the state dict, `fssa_np.` prefix stripped) and `fssa_config.json`."""
    os.makedirs(output_dir, exist_ok=True)
    tensors = {
        k[len(NP_PREFIX) :] if k.startswith(NP_PREFIX) else k: v.detach().cpu().contiguous()
        for k, v in state_dict.items()
    }
    save_file(tensors, os.path.join(output_dir, FSSA_WEIGHTS_NAME), metadata={"format": "pt"})
    with open(os.path.join(output_dir, FSSA_CONFIG_NAME), "w", encoding="utf-8") as f:
        json.dump({"np_modules": init_kwargs, **extra_config}, f, indent=2, sort_keys=True)


def load_fssa_config(path: str) -> dict[str, Any]:
    config_file = os.path.join(path, FSSA_CONFIG_NAME)
    if not os.path.isfile(config_file):
        raise ValueError(f"{path!r} has no {FSSA_CONFIG_NAME}: it was not saved by an fssa_trl trainer.")
    with open(config_file, encoding="utf-8") as f:
        return json.load(f)


def load_np_state_dict(path: str) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(path, FSSA_WEIGHTS_NAME))


def load_np_modules(path: str) -> tuple[NPModules, dict[str, Any]]:
    """Rebuild [`NPModules`] from a folder written by [`save_np_modules`]. Returns the modules and the config."""
    config = load_fssa_config(path)
    modules = NPModules(**config["np_modules"])
    modules.load_state_dict(load_np_state_dict(path))
    return modules, config
