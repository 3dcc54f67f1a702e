# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""NPRewardTrainer end to end on a tiny Qwen2 built in code: learning, saving, resuming, checkpointing, bad input."""

import copy
import os

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from trl import RewardConfig, RewardTrainer

from fssa_trl import NPRewardConfig, NPRewardTrainer, SteerableRewardModel, evaluate_few_shot
from fssa_trl.testing_utils import style_preference_dataset, tiny_reward_model, word_tokenizer

LORA = dict(task_type="SEQ_CLS", r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"])
SMALL_NP = dict(latent_dim=16, encoder_hidden_dim=64, hypernetwork_hidden_dim=64)


def np_config(tmp_path, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path),
        report_to="none",
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
        save_strategy="no",
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        num_targets=16,
        max_context=10,
        episode_passes=4,
        seed=0,
        **SMALL_NP,
    )
    defaults.update(kwargs)
    return NPRewardConfig(**defaults)


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


@pytest.fixture(scope="module")
def data():
    return style_preference_dataset(96, seed=0), style_preference_dataset(40, seed=1)


def make_trainer(tokenizer, train, tmp_path, eval_dataset=None, seed=0, **kwargs):
    return NPRewardTrainer(
        model=tiny_reward_model(tokenizer, seed=seed),
        args=np_config(tmp_path, **kwargs),
        train_dataset=train,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=LoraConfig(**LORA),
    )


def test_train_updates_trainable_parameters_only(tokenizer, data, tmp_path):
    trainer = make_trainer(tokenizer, data[0], tmp_path, max_steps=3)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert "train_loss" in trainer.state.log_history[-1]
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert any(n.startswith("fssa_np.encoder") for n in trainable)
    assert any(n.startswith("fssa_np.hypernetwork") for n in trainable)
    assert any("lora_" in n for n in trainable)
    for name, param in trainer.model.named_parameters():
        if name in trainable:
            # The encoder's empty-set vector only gets a gradient from 0-shot episodes; the zero-initialised last
            # hypernetwork layer moves first, the rest of the hypernetwork from the next step on.
            if name == "fssa_np.encoder.empty_set":
                continue
            assert not torch.equal(param, before[name]), f"{name} did not change"
        else:
            assert torch.equal(param, before[name]), f"frozen {name} changed"


@pytest.fixture(scope="module")
def trained(tokenizer, data, tmp_path_factory):
    """NP-BTL and a plain TRL RewardTrainer trained on the same two-user data."""
    train, test = data
    base_dir = tmp_path_factory.mktemp("base")  # a base model on disk, as from the Hub
    tiny_reward_model(tokenizer).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    trainer = NPRewardTrainer(
        model=str(base_dir),
        args=np_config(tmp_path_factory.mktemp("np"), num_train_epochs=20),
        train_dataset=train,
        processing_class=tokenizer,  # AutoTokenizer would map this word-level tokenizer to Qwen2's BPE class
        peft_config=LoraConfig(**LORA),
    )
    trainer.train()
    plain_args = RewardConfig(
        output_dir=str(tmp_path_factory.mktemp("plain")),
        report_to="none",
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
        save_strategy="no",
        per_device_train_batch_size=16,
        learning_rate=3e-3,
        num_train_epochs=20,
    )
    plain = RewardTrainer(
        model=tiny_reward_model(tokenizer),
        args=plain_args,
        train_dataset=train,
        processing_class=tokenizer,
        peft_config=LoraConfig(**LORA),
    )
    plain.train()
    return trainer, plain, test


def test_accuracy_rises_with_context_for_every_user(trained):
    trainer, plain, test = trained
    results = evaluate_few_shot(trainer, test, context_sizes=(0, 1, 3, 5, 10), name="NP-BTL")
    print(results)
    for user in ("A", "B"):
        assert results.accuracy(10, user) >= results.accuracy(0, user) + 0.15, user
        assert results.accuracy(10, user) >= 0.9, user
    # The plain BTL model cannot serve two opposite users: each stays near chance.
    baseline = evaluate_few_shot(SteerableRewardModel(plain.model, plain.processing_class), test, name="BTL")
    print(baseline)
    for user in ("A", "B"):
        for size in (0, 10):
            assert abs(baseline.accuracy(size, user) - 0.5) <= 0.2, (user, size)


def test_eval_logs_accuracy_by_context_size(trained):
    trainer, _, test = trained
    metrics = trainer.evaluate(test)
    for size in (0, 1, 3, 5, 10):
        assert f"eval_accuracy_ctx{size}" in metrics
    assert metrics["eval_accuracy_ctx10"] > metrics["eval_accuracy_ctx0"]


