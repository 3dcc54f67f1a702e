# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""DataCollatorForContextSets: TRL's collator for the target tokens, padded context sets beside it."""

import torch
from trl.trainer.reward_trainer import DataCollatorForPreference

from fssa_trl.data import CONTEXT_KEYS, DataCollatorForContextSets, right_pad

TABLE = torch.arange(8.0).view(4, 2)  # 4 distinct embeddings, D=2


def episode(chosen, rejected, in_context, chosen_index, rejected_index, context_chosen, context_rejected, **extra):
    """One episode row as the trainers build it (token ids, flags and embedding-table indices)."""
    return {
        "chosen_ids": chosen,
        "rejected_ids": rejected,
        "target_in_context": in_context,
        "chosen_embedding_index": chosen_index,
        "rejected_embedding_index": rejected_index,
        "context_chosen_embedding_index": context_chosen,
        "context_rejected_embedding_index": context_rejected,
        **extra,
    }


def docstring_episodes():
    return [
        episode([[1, 2], [3]], [[4], [5, 6]], [True, False], [0, 1], [2, 3], [0], [2]),
        episode([[7]], [[8]], [False], [1], [3], [], []),
    ]


def test_literal_output():
    collator = DataCollatorForContextSets(lambda: TABLE, DataCollatorForPreference(pad_token_id=0))
    batch = collator(docstring_episodes())
    assert set(batch) == {"input_ids", "attention_mask", *CONTEXT_KEYS} - {
        "target_chosen_embeddings",
        "target_rejected_embeddings",
        "target_mask",
    }
    # Rows: chosen targets of all episodes, then rejected targets, right-padded.
    torch.testing.assert_close(batch["input_ids"], torch.tensor([[1, 2], [3, 0], [7, 0], [4, 0], [5, 6], [8, 0]]))
    torch.testing.assert_close(batch["attention_mask"], torch.tensor([[1, 1], [1, 0], [1, 0], [1, 0], [1, 1], [1, 0]]))
    torch.testing.assert_close(batch["context_chosen_embeddings"], torch.tensor([[[0.0, 1.0]], [[0.0, 0.0]]]))
    torch.testing.assert_close(batch["context_rejected_embeddings"], torch.tensor([[[4.0, 5.0]], [[0.0, 0.0]]]))
    assert batch["context_mask"].dtype == torch.bool
    assert batch["context_mask"].tolist() == [[True], [False]]
    assert batch["target_episode"].tolist() == [0, 0, 1]
    assert batch["target_unseen"].tolist() == [False, True, True]
    assert batch["target_context_size"].tolist() == [1, 1, 0]


def test_context_sets_are_padded_to_the_largest():
    episodes = [
        episode([[1]], [[2]], [True], [0], [1], [0], [1]),
        episode([[1], [1], [1]], [[2], [2], [2]], [True, True, True], [3, 2, 1], [0, 1, 2], [3, 2, 1], [0, 1, 2]),
    ]
    batch = DataCollatorForContextSets(lambda: TABLE)(episodes)
    assert batch["context_chosen_embeddings"].shape == (2, 3, 2)
    assert batch["context_mask"].tolist() == [[True, False, False], [True, True, True]]
    torch.testing.assert_close(batch["context_chosen_embeddings"][1], TABLE[[3, 2, 1]])
    torch.testing.assert_close(batch["context_rejected_embeddings"][1], TABLE[[0, 1, 2]])
    torch.testing.assert_close(batch["context_chosen_embeddings"][0, 0], TABLE[0])
    # Padded slots are zeros, not a copy of some row of the table.
    assert not batch["context_chosen_embeddings"][0, 1:].any()
    assert not batch["context_rejected_embeddings"][0, 1:].any()
    assert batch["target_context_size"].tolist() == [1, 3, 3, 3]
    assert batch["target_unseen"].tolist() == [False] * 4


def test_whole_batch_zero_shot_gives_empty_context():
    episodes = [episode([[1]], [[2]], [False], [0], [1], [], []) for _ in range(3)]
    batch = DataCollatorForContextSets(lambda: TABLE, DataCollatorForPreference(pad_token_id=0))(episodes)
    assert batch["context_chosen_embeddings"].shape == (3, 0, 2)
    assert batch["context_rejected_embeddings"].shape == (3, 0, 2)
    assert batch["context_mask"].shape == (3, 0)
    assert batch["target_context_size"].tolist() == [0, 0, 0]
    assert batch["target_unseen"].all()


def test_tokens_match_trl_collator_on_flattened_targets():
    episodes = [
        episode([[5, 6, 7], [8]], [[9], [10, 11]], [False, True], [0, 1], [2, 3], [1], [3], margin=[0.5, -1.0]),
        episode([[12, 13]], [[14, 15, 16, 17]], [False], [2], [0], [], [], margin=[2.0]),
    ]
    trl_collator = DataCollatorForPreference(pad_token_id=3, pad_to_multiple_of=4)
    batch = DataCollatorForContextSets(lambda: TABLE, trl_collator)(episodes)
    flat = [
        {"chosen_ids": e["chosen_ids"][i], "rejected_ids": e["rejected_ids"][i], "margin": e["margin"][i]}
        for e in episodes
        for i in range(len(e["chosen_ids"]))
    ]
    expected = trl_collator(flat)
    assert batch["input_ids"].shape == (6, 4)  # pad_to_multiple_of reaches TRL's collator
    for key in ("input_ids", "attention_mask", "margin"):
        torch.testing.assert_close(batch[key], expected[key])
    torch.testing.assert_close(batch["margin"], torch.tensor([0.5, -1.0, 2.0]))


def test_include_target_embeddings():
    collator = DataCollatorForContextSets(lambda: TABLE, include_target_embeddings=True)
    batch = collator(docstring_episodes())
    assert "input_ids" not in batch  # no target collator: no tokens
    assert batch["target_chosen_embeddings"].shape == (2, 2, 2)
    torch.testing.assert_close(batch["target_chosen_embeddings"][0], TABLE[[0, 1]])
    torch.testing.assert_close(batch["target_rejected_embeddings"][0], TABLE[[2, 3]])
    torch.testing.assert_close(batch["target_chosen_embeddings"][1, 0], TABLE[1])
    torch.testing.assert_close(batch["target_rejected_embeddings"][1, 0], TABLE[3])
    assert batch["target_mask"].tolist() == [[True, True], [True, False]]
    assert "target_mask" not in DataCollatorForContextSets(lambda: TABLE)(docstring_episodes())


def test_embedding_table_is_read_at_call_time():
    table = {"t": TABLE}
    collator = DataCollatorForContextSets(lambda: table["t"])
    table["t"] = TABLE * 10  # the store may grow after the collator is built (eval sets embedded later)
    batch = collator(docstring_episodes())
    torch.testing.assert_close(batch["context_chosen_embeddings"][0, 0], TABLE[0] * 10)


def test_margin_without_token_collator():
    """Frozen-embedding episodes carry no tokens; a `margin` column still reaches the batch, one value per target."""
    episodes = docstring_episodes()
    episodes[0]["margin"], episodes[1]["margin"] = [0.5, -1.0], [2.0]
    batch = DataCollatorForContextSets(lambda: TABLE, include_target_embeddings=True)(episodes)
    torch.testing.assert_close(batch["margin"], torch.tensor([0.5, -1.0, 2.0]))
    assert "input_ids" not in batch


def test_right_pad():
    torch.testing.assert_close(right_pad([[1, 2, 3], [4]], padding_value=9), torch.tensor([[1, 2, 3], [4, 9, 9]]))
