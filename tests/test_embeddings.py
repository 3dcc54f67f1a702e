# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Context embeddings: each distinct text embedded once, cached on disk, pooled from the frozen base model."""

import copy
import math
import os
import threading

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from tqdm.auto import tqdm

from fssa_trl.data import ContextEmbeddingStore, TextEmbedder, embeddings, pair_text
from fssa_trl.data.embeddings import VectorTable
from fssa_trl.testing_utils import tiny_reward_model, word_tokenizer

TEXTS = ["p1 a2 a3", "p4 b5", "p1 a2 a3 a4 a5 a6 a7", "b1"]  # different lengths: batches are padded


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_reward_model(tokenizer).eval()


class CountingEmbedder(TextEmbedder):
    """A TextEmbedder that records the texts of every `embed` call."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def embed(self, texts):
        self.calls.append(list(texts))
        return super().embed(texts)


def hidden_alone(model, tokenizer, text):
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        return model.model(input_ids=ids).last_hidden_state[0]  # (L, H)


# ----------------------------------------------------------------------------------------------------- TextEmbedder
@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_pooling(model, tokenizer, pooling):
    embedder = TextEmbedder(model, tokenizer, pooling=pooling, batch_size=3)
    out = embedder.embed(TEXTS)
    assert out.shape == (len(TEXTS), model.config.hidden_size)
    assert out.dtype == torch.float32
    for row, text in enumerate(TEXTS):
        hidden = hidden_alone(model, tokenizer, text)
        expected = hidden.mean(0) if pooling == "mean" else hidden[-1]
        # Padding inside a batch does not change a text's embedding.
        torch.testing.assert_close(out[row], expected, atol=1e-5, rtol=1e-5)


def test_mean_and_last_pooling_differ(model, tokenizer):
    mean = TextEmbedder(model, tokenizer, pooling="mean").embed(TEXTS[:1])
    last = TextEmbedder(model, tokenizer, pooling="last").embed(TEXTS[:1])
    assert not torch.allclose(mean, last)


def test_truncation(model, tokenizer):
    embedder = TextEmbedder(model, tokenizer, pooling="last", max_length=2)
    torch.testing.assert_close(embedder.embed(["p1 a2 a3"]), embedder.embed(["p1 a2"]))


def test_embeds_with_adapters_disabled_and_restores_training_mode(tokenizer):
    base = tiny_reward_model(tokenizer).eval()
    config = LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(copy.deepcopy(base), config).train()
    embedded = TextEmbedder(peft_model, tokenizer).embed(TEXTS)
    torch.testing.assert_close(embedded, TextEmbedder(base, tokenizer).embed(TEXTS))
    # The adapter is not a no-op: with it enabled, the hidden states differ.
    ids = torch.tensor([tokenizer(TEXTS[0])["input_ids"]])
    with torch.no_grad():
        with_adapter = peft_model.get_base_model().model(input_ids=ids).last_hidden_state
    assert not torch.allclose(with_adapter[0].mean(0), embedded[0])
    assert peft_model.training and peft_model.get_base_model().model.training


def test_unknown_pooling_raises(model, tokenizer):
    with pytest.raises(ValueError, match="`context_embedding_pooling` must be one of"):
        TextEmbedder(model, tokenizer, pooling="max")


def test_pair_text():
    assert pair_text("Q: ", "A.") == "Q: A."
    assert pair_text(None, "A.") == "A."
    conversation = pair_text([{"role": "user", "content": "hi"}], [{"role": "assistant", "content": "hello"}])
    assert conversation == "user: hi\nassistant: hello"


# ------------------------------------------------------------------------------------------- ContextEmbeddingStore
def by_length(texts):
    """The order in which a store embeds its missing texts: shortest first (stable), as one `embed` call batches them."""
    return sorted(texts, key=len)


def test_each_distinct_text_is_embedded_once(model, tokenizer):
    embedder = CountingEmbedder(model, tokenizer)
    store = ContextEmbeddingStore(embedder)
    first = store.add_texts([TEXTS[0], TEXTS[1], TEXTS[0]])
    assert first == [0, 1, 0]
    assert embedder.calls == [by_length([TEXTS[0], TEXTS[1]])]
    second = store.add_texts([TEXTS[1], TEXTS[2]])
    assert second == [1, 2]
    assert embedder.calls[1:] == [[TEXTS[2]]]
    store.add_texts([TEXTS[2], TEXTS[0]])
    assert len(embedder.calls) == 2  # nothing new: no forward pass
    assert len(store) == 3 and store.table.shape == (3, model.config.hidden_size)
    torch.testing.assert_close(store.table, TextEmbedder(model, tokenizer).embed(TEXTS[:3]))


def test_disk_cache_round_trip(model, tokenizer, tmp_path):
    first = ContextEmbeddingStore(CountingEmbedder(model, tokenizer), cache_dir=str(tmp_path))
    indices = first.add_texts(TEXTS)
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].endswith(".safetensors")

    embedder = CountingEmbedder(model, tokenizer)
    second = ContextEmbeddingStore(embedder, cache_dir=str(tmp_path))
    assert second.add_texts(TEXTS) == indices
    assert embedder.calls == []  # everything came from disk
    torch.testing.assert_close(second.table, first.table)

    # A different embedder configuration does not reuse those vectors.
    other = CountingEmbedder(model, tokenizer, pooling="last")
    ContextEmbeddingStore(other, cache_dir=str(tmp_path)).add_texts(TEXTS[:1])
    assert other.calls == [TEXTS[:1]]
    assert len(os.listdir(tmp_path)) == 2


class ConstantEmbedder:
    """Stands in for a TextEmbedder: every text gets the same vector."""

    name, fingerprint = "constant", "constant"

    def __init__(self, value):
        self.value = value

    def embed(self, texts):
        return torch.full((len(texts), 3), self.value)


def test_nan_embeddings_raise():
    with pytest.raises(ValueError, match="NaN or infinite"):
        ContextEmbeddingStore(ConstantEmbedder(float("nan"))).add_texts(["x"])
    with pytest.raises(ValueError, match="NaN or infinite"):
        ContextEmbeddingStore(ConstantEmbedder(float("inf"))).add_texts(["x"])


def test_precomputed_vectors_are_deduplicated_and_dimension_checked():
    store = ContextEmbeddingStore()
    vectors = torch.tensor([[1.0, 2.0], [3.0, 4.0], [1.0, 2.0]], dtype=torch.float64)
    assert store.add_vectors(vectors) == [0, 1, 0]
    assert store.table.dtype == torch.float32
    torch.testing.assert_close(store.table, vectors[:2].float())
    with pytest.raises(ValueError, match="dimension mismatch: got 3, the store holds 2"):
        store.add_vectors(torch.ones(1, 3))


def _first_seen_reference(blocks):
    """Deduplication by each vector's bytes, one vector at a time, rows in order of first occurrence."""
    rows, table = {}, []
    indices = []
    for block in blocks:
        indices.append([])
        for vector in block:
            key = vector.numpy().tobytes()
            if key not in rows:
                rows[key] = len(table)
                table.append(vector)
            indices[-1].append(rows[key])
    return indices, torch.stack(table)


