# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Bad training input (issue 10): every case raises a `ValueError` naming the column or argument, the rows and the fix
in the trainer's constructor (or the config's), before anything is trained; what is legal but suspect warns; what
TRL's length filter removes is counted and logged once, never dropped silently."""

import logging
import re
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset, concatenate_datasets
from peft import LoraConfig

from fssa_trl import (
    NPDPOConfig,
    NPDPOTrainer,
    NPEmbeddingRewardConfig,
    NPEmbeddingRewardTrainer,
    NPRewardConfig,
    NPRewardTrainer,
)
from fssa_trl.data.validation import (
    RESERVED_COLUMNS,
    IdenticalPairsWarning,
    check_preference_dataset,
    identical_pairs,
)
from fssa_trl.modeling import LoRAHypernetwork, NPLatentEncoder
from fssa_trl.testing_utils import style_preference_dataset, tiny_causal_lm, tiny_reward_model, word_tokenizer

TINY_NP = dict(num_targets=4, max_context=2, eval_context_sizes=[0, 1], latent_dim=4, encoder_hidden_dim=8)
COMMON = dict(report_to="none", use_cpu=True, disable_tqdm=True, save_strategy="no", per_device_train_batch_size=2)
COMMON.update(max_steps=1, seed=0)
LORA_NP = dict(hypernetwork_hidden_dim=8)


def reward_config(tmp_path, **kwargs):
    return NPRewardConfig(output_dir=str(tmp_path), bf16=False, **{**COMMON, **TINY_NP, **LORA_NP, **kwargs})


def dpo_config(tmp_path, **kwargs):
    return NPDPOConfig(output_dir=str(tmp_path), bf16=False, **{**COMMON, **TINY_NP, **LORA_NP, **kwargs})


def embedding_config(tmp_path, **kwargs):
    defaults = dict(context_embedding="precomputed", decoder_hidden_dim=8)
    return NPEmbeddingRewardConfig(output_dir=str(tmp_path), **{**COMMON, **TINY_NP, **defaults, **kwargs})


def reward_trainer(tokenizer, train, tmp_path, model=None, peft_config=True, **kwargs):
    return NPRewardTrainer(
        model=tiny_reward_model(tokenizer) if model is None else model,
        args=reward_config(tmp_path, **kwargs),
        train_dataset=train,
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["q_proj"]) if peft_config else None,
    )


def dpo_trainer(tokenizer, train, tmp_path, model=None, peft_config=True, **kwargs):
    return NPDPOTrainer(
        model=tiny_causal_lm(tokenizer) if model is None else model,
        args=dpo_config(tmp_path, **kwargs),
        train_dataset=train,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, target_modules=["q_proj"]) if peft_config else None,
    )


def embedding_trainer(train, tmp_path, **kwargs):
    return NPEmbeddingRewardTrainer(model=None, args=embedding_config(tmp_path, **kwargs), train_dataset=train)


def vectors(rows=16, dim=4, **columns) -> Dataset:
    """Precomputed embeddings of two users; `columns` replace or add columns."""
    g = torch.Generator().manual_seed(0)
    data = {
        "chosen_embedding": torch.randn(rows, dim, generator=g).tolist(),
        "rejected_embedding": torch.randn(rows, dim, generator=g).tolist(),
        "user_id": [("u1", "u2")[i % 2] for i in range(rows)],
    }
    return Dataset.from_dict({**data, **columns})


def replaced(dataset: Dataset, column: str, rows: dict) -> Dataset:
    """`dataset` with `column` replaced at `rows` ({row: value})."""
    values = [rows.get(i, value) for i, value in enumerate(dataset[column])]
    return dataset.remove_columns(column).add_column(column, values)


def suggested_code(error) -> str:
    """The fix an error suggests, between its last pair of backticks."""
    return re.findall(r"`([^`]+)`", str(error))[-1]


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


@pytest.fixture(scope="module")
def pairs():
    return style_preference_dataset(8)  # users A and B, 8 pairs each


# ----------------------------------------------------------------------------------------------- 1. margin
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), None])
def test_non_finite_margin_is_refused(tokenizer, pairs, tmp_path, value):
    """It trained to NaN weights and saved them."""
    margin = [0.5] * len(pairs)
    margin[5] = value
    with pytest.raises(
        ValueError, match=r"Row 5 of the train dataset has a 'margin' that is not a finite number"
    ) as e:
        reward_trainer(tokenizer, pairs.add_column("margin", margin), tmp_path)
    assert "1 of 16 rows" in str(e.value) and "math.isfinite" in str(e.value)


