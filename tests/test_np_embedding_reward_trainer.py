# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""NPEmbeddingRewardTrainer: the frozen-embedding reward model (the paper's reward setting) on a tiny Qwen2 body built
in code, and on precomputed embeddings: training, saving, resuming, bad input."""

import pytest
import torch
from datasets import Dataset

from fssa_trl import (
    NPEmbeddingRewardConfig,
    NPEmbeddingRewardTrainer,
    NPRewardConfig,
    SteerableEmbeddingRewardModel,
    SteerableRewardModel,
    evaluate_few_shot,
)
from fssa_trl.testing_utils import style_preference_dataset, tiny_reward_model, word_tokenizer


def config(tmp_path, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path),
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        num_targets=16,
        max_context=10,
        episode_passes=4,
        latent_dim=16,
        encoder_hidden_dim=64,
        decoder_hidden_dim=64,
        seed=0,
    )
    defaults.update(kwargs)
    return NPEmbeddingRewardConfig(**defaults)


def precomputed(rows, dim=4, users=("u1", "u2"), seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "chosen_embedding": torch.randn(rows, dim, generator=g).tolist(),
        "rejected_embedding": torch.randn(rows, dim, generator=g).tolist(),
        "user_id": [users[i % len(users)] for i in range(rows)],
    }


def fast(tmp_path, train, eval_dataset=None, **kwargs):
    args = config(tmp_path, **{"context_embedding": "precomputed", "max_steps": 1, **kwargs})
    return NPEmbeddingRewardTrainer(model=None, args=args, train_dataset=train, eval_dataset=eval_dataset)


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


@pytest.fixture(scope="module")
def data():
    return style_preference_dataset(96, seed=0), style_preference_dataset(40, seed=1)


@pytest.fixture(scope="module")
def backbone(tokenizer, tmp_path_factory):
    """A frozen Qwen2 body on disk, as a backbone from the Hub would be."""
    path = tmp_path_factory.mktemp("backbone")
    tiny_reward_model(tokenizer).model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_only_np_modules_train_and_every_one_changes(tokenizer, data, backbone, tmp_path):
    trainer = NPEmbeddingRewardTrainer(
        model=backbone,
        args=config(tmp_path, max_steps=3, logging_steps=1),
        train_dataset=data[0],
        processing_class=tokenizer,
    )
    params = dict(trainer.model.named_parameters())
    assert params and all(n.startswith("fssa_np.") and p.requires_grad for n, p in params.items())
    assert any(n.startswith("fssa_np.decoder") for n in params) and not any("hypernetwork" in n for n in params)
    before = {n: p.detach().clone() for n, p in params.items()}
    trainer.train()
    last_bias = f"fssa_np.decoder.mlp.{len(trainer.model.fssa_np.decoder.mlp) - 1}.bias"
    # The empty-set vector moves only on 0-shot episodes; the reward's constant offset cancels in r_c - r_r.
    unconstrained = {"fssa_np.encoder.empty_set", last_bias}
    for name, param in trainer.model.named_parameters():
        if name not in unconstrained:
            assert not torch.equal(param, before[name]), f"{name} did not change"
    log = trainer.state.log_history[-2]
    assert {"loss", "accuracy", "margin", "mean_reward", "accuracy_unseen"} <= set(log)


def test_learns_to_steer_both_users(tokenizer, data, backbone, tmp_path):
    train, test = data
    trainer = NPEmbeddingRewardTrainer(
        model=backbone, args=config(tmp_path, num_train_epochs=20), train_dataset=train, processing_class=tokenizer
    )
    trainer.train()
    results = evaluate_few_shot(trainer, test, context_sizes=(0, 10))
    print(results)
    for user in ("A", "B"):
        assert results.accuracy(10, user) >= results.accuracy(0, user) + 0.15, user
        assert results.accuracy(10, user) >= 0.85, user


def test_save_load_and_evaluate_on_raw_data(tokenizer, data, backbone, tmp_path):
    train, test = data
    trainer = NPEmbeddingRewardTrainer(
        model=backbone, args=config(tmp_path / "out", max_steps=5), train_dataset=train, processing_class=tokenizer
    )
    trainer.train()
    metrics = trainer.evaluate(test)  # raw pairs become evaluation episodes
    assert "eval_accuracy_ctx10" in metrics and "eval_loss" in metrics
    trainer.save_model()
    loaded = SteerableRewardModel.from_pretrained(str(tmp_path / "out"))
    assert isinstance(loaded, SteerableEmbeddingRewardModel)
    context = [
        {"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in test.select(range(4))
    ]
    prompts, responses = list(test["prompt"][:6]), list(test["chosen"][:6])
    expected = trainer.steerable_model().score(prompts, responses, context=context)
    torch.testing.assert_close(loaded.score(prompts, responses, context=context), expected, atol=1e-6, rtol=0)


def test_resume_restores_the_np_modules(tmp_path):
    train = Dataset.from_dict(precomputed(96))
    common = dict(max_steps=6, save_strategy="steps", save_steps=3, num_targets=8, max_context=4)
    args = config(tmp_path / "full", context_embedding="precomputed", **common)
    full = NPEmbeddingRewardTrainer(args=args, train_dataset=train)
    full.train()
    resumed = NPEmbeddingRewardTrainer(
        args=config(tmp_path / "resumed", context_embedding="precomputed", **common), train_dataset=train
    )
    with torch.no_grad():
        for param in resumed.model.parameters():
            param.add_(torch.randn_like(param))
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))
    got = dict(resumed.model.named_parameters())
    for name, param in full.model.named_parameters():
        torch.testing.assert_close(got[name], param, atol=1e-6, rtol=1e-5, msg=name)


def test_margin_column_reaches_the_loss(tmp_path):
    rows = precomputed(64)
    trainer = fast(tmp_path, Dataset.from_dict({**rows, "margin": [2.0] * 64}), num_targets=8, max_context=4)
    batch = next(iter(trainer.get_train_dataloader()))
    assert torch.equal(batch["margin"], torch.full((32,), 2.0))
    with torch.no_grad():
        with_margin = trainer.compute_loss(trainer.model.eval(), dict(batch))
        batch.pop("margin")
        without = trainer.compute_loss(trainer.model, dict(batch))
    assert with_margin > without


def test_dpl_head_and_gaussian_latent_train(tmp_path):
    trainer = fast(
        tmp_path,
        Dataset.from_dict(precomputed(64)),
        reward_head="dpl",
        latent_type="gaussian",
        max_steps=2,
        logging_steps=1,
        num_targets=8,
        max_context=4,
    )
    trainer.train()
    log = trainer.state.log_history[-2]
    assert log["kl"] > 0 and torch.isfinite(torch.tensor(log["loss"]))


def test_seed_fixes_the_initial_np_modules(tmp_path):
    # Regression: the model was built before `Trainer` seeded the RNGs, so `seed` did not fix its initialisation.
    train = Dataset.from_dict(precomputed(64))

    def initial_weights(global_seed):
        torch.manual_seed(global_seed)  # whatever the global RNG state, the config's seed decides
        return {k: v.clone() for k, v in fast(tmp_path, train, seed=0).model.state_dict().items()}

    first, second = initial_weights(1), initial_weights(2)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


# ------------------------------------------------------------------------------------------------- bad input
def test_lora_config_names_the_lora_trainer(tmp_path):
    args = NPRewardConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    with pytest.raises(TypeError, match="NPRewardTrainer"):
        NPEmbeddingRewardTrainer(args=args, train_dataset=Dataset.from_dict(precomputed(8)))


def test_gradient_checkpointing_is_refused(tmp_path):
    with pytest.raises(ValueError, match="gradient_checkpointing=False"):
        config(tmp_path, gradient_checkpointing=True)


@pytest.mark.parametrize(("field", "value"), [("decoder_num_layers", 0), ("decoder_hidden_dim", 0)])
def test_decoder_size_must_be_positive(tmp_path, field, value):
    with pytest.raises(ValueError, match=f"`{field}` must be >= 1"):
        config(tmp_path, **{field: value})


def test_model_with_precomputed_embeddings_is_refused(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="pass `model=None`"):
        NPEmbeddingRewardTrainer(
            model=tiny_reward_model(tokenizer),
            args=config(tmp_path, context_embedding="precomputed"),
            train_dataset=Dataset.from_dict(precomputed(8)),
        )


def test_embedding_dimension_mismatch(tmp_path):
    train = Dataset.from_dict(precomputed(64, dim=4))
    with pytest.raises(ValueError, match="dimension"):
        fast(tmp_path, train, eval_dataset=Dataset.from_dict(precomputed(64, dim=3)), eval_context_sizes=[0, 1])
    ragged = precomputed(64, dim=4)
    ragged["chosen_embedding"][5] = ragged["chosen_embedding"][5][:3]
    with pytest.raises(ValueError, match="Embedding dimension mismatch"):
        fast(tmp_path, Dataset.from_dict(ragged))


def test_nan_embeddings(tmp_path):
    bad = precomputed(64)
    bad["rejected_embedding"][9][2] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite values in 'chosen_embedding'/'rejected_embedding'"):
        fast(tmp_path, Dataset.from_dict(bad))


def test_text_is_not_required_with_precomputed_embeddings(tmp_path):
    trainer = fast(tmp_path, Dataset.from_dict(precomputed(64)), num_targets=8, max_context=4)
    trainer.train()
    assert trainer.processing_class is None and trainer.state.global_step == 1
