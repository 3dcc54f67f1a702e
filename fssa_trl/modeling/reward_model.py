# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Inference-time steerable reward model: score responses for one user from a handful of that user's choices."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..data.embeddings import TextEmbedder
from .embedding_model import NPEmbeddingRewardConfig, NPEmbeddingRewardModel
from .hypernetwork import LoRAModulator
from .np_modules import load_fssa_config, load_np_state_dict
from .steerable import Context, SteerableModel, load_lora_np_model


def reward_input_ids(tokenizer, prompt, response) -> list[int]:
    """Token ids of (prompt, response) exactly as TRL's `RewardTrainer` prepares them: conversations through the
    chat template, plain text as `prompt + response + eos`."""
    if isinstance(response, list):
        return tokenizer.apply_chat_template(list(prompt or []) + response, tokenize=True, return_dict=True)[
            "input_ids"
        ]
    text = (prompt or "") + response
    if tokenizer.eos_token and not text.endswith(tokenizer.eos_token):
        text += tokenizer.eos_token
    return tokenizer(text=text)["input_ids"]


def reward_head_module(model: nn.Module) -> nn.Module:
    """The reward head (`score` or `classifier`) of a sequence-classification model, inside PEFT or not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name in ("score", "classifier"):
        if hasattr(base, name):
            return getattr(base, name)
    raise ValueError("`condition_reward_head=True` needs a sequence-classification model with a `score` head.")


class SteerableRewardModel(SteerableModel):
    r"""A few-shot steerable reward model: `score(prompts, responses, context=ctx)` gives one user's rewards, where
    `ctx` is a list of that user's choices `{"prompt", "chosen", "rejected"}` (no gradient step involved).

    Load one saved by [`NPRewardTrainer`] with [`SteerableRewardModel.from_pretrained`], or wrap a trainer's model
    with [`NPRewardTrainer.steerable_model`]. A plain reward model (`fssa_config=None`) is accepted too; it ignores
    the context, which makes it a baseline for [`evaluate_few_shot`].

    Example:

    ```python
    >>> from fssa_trl import SteerableRewardModel
    >>> rm = SteerableRewardModel.from_pretrained("np-rm")
    >>> ctx = [{"prompt": "Q: 2+2? A: ", "chosen": "4.", "rejected": "Four, because two plus two is four."}]
    >>> rm.score(["Q: capital of France? A: "] * 2, ["Paris.", "It is Paris, on the Seine."], context=ctx)
    tensor([ 0.8312, -0.4150])
    ```
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer=None,
        fssa_config: dict[str, Any] | None = None,
        embedder: TextEmbedder | None = None,
        modulator: LoRAModulator | None = None,
    ):
        if fssa_config and fssa_config["mode"] == "lora" and modulator is None:
            head = reward_head_module(model) if fssa_config.get("condition_reward_head") else None
            modulator = LoRAModulator(model, fssa_config.get("adapter_name", "default"), head_module=head)
        super().__init__(model, tokenizer, fssa_config, embedder, modulator)

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        base_model_name_or_path: str | None = None,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> SteerableRewardModel:
        """Load a model saved by [`NPRewardTrainer`] (`fssa_config.json`, `fssa_np.safetensors` and, for LoRA models,
        the PEFT adapter). Only safetensors and JSON files are read.

        Args:
            path (`str`): the output folder or a checkpoint folder.
            base_model_name_or_path (`str`, *optional*): override the base model recorded in the adapter config.
            dtype (`torch.dtype`, *optional*): dtype of the base model (default float32).
            device (`str` or `torch.device`, *optional*): where to put the model.
        """
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        config = load_fssa_config(path)
        source = config["context_embedding"]
        embed_kwargs = dict(pooling=source["pooling"], max_length=source["max_length"])
        if config["mode"] == "embedding":
            model = NPEmbeddingRewardModel(NPEmbeddingRewardConfig(np_modules=config["np_modules"]))
            model.fssa_np.load_state_dict(load_np_state_dict(path))
            embedder = tokenizer = None
            if source["source"] != "precomputed":
                # The tokenizer the trainer used is saved beside the weights.
                tokenizer = AutoTokenizer.from_pretrained(path)
                embedder = TextEmbedder.from_pretrained(source["name_or_path"], tokenizer=tokenizer, **embed_kwargs)
        else:
            model, tokenizer, embedder = load_lora_np_model(
                path, AutoModelForSequenceClassification, config, base_model_name_or_path, dtype, num_labels=1
            )
        if device is not None:
            model.to(device)
            if embedder is not None and embedder.model is not model:
                embedder.model.to(device)
        return cls(model.eval(), tokenizer, config, embedder)

    # --------------------------------------------------------------------------------------------------- scoring
    @torch.no_grad()
    def score(
        self,
        prompts: Sequence,
        responses: Sequence,
        context: Context = None,
        latent: torch.Tensor | None = None,
        batch_size: int = 16,
    ) -> torch.Tensor:
        """One float reward per (prompt, response) for the user described by `context` (or by `latent`).

        Returns a float32 CPU tensor of shape `(N,)`.
        """
        if len(prompts) != len(responses):
            raise ValueError(f"Got {len(prompts)} prompts but {len(responses)} responses.")
        if self.mode != "plain" and latent is None:
            latent = self.latent(context)
        if self.mode == "embedding":
            embeddings = (
                self.embed_pairs(prompts, responses)
                if self.embedder is not None
                else torch.as_tensor(responses, dtype=torch.float32)  # precomputed: responses are embeddings
            )
            param = next(self.model.parameters())
            embeddings = embeddings.to(param.device, param.dtype)
            rewards, _ = self.np_modules.decoder(embeddings, latent.to(param).expand(len(embeddings), -1))
            return rewards.float().cpu()
        return self._score_tokens(prompts, responses, latent, batch_size)

    def _score_tokens(self, prompts, responses, latent, batch_size) -> torch.Tensor:
        device = self._device()
        ids = [reward_input_ids(self.tokenizer, p, r) for p, r in zip(prompts, responses, strict=True)]
        pad_id = self.tokenizer.pad_token_id
        out = []
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            length = max(len(x) for x in chunk)
            input_ids = torch.full((len(chunk), length), pad_id, dtype=torch.long)
            mask = torch.zeros_like(input_ids)
            for row, x in enumerate(chunk):
                input_ids[row, : len(x)] = torch.tensor(x)
                mask[row, : len(x)] = 1
            modulation = None
            if latent is not None:
                modulation = self.np_modules.hypernetwork(latent.unsqueeze(0).expand(len(chunk), -1))
            with self.modulator.apply(modulation) if self.modulator is not None else torch.no_grad():
                logits = self.model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
            out.append(logits.squeeze(-1).float().cpu())
        return torch.cat(out)
