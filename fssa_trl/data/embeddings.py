# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Context embeddings e(prompt, response): computed once per distinct text, cached, looked up by index.

Three sources, all behind [`ContextEmbeddingStore`]:
- a precomputed column of vectors,
- the frozen base model itself (adapters off, no grad, pooled last hidden state),
- any Hugging Face encoder given by name or path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from .collator import right_pad
from .validation import EMBEDDING_COLUMNS

logger = logging.getLogger(__name__)

POOLINGS = ("mean", "last")
PROGRESS_MIN_BATCHES = 10  # fewer forward passes than this take no time worth a progress bar


def pair_text(prompt, response, tokenizer=None) -> str:
    """The text embedded for a (prompt, response): plain strings are concatenated (as TRL's RewardTrainer does);
    conversations are rendered with the tokenizer's chat template, or as `role: content` lines without one."""
    if isinstance(response, str):
        return (prompt or "") + response
    messages = list(prompt or []) + list(response)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _backbone(model: nn.Module) -> nn.Module:
    """The transformer body (no task head) of a PEFT or transformers model."""
    if hasattr(model, "get_base_model"):  # PeftModel
        model = model.get_base_model()
    return getattr(model, "base_model", model)


def _rank() -> int:
    """Global rank of this process (0 outside distributed runs): only rank 0 shows progress bars."""
    return (
        torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
    )


@contextlib.contextmanager
def _gathered(model: nn.Module):
    """Gather ZeRO-3 partitioned parameters for a one-off forward outside the DeepSpeed engine."""
    params = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if not params:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


class TextEmbedder:
    """Pooled last hidden states of a frozen transformer, computed without gradients and with adapters disabled.

    Args:
        model (`nn.Module`): a transformers model (any head; only its body runs) or a PEFT model wrapping one.
        tokenizer: the matching tokenizer.
        pooling (`str`, *optional*, defaults to `"mean"`): `"mean"` over non-pad tokens or `"last"` non-pad token.
        max_length (`int`, *optional*, defaults to `256`): texts are truncated to this many tokens.
        batch_size (`int`, *optional*, defaults to `32`): texts per forward pass.
        name (`str`, *optional*): identifies the embedder in cache keys (model name or path).
    """

    def __init__(
        self, model, tokenizer, pooling: str = "mean", max_length: int = 256, batch_size: int = 32, name=None
    ):
        if pooling not in POOLINGS:
            raise ValueError(f"`context_embedding_pooling` must be one of {POOLINGS}, got {pooling!r}.")
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.max_length = max_length
        self.batch_size = batch_size
        self.name = name or getattr(getattr(model, "config", None), "_name_or_path", type(model).__name__)

    @classmethod
    def from_pretrained(cls, name_or_path: str, tokenizer=None, **kwargs) -> TextEmbedder:
        """Load any Hugging Face encoder (e.g. `sentence-transformers/all-MiniLM-L6-v2`) as a frozen embedder."""
        from transformers import AutoModel, AutoTokenizer

        model = AutoModel.from_pretrained(name_or_path).eval().requires_grad_(False)
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(name_or_path)
        return cls(model, tokenizer, name=name_or_path, **kwargs)

    @property
    def fingerprint(self) -> str:
        return json.dumps([str(self.name), self.pooling, self.max_length])

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """`(N, D)` float32 CPU embeddings of `texts`."""
        if len(texts) == 0:
            raise ValueError("No texts to embed.")
        body = _backbone(self.model)
        was_training = body.training
        body.eval()
        disable = self.model.disable_adapter() if hasattr(self.model, "disable_adapter") else contextlib.nullcontext()
        device = next(body.parameters()).device
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # less padding
        out = [None] * len(texts)
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id or 0
        starts = range(0, len(order), self.batch_size)
        progress = tqdm(
            starts, desc="Embedding texts", unit="batch", disable=len(starts) < PROGRESS_MIN_BATCHES or _rank() != 0
        )
        with disable, _gathered(body):
            for start in progress:
                batch = [texts[i] for i in order[start : start + self.batch_size]]
                ids = [self.tokenizer(t, truncation=True, max_length=self.max_length)["input_ids"] for t in batch]
                input_ids, mask = right_pad(ids, pad_id), right_pad([[1] * len(x) for x in ids])
                hidden = body(input_ids=input_ids.to(device), attention_mask=mask.to(device)).last_hidden_state
                hidden, mask = hidden.float(), mask.to(hidden.device)
                if self.pooling == "mean":
                    pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
                else:
                    pooled = hidden[torch.arange(len(ids), device=hidden.device), mask.sum(1) - 1]
                for row, i in enumerate(order[start : start + self.batch_size]):
                    out[i] = pooled[row].cpu()
        body.train(was_training)
        return torch.stack(out)


