# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Context embeddings: each distinct text embedded once, cached on disk, pooled from the frozen base model."""

import copy
import os

import pytest
import torch
from peft import LoraConfig, get_peft_model

from fssa_trl.data import ContextEmbeddingStore, TextEmbedder, pair_text
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
def test_each_distinct_text_is_embedded_once(model, tokenizer):
    embedder = CountingEmbedder(model, tokenizer)
    store = ContextEmbeddingStore(embedder)
    first = store.add_texts([TEXTS[0], TEXTS[1], TEXTS[0]])
    assert first == [0, 1, 0]
    assert embedder.calls == [[TEXTS[0], TEXTS[1]]]
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


def test_store_without_embedder_rejects_texts():
    with pytest.raises(ValueError, match="no embedder"):
        ContextEmbeddingStore().add_texts(["x"])
