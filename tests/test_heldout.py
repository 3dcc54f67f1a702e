# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""The held-out split of the training pairs, its evaluation during training and the memorisation warning it exists
for; how the NP trainers' logs read (context sizes in numeric order, no meaningless token counts); progress while
texts are embedded."""

import warnings

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig

from fssa_trl import (
    NPDPOConfig,
    NPDPOTrainer,
    NPEmbeddingRewardConfig,
    NPEmbeddingRewardTrainer,
    NPRewardConfig,
    NPRewardTrainer,
)
from fssa_trl.data import TextEmbedder
from fssa_trl.data.episodes import split_heldout_rows
from fssa_trl.testing_utils import style_preference_dataset, tiny_causal_lm, tiny_reward_model, word_tokenizer
from fssa_trl.trainer.callbacks import HeldoutEvaluationCallback, MemorisationWarning, memorisation_evidence

# The held-out split is off by default: these tests turn it on (tests that want it off pass `heldout_fraction=0`).
SMALL = dict(report_to="none", use_cpu=True, disable_tqdm=True, save_strategy="no", seed=0, heldout_fraction=0.1)


def embedding_config(tmp_path, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path),
        context_embedding="precomputed",
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        num_targets=8,
        max_context=4,
        latent_dim=16,
        encoder_hidden_dim=64,
        decoder_hidden_dim=64,
        **SMALL,
    )
    defaults.update(kwargs)
    return NPEmbeddingRewardConfig(**defaults)


def random_pairs(pairs_per_user: int, num_users: int = 4, dim: int = 8, seed: int = 0) -> dict:
    """Pairs of random vectors: nothing about a choice generalises, to another pair or from the context."""
    g = torch.Generator().manual_seed(seed)
    rows = pairs_per_user * num_users
    return {
        "chosen_embedding": torch.randn(rows, dim, generator=g).tolist(),
        "rejected_embedding": torch.randn(rows, dim, generator=g).tolist(),
        "user_id": [f"u{i % num_users}" for i in range(rows)],
    }


def style_pairs(pairs_per_user: int, num_users: int = 8, dim: int = 16, seed: int = 0) -> dict:
    """Each pair offers a response of style a (embedding +1 along the first axis, plus noise) and one of style b (-1);
    even users prefer a, odd users b. Without context 50%; the context tells which style the user prefers."""
    g = torch.Generator().manual_seed(seed)
    style = torch.zeros(dim)
    style[0] = 1.0
    rows = {"chosen_embedding": [], "rejected_embedding": [], "user_id": []}
    for user in range(num_users):
        for _ in range(pairs_per_user):
            a, b = style + torch.randn(dim, generator=g), -style + torch.randn(dim, generator=g)
            chosen, rejected = (a, b) if user % 2 == 0 else (b, a)
            rows["chosen_embedding"].append(chosen.tolist())
            rows["rejected_embedding"].append(rejected.tolist())
            rows["user_id"].append(f"u{user}")
    return rows


def pair_indices(episodes: Dataset) -> set[int]:
    """Store indices of the chosen responses of every pair of the episodes (targets and contexts)."""
    out = set()
    for column in ("chosen_embedding_index", "context_chosen_embedding_index"):
        out.update(i for row in episodes[column] for i in row)
    return out


def ctx_sizes(entry: dict) -> list[int]:
    return [int(key.rsplit("ctx", 1)[1]) for key in entry if "accuracy_ctx" in key]


# ----------------------------------------------------------------------------------------------------- the split
def test_split_is_seeded_disjoint_and_per_user():
    rows_by_user = {"a": list(range(0, 40)), "b": list(range(40, 100)), "few": list(range(100, 110))}
    kept, heldout = split_heldout_rows(rows_by_user, 0.1, min_pairs=5, max_pairs=8, min_left=8, seed=0)
    # a: ceil(4) raised to 5; b: ceil(6); few: 10 - 5 < 8 left for training, so none held out
    assert {user: len(rows) for user, rows in heldout.items()} == {"a": 5, "b": 6}
    for user, rows in rows_by_user.items():
        assert sorted(kept[user] + heldout.get(user, [])) == rows
        assert not set(kept[user]) & set(heldout.get(user, []))
    assert split_heldout_rows(rows_by_user, 0.1, 5, 8, 8, seed=0) == (kept, heldout)
    assert split_heldout_rows(rows_by_user, 0.1, 5, 8, 8, seed=1)[1] != heldout
    _, capped = split_heldout_rows({"big": list(range(1000))}, 0.5, 5, 8, 8, seed=0)
    assert len(capped["big"]) == 8


def test_trainer_holds_out_pairs_of_each_user_that_training_never_sees(tmp_path):
    train = Dataset.from_dict(random_pairs(40))
    trainer = NPEmbeddingRewardTrainer(args=embedding_config(tmp_path), train_dataset=train)
    heldout = trainer.heldout_dataset
    assert sorted(set(heldout["user"])) == ["u0", "u1", "u2", "u3"]
    assert not pair_indices(heldout) & pair_indices(trainer.train_dataset)
    # 5 pairs per user (max_context + 1 > ceil(0.1 * 40)): at context 0 and 4, every pair is a target once per size
    sizes = [len(c) for c in heldout["context_chosen_embedding_index"]]
    assert sorted(set(sizes)) == [0, 4] and sum(len(t) for t in heldout["chosen_embedding_index"]) == 4 * 5 * 2
    assert len(pair_indices(heldout)) == 4 * 5
    assert sum(isinstance(cb, HeldoutEvaluationCallback) for cb in trainer.callback_handler.callbacks) == 1
    again = NPEmbeddingRewardTrainer(args=embedding_config(tmp_path), train_dataset=train)
    assert again.heldout_dataset.to_dict() == heldout.to_dict()
    other_seed = NPEmbeddingRewardTrainer(args=embedding_config(tmp_path, seed=1), train_dataset=train)
    assert other_seed.heldout_dataset.to_dict() != heldout.to_dict()


@pytest.mark.parametrize("case", ["fraction_zero", "eval_dataset"])
def test_no_split_without_a_fraction_or_with_an_eval_dataset(tmp_path, case):
    train = Dataset.from_dict(random_pairs(40))
    if case == "fraction_zero":
        trainer = NPEmbeddingRewardTrainer(args=embedding_config(tmp_path, heldout_fraction=0), train_dataset=train)
    else:
        eval_dataset = Dataset.from_dict(random_pairs(12, seed=1))  # max(eval_context_sizes) + 1 pairs a user
        trainer = NPEmbeddingRewardTrainer(
            args=embedding_config(tmp_path), train_dataset=train, eval_dataset=eval_dataset
        )
    assert trainer.heldout_dataset is None
    assert not any(isinstance(cb, HeldoutEvaluationCallback) for cb in trainer.callback_handler.callbacks)
    assert len(pair_indices(trainer.train_dataset)) == 160  # every training pair trains


def test_users_with_too_few_pairs_keep_them_all(tmp_path, caplog):
    train = Dataset.from_dict(random_pairs(12))  # 12 - 5 held out < num_targets
    trainer = NPEmbeddingRewardTrainer(args=embedding_config(tmp_path), train_dataset=train)
    assert trainer.heldout_dataset is None and "No user has enough preference pairs" in caplog.text
    assert len(pair_indices(trainer.train_dataset)) == 48


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("heldout_fraction", 1.0, "`heldout_fraction` must be in"),
        ("heldout_fraction", -0.1, "`heldout_fraction` must be in"),
        ("heldout_max_pairs_per_user", 4, "`heldout_max_pairs_per_user` \\(4\\) must be > `max_context`"),
        ("memorisation_warning_threshold", 0.5, "`memorisation_warning_threshold` must be in"),
    ],
)
def test_bad_heldout_fields(tmp_path, field, value, match):
    with pytest.raises(ValueError, match=match):
        embedding_config(tmp_path, **{field: value})


# -------------------------------------------------------------------------------------- evaluation in training
LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
LORA_NP = dict(bf16=False, latent_dim=8, encoder_hidden_dim=16, hypernetwork_hidden_dim=16, num_targets=8)


def lora_trainer(kind, tmp_path, **kwargs):
    tokenizer = word_tokenizer()
    train = style_preference_dataset(40, seed=0)
    common = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, max_context=4, **LORA_NP, **SMALL)
    if kind == "reward":
        return NPRewardTrainer(
            model=tiny_reward_model(tokenizer),
            args=NPRewardConfig(**common, **kwargs),
            train_dataset=train,
            processing_class=tokenizer,
            peft_config=LoraConfig(task_type="SEQ_CLS", **LORA),
        )
    return NPDPOTrainer(
        model=tiny_causal_lm(tokenizer),
        args=NPDPOConfig(**common, **kwargs),
        train_dataset=train,
        processing_class=tokenizer,
        peft_config=LoraConfig(**LORA),
    )


@pytest.mark.parametrize("kind", ["embedding", "reward", "dpo", "dpo_precomputed_reference"])
def test_heldout_accuracy_is_logged_at_every_log_of_every_trainer(kind, tmp_path):
    args = dict(max_steps=3, logging_steps=1)
    if kind == "embedding":
        trainer = NPEmbeddingRewardTrainer(
            args=embedding_config(tmp_path, **args), train_dataset=Dataset.from_dict(random_pairs(40))
        )
    elif kind == "dpo_precomputed_reference":  # TRL's DPOTrainer.evaluate would prepare the episodes again
        trainer = lora_trainer("dpo", tmp_path, precompute_ref_log_probs=True, **args)
    else:
        trainer = lora_trainer(kind, tmp_path, **args)
    users = set(trainer.heldout_dataset["user"])
    assert pair_indices(trainer.heldout_dataset).isdisjoint(pair_indices(trainer.train_dataset)) and users
    trainer.train()
    heldout = [e for e in trainer.state.log_history if "heldout_loss" in e]
    train_logs = [e for e in trainer.state.log_history if "loss" in e]
    assert [e["step"] for e in heldout] == [e["step"] for e in train_logs] == [1, 2, 3]
    for entry in heldout:
        assert 0 <= entry["heldout_accuracy_ctx0"] <= 1 and 0 <= entry["heldout_accuracy_ctx4"] <= 1
        assert not any(key.startswith("eval_") for key in entry)
    for entry in train_logs:  # the training log of the step is still there, in training mode
        assert "accuracy_unseen" in entry and not any(key.startswith("heldout_") for key in entry)
    assert trainer.model.training


def test_heldout_evaluation_does_not_change_training(tmp_path):
    """The evaluations draw from the RNGs (DataLoader seeds) that the Gaussian latent samples from: restored."""

    def train(evaluate: bool):
        args = embedding_config(tmp_path, max_steps=6, logging_steps=1, latent_type="gaussian")
        trainer = NPEmbeddingRewardTrainer(args=args, train_dataset=Dataset.from_dict(random_pairs(40)))
        if not evaluate:
            trainer.heldout_dataset = None
        trainer.train()
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}, losses, trainer.state.log_history

    (with_eval, losses, history), (without, expected, _) = train(True), train(False)
    assert any("heldout_loss" in e for e in history)
    assert losses == expected
    for name, param in without.items():
        assert torch.equal(with_eval[name], param), name


def test_resume_with_heldout_evaluation_is_exact(tmp_path):
    train = Dataset.from_dict(random_pairs(40))
    common = dict(max_steps=6, logging_steps=1, save_strategy="steps", save_steps=3, latent_type="gaussian")
    full = NPEmbeddingRewardTrainer(args=embedding_config(tmp_path / "full", **common), train_dataset=train)
    full.train()
    resumed = NPEmbeddingRewardTrainer(args=embedding_config(tmp_path / "resumed", **common), train_dataset=train)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))
    got = dict(resumed.model.named_parameters())
    for name, param in full.model.named_parameters():
        torch.testing.assert_close(got[name], param, atol=1e-6, rtol=1e-5, msg=name)
    assert [e["step"] for e in resumed.state.log_history if "heldout_loss" in e] == [1, 2, 3, 4, 5, 6]


def test_evaluate_logs_under_its_metric_key_prefix(tmp_path):
    trainer = NPEmbeddingRewardTrainer(
        args=embedding_config(tmp_path, heldout_fraction=0, eval_context_sizes=[0, 2]),
        train_dataset=Dataset.from_dict(random_pairs(40)),
    )
    metrics = trainer.evaluate(Dataset.from_dict(random_pairs(10, seed=1)), metric_key_prefix="test")
    assert {"test_loss", "test_accuracy_ctx0", "test_accuracy_ctx2", "test_accuracy_unseen"} <= set(metrics)
    assert not any(key.startswith("eval_") for key in metrics)


# ------------------------------------------------------------------------------------------- memorisation warning
def run(tmp_path, rows, **kwargs) -> tuple[NPEmbeddingRewardTrainer, list]:
    args = embedding_config(
        tmp_path,
        num_train_epochs=60,
        logging_steps=5,
        learning_rate=1e-2,
        decoder_hidden_dim=256,
        heldout_fraction=0.25,
        **kwargs,
    )
    trainer = NPEmbeddingRewardTrainer(args=args, train_dataset=Dataset.from_dict(rows))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    return trainer, [w for w in caught if issubclass(w.category, MemorisationWarning)]


def test_memorising_run_is_reported_once(tmp_path):
    # 24 pairs per user of random vectors: a large decoder learns the training pairs by heart, nothing carries over
    trainer, caught = run(tmp_path, random_pairs(24, num_users=8, dim=16))
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "memorise" in message and "episode_passes" in message and "learning_rate" in message
    last_train = [e for e in trainer.state.log_history if "accuracy_ctx0" in e][-1]
    assert last_train["accuracy_ctx0"] > 0.9


def test_healthy_run_is_not_reported(tmp_path):
    # Same pairs per user and training, but the context tells the users apart: held-out accuracy rises with context
    trainer, caught = run(tmp_path, style_pairs(24))
    assert not caught
    last = [e for e in trainer.state.log_history if "heldout_loss" in e][-1]
    assert last["heldout_accuracy_ctx4"] > last["heldout_accuracy_ctx0"] + 0.2


def heldout(step, ctx0, ctx4):
    return {"heldout_accuracy_ctx0": ctx0, "heldout_accuracy_ctx4": ctx4, "step": step}


def test_memorisation_rule():
    train = {"loss": 0.1, "accuracy_ctx0": 0.9}
    memorising = [train, heldout(1, 0.5, 0.52), train, heldout(2, 0.5, 0.49), train, heldout(3, 0.45, 0.48)]
    assert memorisation_evidence(memorising, 4, 0.05) == dict(
        step=3, train_accuracy=0.9, heldout_ctx0=0.45, heldout_gain=pytest.approx(0.03)
    )
    assert memorisation_evidence(memorising[:4], 4, 0.05) is None  # two evaluations are not enough
    assert memorisation_evidence([*memorising, train, heldout(4, 0.5, 0.7)], 4, 0.05) is None  # context helps now
    assert memorisation_evidence(memorising, 4, 0.01) is None  # the gain threshold
    # Every user agrees: context is useless, but held-out pairs are ranked as well as the training pairs
    agree = [train, heldout(1, 0.88, 0.88)] * 3
    assert memorisation_evidence(agree, 4, 0.05) is None
    # Nothing learnt yet, and a 0-shot training accuracy a little over chance (a few episodes per logging window)
    noise = {"loss": 0.7, "accuracy_ctx0": 0.58}
    assert memorisation_evidence([noise, heldout(1, 0.5, 0.5)] * 3, 4, 0.05) is None


# -------------------------------------------------------------------------------------------------------- logs
def test_context_sizes_are_logged_in_numeric_order(tmp_path):
    args = embedding_config(
        tmp_path, num_targets=12, max_context=11, max_steps=4, logging_steps=2, eval_context_sizes=[0, 2, 10]
    )
    trainer = NPEmbeddingRewardTrainer(args=args, train_dataset=Dataset.from_dict(random_pairs(48)))
    trainer.train()
    metrics = trainer.evaluate(Dataset.from_dict(random_pairs(12, seed=1)))
    logged = [e for e in trainer.state.log_history if ctx_sizes(e)]
    assert any(max(ctx_sizes(e)) >= 10 and min(ctx_sizes(e)) < 10 for e in logged if "loss" in e)
    assert ctx_sizes(next(e for e in logged if "heldout_loss" in e)) == [0, 11]
    assert ctx_sizes(metrics) == [0, 2, 10]
    for entry in logged:
        assert ctx_sizes(entry) == sorted(ctx_sizes(entry)), list(entry)


def test_embedding_trainer_logs_no_token_counts(tmp_path):
    trainer = NPEmbeddingRewardTrainer(
        args=embedding_config(tmp_path, max_steps=2, logging_steps=1),
        train_dataset=Dataset.from_dict(random_pairs(40)),
    )
    trainer.train()
    assert not any("num_tokens" in key or "tokens_seen" in key for e in trainer.state.log_history for key in e)
    with pytest.raises(ValueError, match="include_num_input_tokens_seen='no'"):
        NPEmbeddingRewardTrainer(
            args=embedding_config(tmp_path, include_num_input_tokens_seen=True),
            train_dataset=Dataset.from_dict(random_pairs(40)),
        )


@pytest.mark.parametrize(("num_texts", "shown"), [(12, True), (3, False)])
def test_embedding_shows_progress_when_it_takes_a_while(capsys, num_texts, shown):
    tokenizer = word_tokenizer()
    embedder = TextEmbedder(tiny_reward_model(tokenizer), tokenizer, batch_size=1)
    embedder.embed([f"p{i} a{i}" for i in range(num_texts)])
    assert ("Embedding texts" in capsys.readouterr().err) == shown


def test_redrawn_episodes_never_hold_heldout_pairs(tmp_path):
    train = Dataset.from_dict(random_pairs(40))
    trainer = NPEmbeddingRewardTrainer(args=embedding_config(tmp_path, redraw_episodes=True), train_dataset=train)
    heldout = pair_indices(trainer.heldout_dataset)
    assert len(heldout) == 4 * 5
    epochs = [pair_indices(trainer.train_dataset.dataset(epoch)) for epoch in range(4)]
    for pairs in epochs:  # every kept pair (35 per user), in every epoch; no held-out one
        assert pairs.isdisjoint(heldout) and len(pairs) == 4 * 35 and pairs == epochs[0]
    assert trainer.train_dataset.episodes(1) != trainer.train_dataset.episodes(0)


@pytest.mark.parametrize("kind", ["reward", "dpo", "dpo_precomputed_reference"])
def test_redrawn_episodes_train_the_lora_trainers(kind, tmp_path):
    # TRL's token columns (and the precomputed reference log-probs) are carried per target of every epoch's episodes.
    extra = {"precompute_ref_log_probs": True} if kind == "dpo_precomputed_reference" else {}
    trainer = lora_trainer(
        kind.split("_")[0], tmp_path, num_train_epochs=2, logging_steps=3, redraw_episodes=True, **extra
    )
    episodes = trainer.train_dataset
    assert episodes.episodes(1) != episodes.episodes(0)
    columns = {"reward": {"chosen_ids", "rejected_ids"}, "dpo": {"prompt_ids", "chosen_ids", "rejected_ids"}}
    columns = columns[kind.split("_")[0]] | ({"ref_chosen_logps", "ref_rejected_logps"} if extra else set())
    row = episodes[len(episodes) + 1]  # an episode of the second epoch
    assert columns <= set(row) and all(len(row[c]) == 8 for c in columns)
    assert pair_indices(episodes.dataset(1)).isdisjoint(pair_indices(trainer.heldout_dataset))
    trainer.train()
    assert trainer.state.global_step == 2 * -(-len(episodes) // 4)  # 2 epochs of ceil(episodes / batch) steps
    assert [e["step"] for e in trainer.state.log_history if "heldout_loss" in e]