@pytest.mark.parametrize("collide", [False, True], ids=["hashed", "every-hash-collides"])
def test_precomputed_vectors_match_one_at_a_time_deduplication(collide, monkeypatch):
    """The vectorised store gives the rows a per-vector dictionary would, across calls, -0.0 kept apart from 0.0; with
    every 64-bit hash colliding it stays exact (duplicates may then get rows of their own, never a wrong row)."""
    generator = torch.Generator().manual_seed(0)
    pool = torch.randn(40, 5, generator=generator)
    pool[1] = -0.0 * pool[0].abs()  # -0.0 and 0.0 are different bytes
    pool[0] = 0.0
    blocks = [pool[torch.randint(0, 40, (n,), generator=generator)] for n in (60, 1, 0, 90)]
    if collide:
        monkeypatch.setattr(embeddings, "_row_hashes", lambda vectors: np.zeros(len(vectors), dtype=np.uint64))
    store = ContextEmbeddingStore()
    got = [store.add_vectors(block) for block in blocks]
    expected, table = _first_seen_reference(blocks)
    for block, indices in zip(blocks, got, strict=True):
        assert torch.equal(store.table[indices].view(-1, 5), block)  # every index points at an equal vector
    if not collide:
        assert got == expected and torch.equal(store.table, table)
    else:
        assert len(store) >= len(table)


