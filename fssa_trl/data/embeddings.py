# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Context embeddings e(prompt, response): computed once per distinct text, cached, looked up by index.

Three sources, all behind [`ContextEmbeddingStore`]:
- a precomputed column of vectors,
- the frozen base model itself (adapters off, no grad, pooled last hidden state),
- any Hugging Face encoder given by name or path.

A store built with `distributed=True` shares the work of a distributed run: the texts that no process has yet are
split across the processes, embedded once and gathered, so every process ends with the same table in the same order.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from .collator import right_pad
from .validation import EMBEDDING_COLUMNS

logger = logging.getLogger(__name__)

POOLINGS = ("mean", "last")
PROGRESS_MIN_BATCHES = 10  # fewer forward passes than this take no time worth a progress bar
# Texts are embedded in chunks of this many batches per process: each chunk is one gather, and the granularity of the
# progress bar and of the disk cache.
CHUNK_BATCHES = 64
# The disk cache is written whenever this many bytes of new embeddings are pending (and at the end), so an interrupted
# run loses at most this much work; each write is one more part file.
FLUSH_BYTES = 256 * 2**20


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


def _partitioned(embedder) -> bool:
    """Whether the embedder's model is partitioned by ZeRO-3: then each `embed` call gathers its parameters (a
    collective) and, once the DeepSpeed engine's hooks are on the model, so does every forward."""
    model = getattr(embedder, "model", None)
    return isinstance(model, nn.Module) and any(hasattr(p, "ds_id") for p in _backbone(model).parameters())


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
        self._progress = True  # off while a ContextEmbeddingStore shows one bar for all its chunks

    @classmethod
    def from_pretrained(cls, name_or_path: str, tokenizer=None, **kwargs) -> TextEmbedder:
        """Load any Hugging Face encoder (e.g. `sentence-transformers/all-MiniLM-L6-v2`) as a frozen embedder."""
        from transformers import AutoModel, AutoTokenizer

        model = AutoModel.from_pretrained(name_or_path, use_safetensors=True).eval().requires_grad_(False)
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(name_or_path)
        return cls(model, tokenizer, name=name_or_path, **kwargs)

    @property
    def fingerprint(self) -> str:
        """What an embedding depends on besides its text (the disk cache's key): the model's name, the pooling, the
        truncation and the parameters' dtype (a bf16 and an fp32 copy of one model embed differently)."""
        param = next(self.model.parameters(), None) if isinstance(self.model, nn.Module) else None
        dtype = None if param is None else str(param.dtype)
        return json.dumps([str(self.name), self.pooling, self.max_length, dtype])

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """`(N, D)` float32 CPU embeddings of `texts`, in batches of `batch_size` texts of similar length: exactly
        `ceil(N / batch_size)` forward passes."""
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
        quiet = not self._progress or len(starts) < PROGRESS_MIN_BATCHES or _rank() != 0
        progress = tqdm(starts, desc="Embedding texts", unit="batch", disable=quiet)
        with disable, _gathered(body):
            for start in progress:
                batch = [texts[i] for i in order[start : start + self.batch_size]]
                ids = [self.tokenizer(t, truncation=True, max_length=self.max_length)["input_ids"] for t in batch]
                if not all(ids):
                    blank = batch[[len(x) for x in ids].index(0)]
                    raise ValueError(
                        f"The text {blank!r} has no tokens (empty, or only whitespace for this tokenizer): a frozen "
                        "embedding model cannot embed it. Give a prompt or response with some text."
                    )
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


@contextlib.contextmanager
def _store_progress(embedder):
    """Silence the embedder's own per-call progress bar while a store shows one for all its chunks."""
    if not isinstance(embedder, TextEmbedder):
        yield
        return
    previous, embedder._progress = embedder._progress, False
    try:
        yield
    finally:
        embedder._progress = previous


# ----------------------------------------------------------------------------------------------- sharding the work
def shard(items: Sequence, rank: int, world_size: int) -> list:
    """Process `rank`'s share of `items`: every `world_size`-th item from position `rank`. Shares differ by at most
    one item and mix short and long texts, so the processes' work is balanced.

    >>> shard(["t0", "t1", "t2", "t3", "t4"], rank=1, world_size=2)
    ['t1', 't3']
    """
    return list(items[rank::world_size])


