# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""NPEmbeddingRewardTrainer: the frozen-embedding reward model (the paper's reward setting) on a tiny Qwen2 body built
in code, and on precomputed embeddings: training, saving, resuming, bad input."""

import json

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


@pytest.mark.parametrize("conditioning", ["concat", "film"])
def test_only_np_modules_train_and_every_one_changes(tokenizer, data, backbone, tmp_path, conditioning):
    trainer = NPEmbeddingRewardTrainer(
        model=backbone,
        args=config(tmp_path, max_steps=3, logging_steps=1, decoder_conditioning=conditioning),
        train_dataset=data[0],
        processing_class=tokenizer,
    )
    params = dict(trainer.model.named_parameters())
    # `prior_shift` is fitted after training (`prior_calibration_pairs`), never trained.
    frozen = {"fssa_np.encoder.prior_shift"}
    assert [n for n, p in params.items() if not p.requires_grad] == list(frozen)
    params = {n: p for n, p in params.items() if n not in frozen}
    assert params and all(n.startswith("fssa_np.") for n in params)
    assert any(n.startswith("fssa_np.decoder") for n in params) and not any("hypernetwork" in n for n in params)
    before = {n: p.detach().clone() for n, p in params.items()}
    trainer.train()
    decoder = trainer.model.fssa_np.decoder
    assert decoder.conditioning == conditioning
    last_bias = "readout.bias" if conditioning == "film" else f"mlp.{len(decoder.mlp) - 1}.bias"
    last_bias = f"fssa_np.decoder.{last_bias}"
    # The empty-set vector moves only on 0-shot episodes; the reward's constant offset cancels in r_c - r_r.
    unconstrained = {"fssa_np.encoder.empty_set", last_bias}
    for name, param in params.items():
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


@pytest.mark.parametrize("conditioning", ["concat", "film"])
def test_decoder_conditioning_is_saved_and_reloaded(tmp_path, conditioning):
    rows = precomputed(64)
    out = tmp_path / "out"
    trainer = fast(
        out, Dataset.from_dict(rows), decoder_conditioning=conditioning, max_steps=5, num_targets=8, max_context=4
    )
    trainer.train()
    assert trainer.model.fssa_np.decoder.conditioning == conditioning
    trainer.save_model()
    with open(out / "fssa_config.json", encoding="utf-8") as f:
        assert json.load(f)["decoder"]["conditioning"] == conditioning
    loaded = SteerableRewardModel.from_pretrained(str(out))
    assert isinstance(loaded, SteerableEmbeddingRewardModel)
    assert loaded.fssa_config.decoder.conditioning == conditioning
    assert loaded.np_modules.decoder.conditioning == conditioning
    context = [
        {"chosen_embedding": rows["chosen_embedding"][i], "rejected_embedding": rows["rejected_embedding"][i]}
        for i in range(4)
    ]
    prompts, responses = [""] * 6, rows["chosen_embedding"][10:16]
    expected = trainer.steerable_model().score(prompts, responses, context=context)
    torch.testing.assert_close(loaded.score(prompts, responses, context=context), expected, atol=1e-6, rtol=0)
    # The trained latent path is live after the round trip: another context gives other rewards.
    assert not torch.allclose(loaded.score(prompts, responses, context=[]), expected)
    # The training `max_context` is recorded and read back: a larger context is used whole, with a warning.
    assert trainer.steerable_model().max_context == loaded.max_context == loaded.fssa_config.max_context == 4
    with pytest.warns(UserWarning, match="more than the 4 this model was trained with"):
        loaded.latent(context + context[:1])


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


def test_decoder_conditioning_must_be_known(tmp_path):
    with pytest.raises(
        ValueError, match=r"`decoder_conditioning` must be one of \('concat', 'film'\), got 'bilinear'"
    ):
        config(tmp_path, decoder_conditioning="bilinear")


def test_film_decoder_needs_two_layers(tmp_path):
    with pytest.raises(ValueError, match=r"`decoder_conditioning='film'` needs `decoder_num_layers >= 2`"):
        config(tmp_path, decoder_conditioning="film", decoder_num_layers=1)
    config(tmp_path, decoder_conditioning="concat", decoder_num_layers=1)


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


# ---------------------------------------------------------------------------------------------- redrawn episodes
def redraw_run(tmp_path, train, **kwargs):
    common = dict(context_embedding="precomputed", num_targets=8, max_context=4, episode_passes=1, max_steps=-1)
    trainer = NPEmbeddingRewardTrainer(args=config(tmp_path, **{**common, **kwargs}), train_dataset=train)
    trainer.train()
    return trainer, {name: param.detach().clone() for name, param in trainer.model.named_parameters()}


def test_redrawn_episodes_change_from_the_second_epoch_and_resume_exactly(tmp_path):
    train = Dataset.from_dict(precomputed(96))  # 12 episodes per epoch: 3 steps
    # The first epoch trains on the episodes drawn once, in the same order: the same model.
    _, once = redraw_run(tmp_path / "once", train, num_train_epochs=1)
    _, redrawn = redraw_run(tmp_path / "redrawn", train, num_train_epochs=1, redraw_episodes=True)
    for name, param in once.items():
        assert torch.equal(redrawn[name], param), name
    # Then other episodes: another model, after as many steps.
    same, same_params = redraw_run(tmp_path / "same", train, num_train_epochs=3)
    common = dict(num_train_epochs=3, redraw_episodes=True, save_strategy="steps", save_steps=4)
    full, full_params = redraw_run(tmp_path / "full", train, **common)
    assert full.state.global_step == same.state.global_step == 9
    assert any(not torch.equal(full_params[name], param) for name, param in same_params.items())
    # Resumed one step into the second epoch (checkpoint-4): that epoch's episodes, the consumed batch skipped.
    resumed = NPEmbeddingRewardTrainer(
        args=config(
            tmp_path / "resumed",
            context_embedding="precomputed",
            num_targets=8,
            max_context=4,
            episode_passes=1,
            **common,
        ),
        train_dataset=train,
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-4"))
    got = dict(resumed.model.named_parameters())
    for name, param in full_params.items():
        torch.testing.assert_close(got[name], param, atol=1e-6, rtol=1e-5, msg=name)


def test_every_process_trains_on_its_shard_of_the_same_redrawn_epoch(tmp_path, monkeypatch):
    """Two processes simulated with accelerate's own sharding: each gets its half of the epoch's episodes, also in a
    resumed epoch (where the sampler sits behind a `SkipBatchSampler` and a `BatchSamplerShard`)."""
    from accelerate.data_loader import prepare_data_loader, skip_first_batches

    train = Dataset.from_dict(precomputed(96))
    trainer = fast(tmp_path, train, num_targets=8, max_context=4, episode_passes=1, redraw_episodes=True)

    def indices(process_index, skip):
        monkeypatch.setattr(
            trainer.accelerator,
            "prepare",
            lambda loader: prepare_data_loader(
                loader, num_processes=2, process_index=process_index, put_on_device=False
            ),
        )
        loader = trainer.get_train_dataloader()
        loader = skip_first_batches(loader, skip) if skip else loader
        loader.set_epoch(1)  # as `Trainer._run_epoch` does
        return [i for batch in loader.batch_sampler for i in batch]

    shards = [indices(p, 0) for p in range(2)]
    # Epoch 1 of 12 episodes: 3 batches of 4, the last process's second one repeats the first (`even_batches`).
    assert set(shards[0] + shards[1]) == set(range(12, 24)) and len(shards[0]) == len(shards[1]) == 8
    for p in range(2):
        assert indices(p, 1) == shards[p][4:]


def test_redrawn_episodes_refuse_length_grouped_sampling(tmp_path):
    train = Dataset.from_dict(precomputed(96))
    trainer = fast(
        tmp_path, train, num_targets=8, max_context=4, redraw_episodes=True, train_sampling_strategy="group_by_length"
    )
    with pytest.raises(ValueError, match="train_sampling_strategy='group_by_length'"):
        trainer.train()