def test_non_finite_margin_is_refused_by_the_embedding_trainer_but_not_read_by_dpo(tmp_path):
    margin = [0.0] * 15 + [float("nan")]
    with pytest.raises(ValueError, match="Row 15 of the train dataset has a 'margin'"):
        embedding_trainer(vectors(margin=margin), tmp_path)
    # NP-DPO has no margin in its loss: the column is not its concern.
    check_preference_dataset(vectors(margin=margin), "train", "user_id", True, False, False)


# -------------------------------------------------------------------------------------------- 2, 11. users
def test_a_user_column_of_none_is_refused(tokenizer, pairs, tmp_path):
    """All None became one user named "None"."""
    train = replaced(pairs, "user_id", dict.fromkeys(range(len(pairs))))
    with pytest.raises(
        ValueError, match=r"user column 'user_id' of the train dataset has no user id .* any of its 16"
    ):
        reward_trainer(tokenizer, train, tmp_path)


@pytest.mark.parametrize(
    ("users", "rows"),
    [
        ({3: None, 9: None}, "2 of 16 rows (rows 3, 9)"),  # None among strings
        ({4: "", 6: "  "}, "2 of 16 rows (rows 4, 6)"),  # empty ids
    ],
)
def test_missing_user_ids_are_refused_and_the_suggested_filter_drops_them(tokenizer, pairs, tmp_path, users, rows):
    train = replaced(pairs, "user_id", users)
    with pytest.raises(ValueError, match="has no user id") as e:
        reward_trainer(tokenizer, train, tmp_path)
    assert rows in str(e.value) and "'user_id'" in str(e.value)
    scope = {"dataset": train}
    exec(suggested_code(e.value), scope)
    assert len(scope["dataset"]) == 14
    check_preference_dataset(scope["dataset"], "train", "user_id", False)


def test_nan_user_ids_and_ids_of_another_type_are_refused():
    with pytest.raises(ValueError, match=r"no user id \(None, NaN or an empty string\) in 1 of 16 rows \(rows 2\)"):
        check_preference_dataset(vectors(user_id=[1.0, 2.0, float("nan")] + [1.0] * 13), "x", "user_id", True, False)
    with pytest.raises(ValueError, match="must hold user ids, strings or integers, got Arrow type list<item: int64>"):
        check_preference_dataset(vectors(user_id=[[1]] * 16), "x", "user_id", True, False)


def test_integer_user_ids_are_users_named_by_their_string(tokenizer, pairs, tmp_path):
    train = replaced(pairs, "user_id", {i: 7 if i < 8 else 3 for i in range(16)})
    trainer = reward_trainer(tokenizer, train, tmp_path)
    assert set(trainer.train_dataset["user"]) == {"3", "7"}
    assert trainer.np_dropped["train"] == {"pairs_too_long": 0, "users_too_few_pairs": [], "pairs_of_skipped_users": 0}


# ------------------------------------------------------------------------------------- 3. chosen == rejected
def test_some_identical_pairs_warn_once_with_the_count_and_rows(tokenizer, pairs, tmp_path):
    train = replaced(pairs, "rejected", {3: pairs[3]["chosen"], 7: pairs[7]["chosen"]})
    with pytest.warns(IdenticalPairsWarning) as record:
        trainer = reward_trainer(tokenizer, train, tmp_path)
    messages = [str(w.message) for w in record if issubclass(w.category, IdenticalPairsWarning)]
    assert len(messages) == 1
    assert "2 of 16 pairs of the train dataset have chosen == rejected (rows 3, 7)" in messages[0]
    assert len(trainer.train_dataset) > 0  # legal: the trainer is built


def test_only_identical_pairs_are_refused(tokenizer, pairs, tmp_path):
    train = pairs.remove_columns("rejected").add_column("rejected", pairs["chosen"])
    with pytest.raises(ValueError, match="Every pair of the train dataset has chosen == rejected"):
        reward_trainer(tokenizer, train, tmp_path)


def test_identical_conversations_are_found_by_role_and_content():
    def chat(content, role="assistant"):
        return [{"role": "user", "content": "q"}, {"role": role, "content": content}]

    dataset = Dataset.from_dict(
        {
            "chosen": [chat("a"), chat("a"), chat("a"), chat("a")],
            "rejected": [chat("a"), chat("b"), chat("a", role="system"), chat("a ")],
            "user_id": ["u"] * 4,
        }
    )
    assert identical_pairs(dataset).tolist() == [True, False, False, False]
    with pytest.warns(IdenticalPairsWarning, match=r"1 of 4 pairs .* \(rows 0\)"):
        check_preference_dataset(dataset, "train", "user_id", False)


