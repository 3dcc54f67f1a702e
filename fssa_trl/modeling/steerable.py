# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""What steerable reward models and steerable policies share: a user's context set -> latent z."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..data.embeddings import ContextEmbeddingStore, TextEmbedder, pair_text
from .hypernetwork import LoRAModulator
from .np_modules import NPModules

Context = Sequence[dict[str, Any]] | None


class SteerableModel(nn.Module):
    """Base of [`SteerableRewardModel`] and [`SteerablePolicy`]: holds the model with its NP modules (`model.fssa_np`),
    the tokenizer, the context embedder and the LoRA modulator, and infers a user's latent from a context set.

    Args:
        model (`nn.Module`): the trained model (a PEFT model with `fssa_np` attached, an `NPEmbeddingRewardModel`,
            or a plain model).
        tokenizer: its tokenizer.
        fssa_config (`dict`, *optional*): the content of `fssa_config.json`; `None` for a plain model.
        embedder ([`TextEmbedder`], *optional*): embeds context texts (`None` for precomputed embeddings).
        modulator ([`LoRAModulator`], *optional*): the hooks that apply the latent to the LoRA layers.
    """

    def __init__(self, model, tokenizer=None, fssa_config=None, embedder: TextEmbedder | None = None, modulator=None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.fssa_config = fssa_config
        self.mode = fssa_config["mode"] if fssa_config else "plain"
        self.embedder = embedder
        self._store = ContextEmbeddingStore(embedder)
        self.modulator: LoRAModulator | None = modulator

    @property
    def np_modules(self) -> NPModules | None:
        return getattr(self.model, "fssa_np", None)

    # ---------------------------------------------------------------------------------------------- embeddings
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def embed_pairs(self, prompts: Sequence, responses: Sequence) -> torch.Tensor:
        """`(N, D)` embeddings e(prompt, response), each distinct text embedded once per model instance."""
        if self.embedder is None:
            raise ValueError(
                "This model was trained on precomputed embeddings: give context pairs as dicts with "
                "'chosen_embedding' and 'rejected_embedding' vectors."
            )
        texts = [pair_text(p, r, self.tokenizer) for p, r in zip(prompts, responses, strict=True)]
        indices = self._store.add_texts(texts)
        return self._store.table[indices]

    def _context_tensors(self, context: Context) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dim = self.np_modules.encoder.embedding_dim
        if not context:
            empty = torch.zeros(1, 0, dim)
            return empty, empty.clone(), torch.zeros(1, 0, dtype=torch.bool)
        for i, pair in enumerate(context):
            if not isinstance(pair, dict) or not (
                {"chosen", "rejected"} <= set(pair) or {"chosen_embedding", "rejected_embedding"} <= set(pair)
            ):
                raise ValueError(
                    f"context[{i}] must be a dict with 'chosen' and 'rejected' (and optionally 'prompt'), or with "
                    f"'chosen_embedding' and 'rejected_embedding'; got {pair!r}."
                )
        if "chosen_embedding" in context[0]:
            chosen = torch.tensor([p["chosen_embedding"] for p in context], dtype=torch.float32)
            rejected = torch.tensor([p["rejected_embedding"] for p in context], dtype=torch.float32)
        else:
            prompts = [p.get("prompt", "") for p in context]
            chosen = self.embed_pairs(prompts, [p["chosen"] for p in context])
            rejected = self.embed_pairs(prompts, [p["rejected"] for p in context])
        if chosen.shape[-1] != dim:
            raise ValueError(f"Context embeddings have dimension {chosen.shape[-1]}, the encoder expects {dim}.")
        return chosen.unsqueeze(0), rejected.unsqueeze(0), torch.ones(1, len(context), dtype=torch.bool)

    @torch.no_grad()
    def latent(self, context: Context = None) -> torch.Tensor:
        """The user latent z `(latent_dim,)` inferred from `context` (the population prior for `[]` or `None`)."""
        if self.np_modules is None:
            raise ValueError("A plain reward model has no latent.")
        encoder = self.np_modules.encoder
        param = next(encoder.parameters())
        chosen, rejected, mask = (t.to(param.device) for t in self._context_tensors(context))
        return encoder(chosen.to(param.dtype), rejected.to(param.dtype), mask).mean[0]


def load_lora_np_model(path: str, auto_class, config: dict[str, Any], base_model_name_or_path=None, dtype=None, **kw):
    """Base model + PEFT adapter + NP modules from a folder written by an NP trainer (safetensors and JSON only).

    Returns the PEFT model (with `fssa_np` attached), its tokenizer and the context embedder.
    """
    from peft import PeftConfig, PeftModel
    from transformers import AutoTokenizer

    from .np_modules import load_np_state_dict

    base_name = base_model_name_or_path or PeftConfig.from_pretrained(path).base_model_name_or_path
    tokenizer = AutoTokenizer.from_pretrained(path)
    base = auto_class.from_pretrained(base_name, dtype=dtype, **kw)
    if tokenizer.pad_token_id is not None:
        base.config.get_text_config().pad_token_id = tokenizer.pad_token_id
    model = PeftModel.from_pretrained(base, path)
    modules = NPModules(**config["np_modules"])
    modules.load_state_dict(load_np_state_dict(path))
    model.fssa_np = modules.to(next(p.dtype for p in model.parameters() if p.is_floating_point()))
    source = config["context_embedding"]
    embed_kwargs = dict(pooling=source["pooling"], max_length=source["max_length"])
    embedder = None
    if source["source"] == "base":
        embedder = TextEmbedder(model, tokenizer, **embed_kwargs)
    elif source["source"] != "precomputed":
        embedder = TextEmbedder.from_pretrained(source["name_or_path"], **embed_kwargs)
    return model, tokenizer, embedder
