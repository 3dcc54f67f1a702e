# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""The trainable neural-process modules: building them from a saved config, encoding episodes, and their files.

A folder written by an NP trainer holds `fssa_config.json` ([`SteerableConfig`]) and `fssa_np.safetensors` (the
state dict of [`NPModules`]); [`save_np_modules`] writes both and [`load_np_modules`] is the one way to read them
back (used by `from_pretrained` and by checkpoint resume alike).
"""

from __future__ import annotations

import dataclasses
import os

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.utils import ModelOutput

from ..data.embeddings import POOLINGS
from .config import FSSA_CONFIG_NAME, SteerableConfig
from .hypernetwork import LoRAHypernetwork
from .latent_encoder import NPLatentEncoder, gaussian_kl
from .reward_head import EmbeddingRewardDecoder

FSSA_WEIGHTS_NAME = "fssa_np.safetensors"
NP_PREFIX = "fssa_np."  # attribute name under which trainers attach NPModules to the model


class NPModules(nn.Module):
    """Container of the latent encoder and either a LoRA hypernetwork (LoRA models) or a reward decoder (frozen
    embeddings). Attached to the trained model as `model.fssa_np`, so that the optimizer, Accelerate and DeepSpeed see
    its parameters like any other.

    Args:
        encoder ([`NPLatentEncoder`]): the context-set encoder.
        hypernetwork ([`LoRAHypernetwork`], *optional*): z -> LoRA gates.
        decoder ([`EmbeddingRewardDecoder`], *optional*): (e(x, y), z) -> reward.
    """

    def __init__(
        self,
        encoder: NPLatentEncoder,
        hypernetwork: LoRAHypernetwork | None = None,
        decoder: EmbeddingRewardDecoder | None = None,
    ):
        super().__init__()
        self.encoder = encoder
        self.hypernetwork = hypernetwork
        self.decoder = decoder

    @classmethod
    def from_config(cls, config: SteerableConfig) -> NPModules:
        """The modules a saved config describes (freshly initialised)."""
        hypernetwork = getattr(config, "hypernetwork", None)
        decoder = getattr(config, "decoder", None)
        return cls(
            NPLatentEncoder(**dataclasses.asdict(config.encoder)),
            LoRAHypernetwork(**dataclasses.asdict(hypernetwork)) if hypernetwork is not None else None,
            EmbeddingRewardDecoder(**dataclasses.asdict(decoder)) if decoder is not None else None,
        )


@dataclasses.dataclass
class EpisodeLatents(ModelOutput):
    """Latents of a batch of episodes. `z_rows` has one row per target pair `(N, latent_dim)`; `kl` is the mean
    KL(q(z | targets) || q(z | context)) of a Gaussian latent in training, else `None`; `btl_loss` is the auxiliary
    NP-BTL loss of the LoRA trainers when computed."""

    z_rows: torch.Tensor | None = None
    kl: torch.Tensor | None = None
    btl_loss: torch.Tensor | None = None


def encode_episodes(encoder: NPLatentEncoder, batch: dict[str, torch.Tensor], training: bool) -> EpisodeLatents:
    """z for every target pair of a collated batch (see [`DataCollatorForContextSets`]).

    Deterministic latent: z = f(context). Gaussian latent in training (the neural-process ELBO): z ~ q(z | targets),
    plus KL(q(z | targets) || q(z | context)); at evaluation z is the mean of q(z | context).
    """
    context = encoder(batch["context_chosen_embeddings"], batch["context_rejected_embeddings"], batch["context_mask"])
    if encoder.latent_type == "gaussian" and training:
        targets = encoder(
            batch["target_chosen_embeddings"], batch["target_rejected_embeddings"], batch["target_mask"], sample=True
        )
        return EpisodeLatents(targets.z[batch["target_episode"]], gaussian_kl(targets, context).mean())
    return EpisodeLatents(context.z[batch["target_episode"]], None)


def np_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The `fssa_np.*` entries (prefix stripped) of a state dict (e.g. ZeRO-3 consolidated), or of `model`'s own."""
    state_dict = state_dict if state_dict is not None else model.state_dict()
    found = {k[len(NP_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(NP_PREFIX)}
    if not found:
        raise RuntimeError("The state dict has no `fssa_np.` entries: the NP modules would not be saved.")
    return found


def save_np_modules(output_dir: str, state_dict: dict[str, torch.Tensor], config: SteerableConfig) -> None:
    """Write `fssa_np.safetensors` (`state_dict` of [`NPModules`]) and `fssa_config.json`."""
    os.makedirs(output_dir, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    save_file(tensors, os.path.join(output_dir, FSSA_WEIGHTS_NAME), metadata={"format": "pt"})
    config.save_pretrained(output_dir)


def check_safetensors(file: str) -> None:
    """Raise a `ValueError` naming `file` if it is not a complete safetensors file (its header is read, and must
    cover the file exactly: a truncated or padded file fails)."""
    try:
        with safe_open(file, framework="pt"):
            pass
    except (SafetensorError, OSError) as error:
        raise ValueError(
            f"{file} is corrupt or incomplete ({error}): an interrupted save, copy or download? Save or download the "
            "model again."
        ) from error


PRIOR_SHIFT_KEY = "encoder.prior_shift"


def load_np_weights(modules: NPModules, path: str) -> None:
    """Load `<path>/fssa_np.safetensors` into `modules` (strict: every key must match)."""
    file = os.path.join(path, FSSA_WEIGHTS_NAME)
    if not os.path.isfile(file):
        raise ValueError(f"{path!r} has no {FSSA_WEIGHTS_NAME}: the NP modules cannot be restored.")
    check_safetensors(file)
    state_dict = load_file(file)
    # Saved before the calibrated prior existed (before 0.2.0): an uncalibrated prior is a zero shift.
    state_dict.setdefault(PRIOR_SHIFT_KEY, torch.zeros_like(modules.encoder.prior_shift))
    try:
        modules.load_state_dict(state_dict)  # copied into the modules' own dtype and device
    except RuntimeError as error:  # missing, unexpected or mis-shaped tensors
        raise RuntimeError(f"{file} does not match {os.path.join(path, FSSA_CONFIG_NAME)}: {error}") from error


def load_np_modules(
    path: str, config_class: type[SteerableConfig] = SteerableConfig
) -> tuple[NPModules, SteerableConfig]:
    """Rebuild [`NPModules`] from a folder written by [`save_np_modules`]; the config must be a `config_class`.

    Returns the modules (float32, on CPU) and the config.
    """
    config = config_class.from_pretrained(path)
    source = os.path.join(path, FSSA_CONFIG_NAME)
    if config.context_embedding.pooling not in POOLINGS:
        raise ValueError(
            f"{source}: field 'context_embedding.pooling' must be one of {POOLINGS}, got "
            f"{config.context_embedding.pooling!r}."
        )
    try:
        modules = NPModules.from_config(config)
    except ValueError as error:  # a value the modules refuse (an unknown aggregation, head, ...)
        raise ValueError(f"{source}: {error}") from error
    load_np_weights(modules, path)
    return modules, config