def test_save_and_from_pretrained_give_identical_rewards(trained, tokenizer, tmp_path):
    trainer, _, test = trained
    trainer.save_model(str(tmp_path / "model"))
    saved = set(os.listdir(tmp_path / "model"))
    assert {"fssa_config.json", "fssa_np.safetensors", "adapter_model.safetensors"} <= saved
    assert not any(name.endswith((".bin", ".pt", ".pth")) and name != "training_args.bin" for name in saved)

    loaded = SteerableRewardModel.from_pretrained(str(tmp_path / "model"))
    in_memory = trainer.steerable_model()
    rows = test.select(range(12))
    context = [
        {"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows.select(range(5))
    ]
    prompts, responses = list(rows["prompt"]) * 2, list(rows["chosen"]) + list(rows["rejected"])
    for ctx in (context, [], None):
        expected = in_memory.score(prompts, responses, context=ctx)
        got = loaded.score(prompts, responses, context=ctx)
        assert got.dtype == torch.float32 and got.shape == (len(prompts),)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    # The context steers: user A's context ranks A-style responses higher, and changes the scores.
    assert not torch.allclose(loaded.score(prompts, responses, context=context), loaded.score(prompts, responses))


def test_frozen_backbone_save_and_load(tokenizer, data, tmp_path):
    train, test = data
    base = tiny_reward_model(tokenizer).model  # the Qwen2 body
    base.save_pretrained(tmp_path / "encoder")
    tokenizer.save_pretrained(tmp_path / "encoder")
    args = np_config(tmp_path / "out", frozen_backbone=True, max_steps=5, context_embedding="base")
    trainer = NPRewardTrainer(
        model=str(tmp_path / "encoder"), args=args, train_dataset=train, processing_class=tokenizer
    )
    assert {n for n, p in trainer.model.named_parameters() if p.requires_grad} == {
        n for n, _ in trainer.model.named_parameters()
    }
    assert all(n.startswith("fssa_np.") for n, _ in trainer.model.named_parameters())
    trainer.train()
    trainer.save_model()
    loaded = SteerableRewardModel.from_pretrained(str(tmp_path / "out"))
    context = [
        {"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in test.select(range(4))
    ]
    prompts, responses = list(test["prompt"][:6]), list(test["chosen"][:6])
    expected = trainer.steerable_model().score(prompts, responses, context=context)
    torch.testing.assert_close(loaded.score(prompts, responses, context=context), expected, atol=1e-6, rtol=0)


def test_resume_restores_encoder_and_hypernetwork(tokenizer, data, tmp_path):
    train = data[0]
    common = dict(max_steps=6, save_strategy="steps", save_steps=3, learning_rate=1e-2)
    full = make_trainer(tokenizer, train, tmp_path / "full", **common)
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-3"
    assert (checkpoint / "fssa_np.safetensors").is_file()

    resumed = make_trainer(tokenizer, train, tmp_path / "resumed", **common)
    with torch.no_grad():  # a fresh run whose NP modules and adapter differ: only the checkpoint can restore them
        for param in resumed.model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param))
    resumed.train(resume_from_checkpoint=str(checkpoint))
    expected = {n: p for n, p in full.model.named_parameters() if p.requires_grad}
    got = dict(resumed.model.named_parameters())
    for name, param in expected.items():
        torch.testing.assert_close(got[name], param, atol=1e-6, rtol=1e-5, msg=name)