class ContextEmbeddingStore:
    """A table of distinct embeddings, indexed by a hash of their text (or of the vector for precomputed columns).

    A text is embedded the first time it is seen and never again; datasets refer to rows of the table by index. With
    `cache_dir`, text embeddings also persist across runs in `<cache_dir>/<hash of the embedder>.safetensors`.
    """

    def __init__(self, embedder: TextEmbedder | None = None, cache_dir: str | None = None):
        self.embedder = embedder
        self.cache_dir = cache_dir
        self._rows: list[torch.Tensor] = []
        self._index: dict[bytes, int] = {}
        self._table: torch.Tensor | None = None
        self._disk: dict[bytes, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def dim(self) -> int | None:
        return self._rows[0].shape[-1] if self._rows else None

    @property
    def table(self) -> torch.Tensor:
        """`(U, D)` float32 tensor of all distinct embeddings."""
        if self._table is None or self._table.shape[0] != len(self._rows):
            self._table = torch.stack(self._rows) if self._rows else torch.zeros(0, 0)
        return self._table

    def _append(self, key: bytes, vector: torch.Tensor) -> int:
        if self.dim is not None and vector.shape[-1] != self.dim:
            raise ValueError(f"Embedding dimension mismatch: got {vector.shape[-1]}, the store holds {self.dim}.")
        self._index[key] = len(self._rows)
        self._rows.append(vector)
        return self._index[key]

    def add_vectors(self, vectors: torch.Tensor) -> list[int]:
        """Add precomputed `(N, D)` vectors (deduplicated), returning their row indices."""
        vectors = vectors.detach().to(torch.float32).cpu()
        indices = []
        for vector in vectors:
            key = hashlib.sha1(vector.numpy().tobytes()).digest()
            indices.append(self._index[key] if key in self._index else self._append(key, vector))
        return indices

    def _cache_path(self) -> str | None:
        if self.cache_dir is None:
            return None
        digest = hashlib.sha1(self.embedder.fingerprint.encode()).hexdigest()[:16]
        return os.path.join(self.cache_dir, f"embeddings-{digest}.safetensors")

    def _load_disk(self) -> dict[bytes, torch.Tensor]:
        if self._disk is None:
            self._disk = {}
            path = self._cache_path()
            if path and os.path.exists(path):
                tensors = load_file(path)
                for key, vector in zip(tensors["keys"], tensors["embeddings"], strict=True):
                    self._disk[bytes(key.tolist())] = vector
        return self._disk

    def _save_disk(self) -> None:
        path = self._cache_path()
        if path is None:
            return
        os.makedirs(self.cache_dir, exist_ok=True)
        keys = list(self._disk)
        save_file(
            {
                "keys": torch.tensor([list(k) for k in keys], dtype=torch.uint8),
                "embeddings": torch.stack([self._disk[k] for k in keys]).contiguous(),
            },
            path,
        )

    def add_texts(self, texts: Sequence[str]) -> list[int]:
        """Embed the texts not seen before (once each) and return the row index of every text."""
        if self.embedder is None:
            raise ValueError("This store has no embedder: pass precomputed vectors instead of texts.")
        prefix = self.embedder.fingerprint.encode()
        keys = [hashlib.sha1(prefix + t.encode()).digest() for t in texts]
        disk = self._load_disk()
        missing = {}
        for key, text in zip(keys, texts, strict=True):
            if key not in self._index and key not in disk:
                missing.setdefault(key, text)
        if missing:
            logger.info("Embedding %d distinct texts with %s", len(missing), self.embedder.name)
            vectors = self.embedder.embed(list(missing.values()))
            if not torch.isfinite(vectors).all():
                raise ValueError(f"The embedder {self.embedder.name!r} produced NaN or infinite embeddings.")
            disk.update(zip(missing, vectors, strict=True))
            self._save_disk()
        return [self._index[k] if k in self._index else self._append(k, disk[k]) for k in keys]


def make_embedder(
    source: str, model: nn.Module | None, tokenizer, pooling: str, max_length: int, batch_size: int
) -> TextEmbedder | None:
    """The context embedder for `source`: `None` for `"precomputed"`, `model` itself (frozen, adapters off) for
    `"base"`, else the Hugging Face encoder named `source`."""
    if source == "precomputed":
        return None
    kwargs = dict(pooling=pooling, max_length=max_length, batch_size=batch_size)
    if source == "base":
        if model is None:
            raise ValueError("`context_embedding='base'` needs a model to embed with; pass `model`.")
        return TextEmbedder(model, tokenizer, **kwargs)
    return TextEmbedder.from_pretrained(source, **kwargs)


def embedding_dim(embedder: TextEmbedder | None, dataset) -> int:
    """Dimension of the context embeddings: the embedder's hidden size, or the length of the precomputed vectors."""
    if embedder is not None:
        config = getattr(embedder.model, "config", None)
        hidden = getattr(config.get_text_config(), "hidden_size", None) if config is not None else None
        if hidden:
            return hidden
        return embedder.embed(["dimension probe"]).shape[-1]
    return len(dataset[0][EMBEDDING_COLUMNS[0]])