# ------------------------------------------------------------------------------------------ 4. sizes
@pytest.mark.parametrize(
    ("config", "name", "value", "message"),
    [
        (reward_config, "encoder_hidden_dim", 0, "`encoder_hidden_dim` must be >= 1, got 0: the width"),
        (dpo_config, "latent_dim", -1, "`latent_dim` must be >= 0, got -1"),
        (embedding_config, "embedding_batch_size", 0, "`embedding_batch_size` must be >= 1, got 0"),
        (reward_config, "context_max_length", 0, "`context_max_length` must be >= 1, got 0"),
        (dpo_config, "aggregation_num_heads", 0, "`aggregation_num_heads` must be >= 1, got 0"),
        (embedding_config, "decoder_num_layers", 0, "`decoder_num_layers` must be >= 1, got 0"),
        (reward_config, "hypernetwork_hidden_dim", 0, "`hypernetwork_hidden_dim` must be >= 1, got 0"),
    ],
)
def test_sizes_out_of_range_are_refused_by_the_config(tmp_path, config, name, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        config(tmp_path, **{name: value})


def test_sizes_out_of_range_are_refused_by_the_modules():
    with pytest.raises(ValueError, match="`hidden_dim` must be >= 1"):
        NPLatentEncoder(embedding_dim=4, hidden_dim=0)
    with pytest.raises(ValueError, match="`latent_dim` must be >= 0"):
        NPLatentEncoder(embedding_dim=4, latent_dim=-1)
    with pytest.raises(ValueError, match="`rank` must be >= 1"):
        LoRAHypernetwork(latent_dim=4, num_layers=2, rank=0)


def test_latent_dim_zero_is_the_context_free_model(tmp_path):
    trainer = embedding_trainer(vectors(), tmp_path, latent_dim=0)
    trainer.train()
    assert torch.isfinite(torch.tensor(trainer.state.log_history[-1]["train_loss"]))


def test_zero_dimensional_embeddings_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"'chosen_embedding' and 'rejected_embedding' .* hold empty vectors"):
        embedding_trainer(vectors(dim=0), tmp_path)


# ----------------------------------------------------------------------------------- 5. TRL's length filter
def test_pairs_removed_by_the_reward_length_filter_are_counted_and_logged_once(tokenizer, pairs, tmp_path, caplog):
    long = style_preference_dataset(4, users={"C": "a"}, response_words=(12, 12))  # 4 + 12 + EOS > 14 tokens
    train = concatenate_datasets([pairs, long, style_preference_dataset(2, users={"C": "a"})])
    with caplog.at_level(logging.WARNING, logger="fssa_trl"):
        trainer = reward_trainer(tokenizer, train, tmp_path, max_length=14)
    dropped = {"pairs_too_long": 4, "users_too_few_pairs": ["C"], "pairs_of_skipped_users": 2}
    assert trainer.np_dropped["train"] == dropped
    assert "C" not in set(trainer.train_dataset["user"])
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("fssa_trl")]
    assert len(warnings) == 1, warnings
    assert "4 pairs of the train dataset were removed" in warnings[0]
    assert "longer than `max_length` tokens" in warnings[0] and "Skipped 1 of 3 users" in warnings[0]


def test_prompts_removed_by_the_dpo_length_filter_are_counted(tokenizer, pairs, tmp_path):
    long = style_preference_dataset(4, users={"C": "a"}, prompt_words=12)
    train = concatenate_datasets([pairs, long, style_preference_dataset(2, users={"C": "a"})])
    trainer = dpo_trainer(tokenizer, train, tmp_path, max_length=12)
    dropped = {"prompts_too_long": 4, "users_too_few_pairs": ["C"], "pairs_of_skipped_users": 2}
    assert trainer.np_dropped["train"] == dropped


def test_a_length_filter_that_leaves_no_episode_says_so(tokenizer, pairs, tmp_path):
    with pytest.raises(
        ValueError, match=r"No user .*\(16 pairs of the train dataset were removed .* Raise `max_length`"
    ):
        reward_trainer(tokenizer, pairs, tmp_path, max_length=5)


# ---------------------------------------------------------------------------------------------- 6. empty
@pytest.mark.parametrize("kind", ["reward", "dpo", "embedding"])
def test_an_empty_dataset_is_refused(tokenizer, pairs, tmp_path, kind):
    """A bare StopIteration from TRL's first-example peek."""
    with pytest.raises(ValueError, match="The train dataset is empty"):
        if kind == "reward":
            reward_trainer(tokenizer, pairs.select([]), tmp_path)
        elif kind == "dpo":
            dpo_trainer(tokenizer, pairs.select([]), tmp_path)
        else:
            embedding_trainer(vectors().select([]), tmp_path)