def test_distinct_precomputed_vectors_become_the_table_without_a_copy():
    vectors = np.random.default_rng(0).standard_normal((1000, 8)).astype(np.float32)
    store = ContextEmbeddingStore()
    np.testing.assert_array_equal(store.vector_indices(vectors), np.arange(1000))
    assert np.shares_memory(store.table.numpy(), vectors)


def test_vector_table_looks_rows_up_across_blocks():
    rng = np.random.default_rng(0)
    blocks = [rng.standard_normal((n, 4)).astype(np.float32) for n in (3, 1, 5)]
    table = VectorTable(blocks)
    whole = torch.from_numpy(np.concatenate(blocks))
    index = torch.tensor([[8, 0, 3], [4, 4, 2]])
    assert len(table) == 9 and table.shape == (9, 4) and table.numel() == 36
    assert torch.equal(table[index], whole[index])
    assert torch.equal(table.to_tensor(), whole)
    np.testing.assert_array_equal(table.hashes(), embeddings._row_hashes(whole.numpy()))
    with pytest.raises(IndexError, match="9 rows"):
        table[torch.tensor([9])]
    with pytest.raises(ValueError, match="dimension mismatch"):
        table.append(np.zeros((1, 5), dtype=np.float32))


def test_memory_mapped_precomputed_embeddings_are_read_in_place(tmp_path):
    """Precomputed float32 embeddings of a memory-mapped dataset (several Arrow chunks) join the store as views of
    the Arrow buffers, not copied into one table (issue 9: peak memory); lookups equal a copied table's."""
    from datasets import Dataset, Features, Sequence, Value, load_from_disk

    from fssa_trl.data.episode_dataset import embedding_indices

    rng = np.random.default_rng(0)
    n = 2500
    features = Features({name: Sequence(Value("float32")) for name in ("chosen_embedding", "rejected_embedding")})
    Dataset.from_dict(
        {name: rng.standard_normal((n, 6)).astype(np.float32).tolist() for name in features}, features=features
    ).save_to_disk(str(tmp_path / "data"))
    dataset = load_from_disk(str(tmp_path / "data"))
    assert dataset.data.column("chosen_embedding").num_chunks > 1
    store = ContextEmbeddingStore()
    chosen, rejected = embedding_indices(dataset, store, "train")
    np.testing.assert_array_equal(np.concatenate([chosen, rejected]), np.arange(2 * n))
    buffers = [
        (buffer.address, buffer.address + buffer.size)
        for name in features
        for chunk in dataset.data.column(name).chunks
        for buffer in chunk.flatten().buffers()
        if buffer is not None
    ]
    for block in store.vectors.blocks:  # every block lies inside one of the dataset's own buffers
        start = block.__array_interface__["data"][0]
        assert any(low <= start and start + block.nbytes <= high for low, high in buffers)
    matrix = torch.tensor(list(dataset["chosen_embedding"]) + list(dataset["rejected_embedding"]), dtype=torch.float32)
    index = torch.from_numpy(rng.integers(0, 2 * n, size=(7, 11)))
    assert torch.equal(store.vectors[index], matrix[index])
    assert torch.equal(store.table, matrix)
    assert embedding_indices(dataset, store, "eval")[0].tolist() == chosen.tolist()  # found again, nothing added
    assert len(store) == 2 * n


def test_store_without_embedder_rejects_texts():
    with pytest.raises(ValueError, match="no embedder"):
        ContextEmbeddingStore().add_texts(["x"])


# ------------------------------------------------------------------------------- distributed stores (fake processes)
@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("num_items", [0, 1, 2, 7])
def test_shard_and_unshard(world_size, num_items):
    items = [f"t{i}" for i in range(num_items)]
    shares = [embeddings.shard(items, rank, world_size) for rank in range(world_size)]
    assert sorted(x for share in shares for x in share) == sorted(items)  # every item once
    assert max(map(len, shares)) - min(map(len, shares)) <= 1  # balanced
    assert embeddings.unshard(shares, num_items) == items