def unshard(shares: Sequence[Sequence], num_items: int) -> list:
    """Inverse of [`shard`]: the `num_items` items, in order, from every process's share (`shares[rank]`).

    >>> unshard([["t0", "t2", "t4"], ["t1", "t3"]], 5)
    ['t0', 't1', 't2', 't3', 't4']
    """
    world_size = len(shares)
    return [shares[i % world_size][i // world_size] for i in range(num_items)]


def padding_for_equal_forwards(share: int, largest_share: int, batch_size: int) -> int:
    """How many padding texts a share of `share` texts needs to take as many forward passes (at least one) as the
    largest share, `ceil(largest_share / batch_size)`. ZeRO-3 needs it: every process must take part in every
    parameter gather.

    >>> padding_for_equal_forwards(share=4, largest_share=5, batch_size=2), padding_for_equal_forwards(0, 1, 2)
    (1, 1)
    """
    forwards = max(1, -(-largest_share // batch_size))
    return max(0, (forwards - 1) * batch_size + 1 - share)


class _Processes:
    """The processes that fill one store together: this one's `rank` among `world_size`, the collective the store
    needs, and whether this process writes the disk cache. This base class is a single process."""

    rank, world_size = 0, 1

    @property
    def writes_cache(self) -> bool:
        return True

    def all_gather(self, obj) -> list:
        """Every process's `obj`, by rank."""
        return [obj]

    def barrier(self) -> None:
        self.all_gather(None)


class _TorchProcesses(_Processes):
    """The processes of the `torch.distributed` default group (any backend: objects travel as bytes)."""

    def __init__(self):
        self.rank, self.world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()

    @property
    def writes_cache(self) -> bool:
        # One writer per machine: the cache folder may be local to each machine of a multi-node run.
        return int(os.environ.get("LOCAL_RANK", self.rank)) == 0

    def all_gather(self, obj) -> list:
        gathered = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, obj)
        return gathered


def _processes(distributed: bool) -> _Processes:
    """The processes a store shares its work with: all those of the run if `distributed`, else this one alone."""
    if distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
        if torch.distributed.get_world_size() > 1:
            return _TorchProcesses()
    return _Processes()


HASH_ROWS = 1 << 16  # rows hashed per NumPy pass
_MIX = np.uint64(0x9E3779B97F4A7C15)
_SHIFT = np.uint64(31)


class VectorTable:
    """`(U, D)` float32 rows held as a list of blocks and looked up by global row: the store's table.

    A block is any `(n, D)` float32 NumPy array, including a read-only view of an Arrow column's values: precomputed
    embeddings of a memory-mapped dataset are read from its pages at lookup time, never copied into one table. Rows
    are numbered across the blocks in order. Indexing with an integer tensor returns a new `(*index.shape, D)` float32
    tensor, so it stands in for a `(U, D)` tensor in [`DataCollatorForContextSets`].

    >>> table = VectorTable([np.zeros((2, 3), np.float32), np.ones((1, 3), np.float32)])
    >>> table[torch.tensor([[2, 0]])].shape, table[torch.tensor([2])].sum().item()
    (torch.Size([1, 2, 3]), 3.0)
    """

    dtype = torch.float32

    def __init__(self, blocks: Sequence[np.ndarray] = ()):
        self.blocks: list[np.ndarray] = []
        self._rows = 0
        self._starts_cache: np.ndarray | None = None
        for block in blocks:
            self.append(block)

    @property
    def _starts(self) -> np.ndarray:
        """First row of each block, then the number of rows."""
        if self._starts_cache is None:
            self._starts_cache = np.cumsum([0] + [len(block) for block in self.blocks], dtype=np.int64)
        return self._starts_cache

    def __len__(self) -> int:
        return self._rows

    @property
    def dim(self) -> int | None:
        return self.blocks[0].shape[-1] if self.blocks else None

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), self.dim or 0))

    def numel(self) -> int:
        return len(self) * (self.dim or 0)

    def append(self, block: np.ndarray) -> None:
        if block.ndim != 2 or block.dtype != np.float32:
            raise ValueError(f"A VectorTable block must be a 2-d float32 array, got {block.dtype} {block.shape}.")
        if self.dim is not None and block.shape[-1] != self.dim:
            raise ValueError(f"Embedding dimension mismatch: got {block.shape[-1]}, the store holds {self.dim}.")
        if len(block):
            self.blocks.append(block)
            self._rows += len(block)
            self._starts_cache = None

    def take(self, rows: np.ndarray) -> np.ndarray:
        """`(len(rows), D)` float32 copy of the given rows."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(self.blocks) == 1:
            return self.blocks[0][rows]
        out = np.empty((len(rows), self.dim or 0), dtype=np.float32)
        block_of = np.searchsorted(self._starts, rows, side="right") - 1
        for block in np.unique(block_of):
            where = block_of == block
            out[where] = self.blocks[block][rows[where] - self._starts[block]]
        return out

    def __getitem__(self, index) -> torch.Tensor:
        index = torch.as_tensor(index, dtype=torch.long)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= len(self)):
            raise IndexError(f"Row index out of range for a table of {len(self)} rows.")
        rows = self.take(index.reshape(-1).numpy())
        return torch.from_numpy(rows).view(*index.shape, self.dim or 0)

    def to_tensor(self) -> torch.Tensor:
        """The whole table as one `(U, D)` tensor: the block itself when there is one writable block, else a copy."""
        if not self.blocks:
            return torch.zeros(0, 0)
        if len(self.blocks) == 1 and self.blocks[0].flags.writeable:
            return torch.from_numpy(self.blocks[0])
        return torch.from_numpy(np.concatenate(self.blocks))

    def hashes(self) -> np.ndarray:
        """[`_row_hashes`] of every row, `HASH_ROWS` rows at a time across the blocks."""
        out = np.empty(len(self), dtype=np.uint64)
        for start in range(0, len(self), HASH_ROWS):
            rows = np.arange(start, min(start + HASH_ROWS, len(self)))
            block_of = np.searchsorted(self._starts, rows[[0, -1]], side="right") - 1
            if block_of[0] == block_of[1]:  # within one block: a view
                first = self._starts[block_of[0]]
                piece = self.blocks[block_of[0]][rows[0] - first : rows[-1] + 1 - first]
            else:
                piece = self.take(rows)
            out[start : start + len(rows)] = _row_hashes(piece)
        return out


def _row_hashes(vectors: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each row's bytes (`(N, D)` float32 -> `(N,)` uint64), vectorised over rows: each 32-bit word
    is xor-ed in, then multiplied and shifted (a multiply-xorshift mix)."""
    words = vectors.view(np.uint32)
    hashes = np.empty(len(words), dtype=np.uint64)
    for start in range(0, len(words), HASH_ROWS):
        block = np.ascontiguousarray(words[start : start + HASH_ROWS].T)  # (D, rows): contiguous per word
        h = np.full(block.shape[1], np.uint64(block.shape[0]), dtype=np.uint64)
        for word in block:
            h ^= word
            h *= _MIX
            h ^= h >> _SHIFT
        hashes[start : start + HASH_ROWS] = h
    return hashes