def test_gradient_checkpointing_same_loss_and_gradients(tokenizer, data, tmp_path):
    def loss_and_grads(checkpointing):
        trainer = make_trainer(
            tokenizer,
            data[0],
            tmp_path / str(checkpointing),
            gradient_checkpointing=checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
        model = trainer.model
        # Give the hypernetwork a non-trivial output so that per-example gates differ from 1.
        torch.manual_seed(0)
        for p in model.fssa_np.hypernetwork.parameters():
            p.data.normal_(0, 0.3)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        batch = next(iter(trainer.get_train_dataloader()))
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        trainer._modulator.clear()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss_on, grads_on = loss_and_grads(True)
    loss_off, grads_off = loss_and_grads(False)
    torch.testing.assert_close(loss_on, loss_off)
    assert grads_on.keys() == grads_off.keys()
    assert any(n.startswith("fssa_np.hypernetwork") for n in grads_on)
    assert any(n.startswith("fssa_np.encoder") for n in grads_on)
    for name in grads_on:
        torch.testing.assert_close(grads_on[name], grads_off[name], atol=1e-6, rtol=1e-4, msg=name)


def test_reentrant_checkpointing_is_rejected(tokenizer, data, tmp_path):
    with pytest.raises(ValueError, match="use_reentrant"):
        make_trainer(
            tokenizer,
            data[0],
            tmp_path,
            gradient_checkpointing=True,
            gradient_checkpointing_kwargs={"use_reentrant": True},
        )


# ------------------------------------------------------------------------------------------------- bad input
def _precomputed(rows, dim=4, users=("u1", "u2")):
    g = torch.Generator().manual_seed(0)
    return {
        "chosen_embedding": torch.randn(rows, dim, generator=g).tolist(),
        "rejected_embedding": torch.randn(rows, dim, generator=g).tolist(),
        "user_id": [users[i % len(users)] for i in range(rows)],
    }


def _fast(tmp_path, train, eval_dataset=None, **kwargs):
    args = np_config(tmp_path, frozen_backbone=True, context_embedding="precomputed", max_steps=1, **kwargs)
    return NPRewardTrainer(model=None, args=args, train_dataset=train, eval_dataset=eval_dataset)


def test_missing_user_column(tokenizer, data, tmp_path):
    with pytest.raises(ValueError, match="user column 'user_id'"):
        make_trainer(tokenizer, data[0].remove_columns("user_id"), tmp_path)


@pytest.mark.parametrize("column", ["chosen", "rejected"])
def test_missing_preference_column(tokenizer, data, tmp_path, column):
    with pytest.raises(ValueError, match=f"missing the column\\(s\\) \\['{column}'\\]"):
        make_trainer(tokenizer, data[0].remove_columns(column), tmp_path)


@pytest.mark.parametrize("column", ["prompt", "chosen", "rejected"])
def test_empty_strings(tokenizer, data, tmp_path, column):
    bad = data[0].map(lambda x, i: {column: "  " if i == 7 else x[column]}, with_indices=True)
    with pytest.raises(ValueError, match=f"Row 7 of the train dataset has an empty '{column}'"):
        make_trainer(tokenizer, bad, tmp_path)


def test_user_with_too_few_pairs_under_error_policy(tokenizer, tmp_path):
    train = style_preference_dataset(40)
    few = Dataset.from_dict({k: v[:3] for k, v in style_preference_dataset(3, users={"C": "a"}).to_dict().items()})
    from datasets import concatenate_datasets

    with pytest.raises(ValueError, match="User 'C' has 3 preference pairs.*too_few_pairs"):
        make_trainer(tokenizer, concatenate_datasets([train, few]), tmp_path, too_few_pairs="error")


def test_user_with_too_few_pairs_is_skipped_with_a_count(tokenizer, tmp_path, caplog):
    from datasets import concatenate_datasets

    few = style_preference_dataset(3, users={"C": "a"})
    trainer = make_trainer(tokenizer, concatenate_datasets([style_preference_dataset(40), few]), tmp_path)
    assert "C" not in set(trainer.train_dataset["user"])
    assert "Skipped 1 of 3 users" in caplog.text


def test_embedding_dimension_mismatch(tmp_path):
    train = Dataset.from_dict(_precomputed(64, dim=4))
    with pytest.raises(ValueError, match="dimension"):
        _fast(tmp_path, train, eval_dataset=Dataset.from_dict(_precomputed(64, dim=3)), eval_context_sizes=[0, 1])
    ragged = _precomputed(64, dim=4)
    ragged["chosen_embedding"][5] = ragged["chosen_embedding"][5][:3]
    with pytest.raises(ValueError, match="Embedding dimension mismatch"):
        _fast(tmp_path, Dataset.from_dict(ragged))


def test_nan_embeddings(tmp_path):
    bad = _precomputed(64)
    bad["rejected_embedding"][9][2] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite values in 'chosen_embedding'/'rejected_embedding'"):
        _fast(tmp_path, Dataset.from_dict(bad))


def test_min_context_above_max_context(tmp_path):
    with pytest.raises(ValueError, match="`min_context` \\(5\\) must be <= `max_context` \\(2\\)"):
        np_config(tmp_path, min_context=5, max_context=2)


def test_unknown_aggregation(tmp_path):
    with pytest.raises(ValueError, match="`aggregation` must be one of"):
        np_config(tmp_path, aggregation="median")


def test_lora_required(tokenizer, data, tmp_path):
    with pytest.raises(ValueError, match="peft_config"):
        NPRewardTrainer(
            model=tiny_reward_model(tokenizer),
            args=np_config(tmp_path),
            train_dataset=data[0],
            processing_class=tokenizer,
        )


def test_errors_come_before_any_training(tokenizer, data, tmp_path):
    """Validation runs in __init__: nothing is embedded or trained for a dataset that fails it."""
    model = tiny_reward_model(tokenizer)
    snapshot = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError):
        NPRewardTrainer(
            model=model,
            args=np_config(tmp_path),
            train_dataset=data[0].remove_columns("user_id"),
            processing_class=tokenizer,
            peft_config=LoraConfig(**LORA),
        )
    for key, value in model.state_dict().items():
        assert torch.equal(value, snapshot[key])


def test_frozen_reward_head_is_rejected(tokenizer, data, tmp_path):
    """Without task_type='SEQ_CLS' PEFT leaves the random score head frozen and unsaved: loading would change it."""
    lora = {k: v for k, v in LORA.items() if k != "task_type"}
    with pytest.raises(ValueError, match="task_type='SEQ_CLS'"):
        NPRewardTrainer(
            model=tiny_reward_model(tokenizer),
            args=np_config(tmp_path),
            train_dataset=data[0],
            processing_class=tokenizer,
            peft_config=LoraConfig(**lora),
        )