@pytest.mark.parametrize("batch_size", [1, 2, 3])
@pytest.mark.parametrize("num_texts", [1, 2, 5, 6, 7])
def test_padding_gives_every_share_the_same_forward_passes(num_texts, batch_size):
    world_size = 3
    shares = [len(embeddings.shard(range(num_texts), rank, world_size)) for rank in range(world_size)]
    forwards = max(1, math.ceil(shares[0] / batch_size))  # rank 0's share is the largest
    for share in shares:
        padding = embeddings.padding_for_equal_forwards(share, shares[0], batch_size)
        assert math.ceil((share + padding) / batch_size) == forwards
        assert padding == 0 or math.ceil((share + padding - 1) / batch_size) < forwards  # no more than needed


class ThreadProcesses(embeddings._Processes):
    """Threads standing in for the processes of a distributed run: `all_gather` meets the others at a barrier."""

    def __init__(self, rank, world_size, slots, barrier):
        self.rank, self.world_size, self.slots, self.meet = rank, world_size, slots, barrier

    @property
    def writes_cache(self):
        return self.rank == 0

    def all_gather(self, obj):
        self.slots[self.rank] = obj
        self.meet.wait()
        gathered = list(self.slots)
        self.meet.wait()  # nobody overwrites a slot before everyone has read them all
        return gathered