# ----------------------------------------------------------------------------------------- 7. peft_config
@pytest.mark.parametrize("kind", ["reward", "dpo"])
def test_a_model_without_peft_config_is_refused_before_loading(tokenizer, pairs, tmp_path, kind):
    """NPDPOTrainer raised `OSError: Repo id ''` (TRL loading a reference copy by the in-memory model's name)."""
    build, model = (reward_trainer, tiny_reward_model) if kind == "reward" else (dpo_trainer, tiny_causal_lm)
    with pytest.raises(ValueError, match=r"got `peft_config=None` and a `Qwen2For\w+`: pass `peft_config=LoraConfig"):
        build(tokenizer, pairs, tmp_path, model=model(tokenizer), peft_config=False)
    with pytest.raises(ValueError, match="got `peft_config=None` and the model name or path 'not/loaded'"):
        build(tokenizer, pairs, tmp_path, model="not/loaded", peft_config=False)


# ------------------------------------------------------------------------------------ 8. embedding vectors
def test_none_inside_an_embedding_vector_names_the_column_and_row(tmp_path):
    train = replaced(vectors(), "chosen_embedding", {3: [0.0, None, 1.0, 2.0]})
    with pytest.raises(ValueError, match=r"Row 3 of the train dataset has a missing value \(None\) in 'chosen_emb"):
        embedding_trainer(train, tmp_path)


def test_ragged_embedding_vectors_name_the_column_and_row(tmp_path):
    train = replaced(vectors(), "rejected_embedding", {5: [1.0, 2.0, 3.0]})
    with pytest.raises(
        ValueError, match="Row 5 has a 'rejected_embedding' of length 3, row 0 a 'chosen_embedding' of"
    ):
        embedding_trainer(train, tmp_path)


# ------------------------------------------------------------------------------------- 9. reserved columns
@pytest.mark.parametrize("column", RESERVED_COLUMNS)
def test_reserved_column_names_are_refused(column):
    with pytest.raises(ValueError, match=f"Column '{column}' of the train dataset is reserved by fssa_trl; rename it"):
        check_preference_dataset(vectors(**{column: [0] * 16}), "train", "user_id", True, False)


def test_a_target_in_context_column_is_refused_by_the_trainers(tokenizer, pairs, tmp_path):
    """It was taken for episodes already built: KeyError once training started."""
    bad = pairs.add_column("target_in_context", [False] * len(pairs))
    with pytest.raises(ValueError, match="Column 'target_in_context' of the train dataset is reserved"):
        reward_trainer(tokenizer, bad, tmp_path)
    trainer = embedding_trainer(vectors(), tmp_path)
    with pytest.raises(ValueError, match="Column 'target_in_context' of the eval dataset is reserved"):
        trainer.evaluate(vectors(target_in_context=[False] * 16))


# ---------------------------------------------------------------------------------- 10. empty rows' fix
def test_the_suggested_fix_for_empty_rows_runs_on_conversational_and_standard_data(pairs):
    def chat(content):
        return [{"role": "user", "content": "q"}, {"role": "assistant", "content": content}]

    conversational = Dataset.from_dict(
        {
            "chosen": [chat(f"a{i}") if i != 2 else [{"role": "assistant", "content": "  "}] for i in range(6)],
            "rejected": [chat(f"b{i}") if i != 4 else [] for i in range(6)],
            "user_id": ["u"] * 6,
        }
    )
    standard = replaced(pairs, "prompt", {1: " ", 5: None})
    for dataset, first, kept in ((conversational, 2, 4), (standard, 1, 14)):
        with pytest.raises(ValueError, match=f"Row {first} of the train dataset has an empty") as e:
            check_preference_dataset(dataset, "train", "user_id", False)
        scope = {"dataset": dataset}
        exec(suggested_code(e.value), scope)
        assert len(scope["dataset"]) == kept
        check_preference_dataset(scope["dataset"], "train", "user_id", False)


@pytest.mark.parametrize("trainer_class", [NPRewardTrainer, NPDPOTrainer], ids=["reward", "dpo"])
def test_fsdp1_is_refused_with_the_fix(trainer_class):
    """Under FSDP (a distributed launch) the version comes from accelerate's plugin; FSDP1 gets an error naming the
    setting. (FSDP2 itself trains, saves and resumes in tests/test_distributed.py.)"""
    with pytest.raises(ValueError, match=r"FSDP version 1 .*`fsdp_version: 2`.*fsdp2\.yaml"):
        trainer_class._np_check_fsdp_version(SimpleNamespace(fsdp_version=1))
    trainer_class._np_check_fsdp_version(SimpleNamespace(fsdp_version=2))
