# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Embed a fixed set of texts with a distributed [`ContextEmbeddingStore`] and record what this process did.

Used by `tests/test_distributed_embedding.py` with 2 CPU processes:

```sh
OMP_NUM_THREADS=1 accelerate launch --config_file <multi_cpu.yaml> tests/scripts/embed_texts_tiny.py \
    --output_dir /tmp/embed --cache_dir /tmp/embed/cache
```

Pass 1 fills an empty store as episode building does (the chosen texts, then the rejected ones, which overlap them);
pass 2 is a fresh store over the same `cache_dir`, as a re-run would be. Each process writes `rank<r>.json` (the texts
it embedded in each pass, the table's hash, the row indices) and `rank<r>.safetensors` (its table).

`--zero3 init` partitions the tiny model with DeepSpeed ZeRO-3 (`zero.Init`, every parameter partitioned), as the
trainers' "base" embedder is before training; `--zero3 engine` also puts a DeepSpeed engine (no optimizer) on it,
whose hooks gather parameters in every forward pass (as during `evaluate` on a new dataset). Both need `deepspeed`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os

from accelerate import PartialState
from safetensors.torch import save_file

from fssa_trl.data import ContextEmbeddingStore, TextEmbedder
from fssa_trl.data import embeddings as embeddings_module
from fssa_trl.testing_utils import tiny_reward_model, word_tokenizer

NUM_WORDS = 24


def tiny_texts(num_texts: int = 150) -> tuple[list[str], list[str]]:
    """Chosen and rejected texts of `num_texts` distinct ones, of 1 to 12 words, with repeats within and across."""
    words = [" ".join(f"{'ab'[i % 2]}{(i * 7 + j) % NUM_WORDS}" for j in range(1 + i % 12)) for i in range(num_texts)]
    # Distinct: the two prompt words spell i in base NUM_WORDS.
    texts = [f"p{i % NUM_WORDS} p{i // NUM_WORDS % NUM_WORDS} {w}" for i, w in enumerate(words)]
    third = num_texts // 3
    chosen = texts[: 2 * third] + texts[:third]  # repeats within
    rejected = texts[third:] + texts[third : 2 * third]  # overlaps the chosen texts
    return chosen, rejected


def tiny_embedder_model():
    """The model every process (and the test's one-process reference) embeds with, the same everywhere (seeded)."""
    tokenizer = word_tokenizer(NUM_WORDS)
    return tiny_reward_model(tokenizer, seed=0).eval().requires_grad_(False), tokenizer


class CountingEmbedder(TextEmbedder):
    """A TextEmbedder that counts the texts and forward passes of its `embed` calls."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.texts, self.forwards = 0, 0

    def embed(self, texts):
        self.texts += len(texts)
        self.forwards += -(-len(texts) // self.batch_size)
        return super().embed(texts)


def zero3_partition(model, tokenizer, mode: str):
    """The tiny model with every parameter partitioned by ZeRO-3 (and, for `"engine"`, DeepSpeed's hooks on it)."""
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    config = {
        "train_batch_size": PartialState().num_processes,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    }
    deepspeed.zero.Init(module=model, config_dict_or_path=config)  # partitions the built model in place
    model = model.eval().requires_grad_(False)
    if mode == "engine":
        engine, *_ = deepspeed.initialize(model=model, config=config)  # no optimizer: ZeRO-3's parameter hooks only
        model = engine.module
    assert all(p.numel() == 0 for p in model.parameters()), "the model is not partitioned"
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--cache_dir", required=True)
    parser.add_argument("--num_texts", type=int, default=150)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--chunk_batches", type=int, default=embeddings_module.CHUNK_BATCHES)
    parser.add_argument("--flush_bytes", type=int, default=embeddings_module.FLUSH_BYTES)
    parser.add_argument("--zero3", choices=["no", "init", "engine"], default="no")
    args = parser.parse_args()
    embeddings_module.CHUNK_BATCHES, embeddings_module.FLUSH_BYTES = args.chunk_batches, args.flush_bytes

    state = PartialState(cpu=True)  # sets up torch.distributed: gloo, on CPU even where GPUs are
    model, tokenizer = tiny_embedder_model()
    if args.zero3 != "no":
        model = zero3_partition(model, tokenizer, args.zero3)
    chosen, rejected = tiny_texts(args.num_texts)

    record = {"rank": state.process_index, "world_size": state.num_processes, "passes": []}
    for _ in range(2):  # the second pass is a fresh store over the cache the first one wrote
        embedder = CountingEmbedder(model, tokenizer, batch_size=args.batch_size, name="tiny")
        store = ContextEmbeddingStore(embedder, cache_dir=args.cache_dir, distributed=True)
        indices = store.add_texts(chosen) + store.add_texts(rejected)
        table = store.table.contiguous()
        record["passes"].append(
            {
                "texts_embedded": embedder.texts,
                "forwards": embedder.forwards,
                "table_sha256": hashlib.sha256(table.numpy().tobytes()).hexdigest(),
                "indices": indices,
            }
        )
    os.makedirs(args.output_dir, exist_ok=True)
    save_file({"table": table}, os.path.join(args.output_dir, f"rank{state.process_index}.safetensors"))
    with open(os.path.join(args.output_dir, f"rank{state.process_index}.json"), "w", encoding="utf-8") as f:
        json.dump(record, f)
    state.wait_for_everyone()
    state.destroy_process_group()


if __name__ == "__main__":
    main()