def run_as_processes(monkeypatch, world_size, work):
    """`work(rank)` in `world_size` threads, each one process of a distributed store; results (or errors) by rank."""
    local = threading.local()
    single = embeddings._Processes()
    monkeypatch.setattr(embeddings, "_processes", lambda distributed: local.processes if distributed else single)
    slots, barrier = [None] * world_size, threading.Barrier(world_size, timeout=60)
    results = [None] * world_size

    def target(rank):
        local.processes = ThreadProcesses(rank, world_size, slots, barrier)
        try:
            results[rank] = work(rank)
        except Exception as error:  # noqa: BLE001 - handed to the test
            results[rank] = error

    threads = [threading.Thread(target=target, args=(rank,)) for rank in range(world_size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


MANY_TEXTS = [f"p{i % 24} p{i // 24} " + " ".join(f"a{j}" for j in range(i % 5)) for i in range(30)]


def test_distributed_store_splits_the_work_and_agrees(model, tokenizer, monkeypatch, tmp_path):
    monkeypatch.setattr(embeddings, "CHUNK_BATCHES", 2)  # chunks of 2 batches x 3 texts x 2 processes = 12 texts
    texts = MANY_TEXTS + MANY_TEXTS[:10]  # 30 distinct texts
    caches = [tmp_path / "cache0", tmp_path / "cache1"]  # one per "machine"

    def work(rank):
        embedder = CountingEmbedder(model, tokenizer, batch_size=3)
        store = ContextEmbeddingStore(embedder, cache_dir=str(caches[rank]), distributed=True)
        return embedder.calls, store.add_texts(texts), store.table

    results = run_as_processes(monkeypatch, 2, work)
    reference = ContextEmbeddingStore(TextEmbedder(model, tokenizer, batch_size=7))
    indices = reference.add_texts(texts)
    for rank, (calls, rank_indices, table) in enumerate(results):
        # Each chunk (12, 12, 6 texts) is split between the processes: rank r embeds every other text from r.
        chunks = [by_length(MANY_TEXTS)[i : i + 12] for i in range(0, 30, 12)]
        assert calls == [chunk[rank::2] for chunk in chunks]
        assert rank_indices == indices
        torch.testing.assert_close(table, reference.table, atol=1e-5, rtol=1e-5)
    assert torch.equal(results[0][2], results[1][2])  # identical, not just close: the vectors were gathered
    # One process per machine writes the cache: here rank 0, whose "machine" holds both processes' vectors.
    assert len(os.listdir(caches[0])) == 1 and not caches[1].exists()

    # A re-run where only one machine's cache holds the texts: both processes embed them again, shared out, and both
    # use the new vectors, so the stores are the same again.
    results = run_as_processes(monkeypatch, 2, work)
    assert [len(sum(calls, [])) for calls, _, _ in results] == [15, 15]
    assert torch.equal(results[0][2], results[1][2])


def test_distributed_store_rejects_different_texts(model, tokenizer, monkeypatch):
    def work(rank):
        return ContextEmbeddingStore(TextEmbedder(model, tokenizer), distributed=True).add_texts(TEXTS[rank:])

    for error in run_as_processes(monkeypatch, 2, work):
        assert isinstance(error, RuntimeError) and "same texts in the same order" in str(error)


def test_partitioned_embedder_runs_equal_forward_passes(model, tokenizer, monkeypatch):
    # ZeRO-3: every process must run as many forward passes; a short (or empty) share is padded, then cut off.
    monkeypatch.setattr(embeddings, "_partitioned", lambda embedder: True)
    monkeypatch.setattr(embeddings, "CHUNK_BATCHES", 2)  # chunks of 2 batches x 2 texts x 2 processes = 8 texts
    texts = MANY_TEXTS[:9]  # chunks of 8 and 1 texts: shares (4, 4), then (1, 0)

    def work(rank):
        embedder = CountingEmbedder(model, tokenizer, batch_size=2)
        store = ContextEmbeddingStore(embedder, distributed=True)
        store.add_texts(texts)
        return embedder.calls, store.table

    (calls0, table0), (calls1, table1) = run_as_processes(monkeypatch, 2, work)
    ordered = by_length(texts)
    assert calls0 == [ordered[0:8:2], ordered[8:9]]
    assert calls1 == [ordered[1:8:2], ordered[8:9]]  # the empty share runs the chunk's first text as padding
    assert torch.equal(table0, table1)
    torch.testing.assert_close(table0, TextEmbedder(model, tokenizer).embed(texts), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------------- disk cache
class FailingEmbedder(CountingEmbedder):
    """Fails on its `fail_at`-th call, as an interrupted run would."""

    fail_at = 2

    def embed(self, texts):
        if len(self.calls) + 1 == self.fail_at:
            raise KeyboardInterrupt
        return super().embed(texts)


def test_interrupted_run_keeps_what_it_embedded(model, tokenizer, monkeypatch, tmp_path):
    monkeypatch.setattr(embeddings, "CHUNK_BATCHES", 1)
    monkeypatch.setattr(embeddings, "FLUSH_BYTES", 1)  # write the cache after every chunk
    with pytest.raises(KeyboardInterrupt):
        ContextEmbeddingStore(FailingEmbedder(model, tokenizer, batch_size=2), str(tmp_path)).add_texts(TEXTS)
    embedder = CountingEmbedder(model, tokenizer, batch_size=2)
    store = ContextEmbeddingStore(embedder, cache_dir=str(tmp_path))
    assert store.add_texts(TEXTS) == [0, 1, 2, 3]
    assert embedder.calls == [by_length(TEXTS)[2:]]  # the first chunk came from the cache
    torch.testing.assert_close(store.table, TextEmbedder(model, tokenizer).embed(TEXTS), atol=1e-5, rtol=1e-5)
    assert len(os.listdir(tmp_path)) == 2  # one part file per chunk, no temporary file left


def test_cache_is_keyed_by_dtype_and_records_the_fingerprint(model, tokenizer, tmp_path):
    embedder = TextEmbedder(model, tokenizer)
    ContextEmbeddingStore(embedder, cache_dir=str(tmp_path)).add_texts(TEXTS)
    (part,) = os.listdir(tmp_path)
    with safe_open(str(tmp_path / part), "pt") as f:
        assert f.metadata() == {"fingerprint": embedder.fingerprint}
    # A float64 copy of the model embeds differently: it neither reuses nor overwrites the float32 vectors.
    double = CountingEmbedder(copy.deepcopy(model).double(), tokenizer)
    ContextEmbeddingStore(double, cache_dir=str(tmp_path)).add_texts(TEXTS)
    assert double.calls == [by_length(TEXTS)] and len(os.listdir(tmp_path)) == 2


def test_store_progress_bar_replaces_the_embedders(model, tokenizer, monkeypatch):
    seen = []
    monkeypatch.setattr(embeddings, "tqdm", lambda *args, **kwargs: seen.append(kwargs) or tqdm(*args, **kwargs))
    embedder = TextEmbedder(model, tokenizer, batch_size=1)
    ContextEmbeddingStore(embedder).add_texts(MANY_TEXTS[:12])  # 12 batches: worth a bar
    assert [(kwargs["unit"], kwargs["disable"]) for kwargs in seen] == [("text", False), ("batch", True)]
    assert embedder._progress  # the embedder's own bar is back for direct calls