def _rows_equal(a: VectorTable, a_rows: np.ndarray, b: VectorTable, b_rows: np.ndarray) -> np.ndarray:
    """Whether `a[a_rows[i]]` and `b[b_rows[i]]` have the same bytes, for every i (in chunks of `HASH_ROWS`)."""
    equal = np.empty(len(a_rows), dtype=bool)
    for start in range(0, len(a_rows), HASH_ROWS):
        end = start + HASH_ROWS
        a_words = a.take(a_rows[start:end]).view(np.uint32)
        equal[start:end] = (a_words == b.take(b_rows[start:end]).view(np.uint32)).all(axis=1)
    return equal


# -------------------------------------------------------------------------------------------------------- the store
class ContextEmbeddingStore:
    """A table of distinct embeddings, indexed by a hash of their text (or of the vector for precomputed columns).

    A text is embedded the first time it is seen and never again; datasets refer to rows of the table by index.

    Args:
        embedder ([`TextEmbedder`], *optional*): embeds texts (`None`: only precomputed vectors are added).
        cache_dir (`str`, *optional*): text embeddings also persist across runs in
            `<cache_dir>/embeddings-<hash of the embedder's fingerprint>-<part>.safetensors`, keyed by a hash of the
            fingerprint and the text: a re-run or resumed job embeds nothing it (or an interrupted run) embedded.
        distributed (`bool`, *optional*, defaults to `False`): in a `torch.distributed` run, share the work across
            the processes: every process must then call `add_texts` with the same texts in the same order (as when
            each builds the same dataset), and gets the same table. The texts missing from any process's store and
            cache are split between the processes ([`shard`]), embedded once and gathered, chunk by chunk; one
            process per machine writes the cache. With a ZeRO-3 partitioned embedder every process runs the same
            number of forward passes (short shares are padded). Leave it off where processes embed different texts
            (a reward function scoring each process's own completions): it would hang.

    >>> store = ContextEmbeddingStore()
    >>> store.add_vectors(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]))
    [0, 1, 0]
    """

    def __init__(self, embedder: TextEmbedder | None = None, cache_dir: str | None = None, *, distributed=False):
        self.embedder = embedder
        self.cache_dir = cache_dir
        self.distributed = distributed
        self._table = VectorTable()  # the distinct embeddings, in blocks (new rows are appended as a block)
        self._index: dict[bytes, int] = {}  # text key -> row
        # Precomputed vectors: the 64-bit hash of each distinct vector's bytes (sorted) and its row. A hash match is
        # confirmed by comparing the vectors, so a collision costs one duplicate row, never a wrong one.
        self._vector_hashes = np.zeros(0, dtype=np.uint64)
        self._vector_rows = np.zeros(0, dtype=np.int64)
        self._disk: dict[bytes, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self._table)

    @property
    def dim(self) -> int | None:
        return self._table.dim

    @property
    def table(self) -> torch.Tensor:
        """`(U, D)` float32 tensor of all distinct embeddings (one tensor: a copy when the store holds several blocks
        or read-only ones; [`vectors`] looks rows up without one)."""
        return self._table.to_tensor()

    @property
    def vectors(self) -> VectorTable:
        """The distinct embeddings as a [`VectorTable`]: `store.vectors[index]` gathers rows with no copy of the
        table (the collators' and the steerable models' lookup)."""
        return self._table

    def _extend(self, block: torch.Tensor | np.ndarray) -> int:
        """Append the rows of `block` (`(n, D)` float32) to the table; returns the row of its first one. The block is
        kept as it is (no copy)."""
        first = len(self)
        if isinstance(block, torch.Tensor):
            block = block.detach().to(device="cpu", dtype=torch.float32).numpy()
        self._table.append(block)
        return first

    def add_vectors(self, vectors: torch.Tensor | np.ndarray) -> list[int]:
        """Add precomputed `(N, D)` vectors (deduplicated by their bytes), returning their row indices. New vectors
        get rows in order of first occurrence. Vectorised: a new float32 array whose vectors are all distinct becomes
        part of the table without a copy."""
        return self.vector_indices(vectors).tolist()

    def vector_indices(self, vectors: torch.Tensor | np.ndarray | VectorTable) -> np.ndarray:
        """[`add_vectors`], returning the row indices as an `(N,)` int64 array. `vectors` may also be a
        [`VectorTable`] (e.g. read-only views of an Arrow column's chunks): when its vectors are all new and distinct,
        its blocks join the table as they are, so the vectors are never copied."""
        if isinstance(vectors, torch.Tensor):
            vectors = vectors.detach().to(device="cpu", dtype=torch.float32).numpy()
        if not isinstance(vectors, VectorTable):
            vectors = np.ascontiguousarray(vectors, dtype=np.float32)
            if vectors.ndim != 2:
                raise ValueError(
                    f"Precomputed embeddings must be a 2-d (pairs, dimension) array, got {vectors.shape}."
                )
            vectors = VectorTable([vectors]) if len(vectors) else VectorTable()
        if self.dim is not None and vectors.dim is not None and vectors.dim != self.dim:
            raise ValueError(f"Embedding dimension mismatch: got {vectors.dim}, the store holds {self.dim}.")
        hashes = vectors.hashes()
        order = np.argsort(hashes, kind="stable")  # equal hashes: rows in order, the first one first
        sorted_hashes = hashes[order]
        start = len(self)
        if not len(self._vector_hashes) and not (sorted_hashes[1:] == sorted_hashes[:-1]).any():
            # The common case, kept lean at millions of vectors: distinct hashes, so distinct vectors, none stored yet.
            for block in vectors.blocks:
                self._extend(block)
            self._vector_hashes, self._vector_rows = sorted_hashes, (order + start if start else order)
            return np.arange(start, start + len(vectors))
        # Each row's first row of equal hash, confirmed by comparing the vectors (a collision: the row stands alone).
        boundaries = np.empty(len(order), dtype=bool)
        boundaries[:1] = True
        np.not_equal(sorted_hashes[1:], sorted_hashes[:-1], out=boundaries[1:])
        source = np.empty(len(order), dtype=np.int64)
        source[order] = order[boundaries][np.cumsum(boundaries) - 1]
        del order, sorted_hashes, boundaries
        claimed = np.flatnonzero(source != np.arange(len(vectors)))
        collided = claimed[~_rows_equal(vectors, claimed, vectors, source[claimed])]
        source[collided] = collided
        heads = np.flatnonzero(source == np.arange(len(vectors)))  # one row per distinct vector, in order
        # Vectors already in the store: a hash match whose vector is equal.
        position = np.searchsorted(self._vector_hashes, hashes[heads])
        found = position < len(self._vector_hashes)
        found[found] = self._vector_hashes[position[found]] == hashes[heads[found]]
        found[found] = _rows_equal(self._table, self._vector_rows[position[found]], vectors, heads[found])
        rows = np.empty(len(vectors), dtype=np.int64)
        rows[heads[found]] = self._vector_rows[position[found]]
        new = heads[~found]
        if len(new) == len(vectors):
            for block in vectors.blocks:
                self._extend(block)
        elif len(new):
            self._extend(vectors.take(new))  # a copy of the new distinct vectors only
        rows[new] = np.arange(start, start + len(new))
        hashes = np.concatenate([self._vector_hashes, hashes[new]])
        order = np.argsort(hashes, kind="stable")
        self._vector_hashes = hashes[order]
        self._vector_rows = np.concatenate([self._vector_rows, rows[new]])[order]
        return rows[source]

    def add_texts(self, texts: Sequence[str]) -> list[int]:
        """Embed the texts not seen before (once each) and return the row index of every text."""
        if self.embedder is None:
            raise ValueError("This store has no embedder: pass precomputed vectors instead of texts.")
        prefix = self.embedder.fingerprint.encode()
        keys = [hashlib.sha1(prefix + t.encode()).digest() for t in texts]
        disk = self._load_disk()
        processes = _processes(self.distributed)
        missing = self._missing(dict(zip(keys, texts, strict=True)), processes)
        if missing:
            self._embed_missing(missing, processes)
        new: dict[bytes, int] = {}
        for key in keys:
            if key not in self._index and key not in new:
                new[key] = len(self) + len(new)
        if new:
            self._extend(torch.stack([disk[key] for key in new]))
            self._index.update(new)
        return [self._index[key] for key in keys]

    def _missing(self, distinct: dict[bytes, str], processes: _Processes) -> dict[bytes, str]:
        """The distinct texts (first-seen order) in neither the store nor the disk cache of this process or, in a
        distributed run, of any process (a cache on each machine may hold different texts): the same on all."""
        here = np.array([key not in self._index and key not in self._disk for key in distinct], dtype=bool)
        if processes.world_size > 1:
            digest = hashlib.sha1(b"".join(distinct)).hexdigest()
            views = processes.all_gather((len(self), digest, np.packbits(here).tobytes()))
            if len({view[:2] for view in views}) > 1:
                raise RuntimeError(
                    "A distributed ContextEmbeddingStore needs every process to add the same texts in the same order, "
                    f"to a store filled alike; the processes' (store size, texts hash) differ: {[v[:2] for v in views]}. "
                    "Build the datasets identically on every process, or use `distributed=False`."
                )
            masks = [np.unpackbits(np.frombuffer(view[2], dtype=np.uint8), count=len(here)) for view in views]
            here = np.bitwise_or.reduce(masks).astype(bool)
        return {key: text for (key, text), embed in zip(distinct.items(), here, strict=True) if embed}

    def _embed_missing(self, missing: dict[bytes, str], processes: _Processes) -> None:
        """Embed `missing` chunk by chunk (each process its share), add the vectors to the disk cache (where they
        replace any older copy, so every process holds the same) and write it as they come."""
        keys, texts = list(missing), list(missing.values())
        # Shortest first, as one `embed` call orders them (stable): the chunks then hold exactly the batches that one
        # call over all the texts would, so chunking changes no embedding by a bit. The store's row order follows the
        # callers' texts, not this one.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        keys, texts = [keys[i] for i in order], [texts[i] for i in order]
        batch_size = getattr(self.embedder, "batch_size", 32)
        chunk = CHUNK_BATCHES * batch_size * processes.world_size
        if processes.rank == 0:
            name, world_size = self.embedder.name, processes.world_size
            logger.info("Embedding %d distinct texts with %s on %d process(es)", len(texts), name, world_size)
        quiet = processes.rank != 0 or len(texts) < PROGRESS_MIN_BATCHES * batch_size
        progress = tqdm(total=len(texts), desc="Embedding texts", unit="text", disable=quiet)
        pending: list[bytes] = []
        try:
            with progress, _store_progress(self.embedder):
                for start in range(0, len(texts), chunk):
                    vectors = self._embed_chunk(texts[start : start + chunk], processes, batch_size)
                    self._disk.update(zip(keys[start : start + chunk], vectors, strict=True))
                    pending += keys[start : start + chunk]
                    if len(pending) * vectors.shape[-1] * vectors.element_size() >= FLUSH_BYTES:
                        pending = self._write_cache(pending, processes)
                    progress.update(len(vectors))
        finally:  # what was embedded survives an interrupted run
            self._write_cache(pending, processes)
        if self.cache_dir is not None:
            processes.barrier()  # a store built next, on any process, finds the cache complete

    def _embed_chunk(self, texts: list[str], processes: _Processes, batch_size: int) -> torch.Tensor:
        """`(N, D)` embeddings of `texts`, this process embedding its [`shard`], then gathered from all."""
        share = shard(texts, processes.rank, processes.world_size)
        batch = list(share)
        if processes.world_size > 1 and _partitioned(self.embedder):
            # ZeRO-3: `embed` gathers the parameters (collective), as does every forward once DeepSpeed's hooks are on
            # the model (`evaluate` with a new dataset): every process runs as many forward passes.
            largest = len(shard(texts, 0, processes.world_size))
            batch += texts[:1] * padding_for_equal_forwards(len(share), largest, batch_size)
        vectors = self.embedder.embed(batch)[: len(share)] if batch else None
        vectors = torch.stack(unshard(processes.all_gather(vectors), len(texts)))
        if not torch.isfinite(vectors).all():
            raise ValueError(f"The embedder {self.embedder.name!r} produced NaN or infinite embeddings.")
        return vectors

    # ------------------------------------------------------------------------------------------------- disk cache
    def _cache_prefix(self) -> str | None:
        if self.cache_dir is None:
            return None
        digest = hashlib.sha1(self.embedder.fingerprint.encode()).hexdigest()[:16]
        return os.path.join(self.cache_dir, f"embeddings-{digest}")

    def _load_disk(self) -> dict[bytes, torch.Tensor]:
        """This embedder's cached vectors by key: every part file, in name order."""
        if self._disk is None:
            self._disk = {}
            prefix = self._cache_prefix()
            for path in sorted(glob.glob(glob.escape(prefix) + "*.safetensors")) if prefix else []:
                tensors = load_file(path)
                for key, vector in zip(tensors["keys"].numpy(), tensors["embeddings"], strict=True):
                    self._disk[key.tobytes()] = vector
        return self._disk

    def _write_cache(self, keys: list[bytes], processes: _Processes) -> list[bytes]:
        """Write the cached vectors of `keys` as one more part file, named by a hash of its keys, atomically (a reader
        sees a part whole or not at all); returns what is left to write (nothing)."""
        prefix = self._cache_prefix()
        if prefix is None or not keys or not processes.writes_cache:
            return []
        os.makedirs(self.cache_dir, exist_ok=True)
        path = f"{prefix}-{hashlib.sha1(b''.join(keys)).hexdigest()[:16]}.safetensors"
        key_bytes = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), -1)
        tensors = {
            "keys": torch.from_numpy(key_bytes.copy()),
            "embeddings": torch.stack([self._disk[k] for k in keys]).contiguous(),
        }
        temporary = f"{path}.{os.getpid()}.tmp"
        save_file(tensors, temporary, metadata={"fingerprint": self.embedder.fingerprint})
        os.replace(temporary, path)
        return []


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
