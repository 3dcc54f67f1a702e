# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""The calibrated 0-shot prior: `SteerableModel.calibrate_prior` fits the latent of an empty context to a population's
choices and touches nothing else; it is saved, reloaded, and fitted by the trainers after training
(`prior_calibration_pairs`). Its effect on the hard two-user task is asserted by the `..._few_tokens_carry_the_signal`
tests of both LoRA trainers."""

import os

import pytest
import torch
from peft import LoraConfig
from safetensors.torch import load_file, save_file

from fssa_trl import (
    ContextFreeRewardModel,
    NPEmbeddingRewardConfig,
    NPEmbeddingRewardTrainer,
    NPRewardConfig,
    NPRewardTrainer,
    SteerableModel,
)
from fssa_trl.modeling.np_modules import FSSA_WEIGHTS_NAME, PRIOR_SHIFT_KEY
from fssa_trl.testing_utils import (
    style_preference_dataset,
    tiny_causal_lm,
    tiny_reward_model,
    untrained_steerable_model,
    word_tokenizer,
)


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


@pytest.fixture(scope="module")
def pairs():
    return style_preference_dataset(24, seed=0)


def reward_trainer(tokenizer, tmp_path, train, **kwargs):
    """A tiny `NPRewardTrainer` (LoRA r4 on q/v, 8-target episodes)."""
    args = dict(output_dir=str(tmp_path), report_to="none", use_cpu=True, num_targets=8, max_context=4)
    return NPRewardTrainer(
        model=tiny_reward_model(tokenizer),
        args=NPRewardConfig(**{**args, **kwargs}),
        train_dataset=train,
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )


def steered_model(tokenizer, policy: bool):
    """An untrained steerable model whose LoRA B and hypernetwork are random, so that z moves its outputs."""
    base = (tiny_causal_lm if policy else tiny_reward_model)(tokenizer)
    model = untrained_steerable_model(base, tokenizer, policy=policy)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.model.named_parameters():
            if "lora_B" in name or ".hypernetwork." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return model


def margins(model, rows, **kwargs):
    prompts = [r["prompt"] for r in rows]
    chosen = model.score(prompts, [r["chosen"] for r in rows], **kwargs)
    return chosen - model.score(prompts, [r["rejected"] for r in rows], **kwargs)


@pytest.mark.parametrize("policy", [False, True], ids=["reward", "policy"])
def test_calibration_moves_the_empty_context_only(tokenizer, pairs, policy, tmp_path):
    model = steered_model(tokenizer, policy)
    # One user's choices as the "population": the calibrated prior must explain them better than the prior did.
    rows = [r for r in pairs.to_list() if r["user_id"] == "A"]
    context = rows[:3]
    before = {"prior": model.latent(None), "context": model.latent(context), "margins": margins(model, rows)}
    result = model.calibrate_prior(rows, max_iter=5, batch_size=8)
    assert result.num_pairs == len(rows)
    assert result.loss_after < result.loss_before
    expected = torch.nn.functional.softplus(-margins(model, rows).double()).mean().item()
    assert result.loss_after == pytest.approx(expected, rel=1e-4)
    assert margins(model, rows).mean() > before["margins"].mean()
    assert result.shift_norm > 0
    assert not torch.equal(model.latent(None), before["prior"])
    torch.testing.assert_close(model.latent(context), before["context"], rtol=0, atol=0)
    # Saved with the model and restored.
    base = tmp_path / "base"
    (tiny_causal_lm if policy else tiny_reward_model)(tokenizer).save_pretrained(str(base))  # the same seed
    model.save_pretrained(str(tmp_path / "model"))
    loaded = SteerableModel.from_pretrained(str(tmp_path / "model"), base_model_name_or_path=str(base))
    torch.testing.assert_close(loaded.latent(None), model.latent(None))
    torch.testing.assert_close(margins(loaded, rows), margins(model, rows))


def test_a_folder_saved_without_the_prior_shift_loads_uncalibrated(tokenizer, tmp_path):
    model = steered_model(tokenizer, policy=False)
    tiny_reward_model(tokenizer).save_pretrained(str(tmp_path / "base"))
    model.save_pretrained(str(tmp_path / "model"))
    file = os.path.join(tmp_path, "model", FSSA_WEIGHTS_NAME)
    state = load_file(file)
    assert torch.count_nonzero(state.pop(PRIOR_SHIFT_KEY)) == 0
    save_file(state, file, metadata={"format": "pt"})  # as written before `prior_shift` existed
    loaded = SteerableModel.from_pretrained(str(tmp_path / "model"), base_model_name_or_path=str(tmp_path / "base"))
    torch.testing.assert_close(loaded.latent(None), model.latent(None))


def test_bad_calibration_input(tokenizer, pairs):
    model = steered_model(tokenizer, policy=False)
    with pytest.raises(ValueError, match="`pairs` is empty"):
        model.calibrate_prior([])
    with pytest.raises(ValueError, match="this model scores texts"):
        model.calibrate_prior([{"chosen_embedding": [0.0] * 32, "rejected_embedding": [1.0] * 32}])
    with pytest.raises(ValueError, match="`max_iter` must be a positive int"):
        model.calibrate_prior(pairs, max_iter=0)
    with pytest.raises(ValueError, match=r"`context\[0\]` has the unknown key 'promt'"):
        model.calibrate_prior([{"promt": "p1 ", "chosen": "a1", "rejected": "b1"}])
    with pytest.raises(ValueError, match="has no latent"):
        ContextFreeRewardModel(tiny_reward_model(tokenizer), tokenizer).calibrate_prior(pairs)


def test_trainer_calibrates_on_pairs_set_aside_from_training(tokenizer, tmp_path):
    train = style_preference_dataset(40, seed=0, users={"A": "a", "B": "b", "C": "a"})
    trainer = reward_trainer(
        tokenizer,
        tmp_path,
        train,
        disable_tqdm=True,
        save_strategy="no",
        max_steps=2,
        latent_dim=4,
        encoder_hidden_dim=8,
        hypernetwork_hidden_dim=8,
        hypernetwork_init_std=0.01,
        prior_calibration_pairs=30,
    )
    # Set aside before training: an equal share per user, the same draw for the same seed, none of them trained on.
    sample = trainer._np_calibration_set
    assert len(sample) == 30
    assert sorted(sample["user_id"]) == ["A"] * 10 + ["B"] * 10 + ["C"] * 10
    rest = trainer._np_set_aside_calibration_pairs(trainer.args, train)
    assert trainer._np_calibration_set["chosen"] == sample["chosen"]
    assert len(rest) == 90 and not set(rest["chosen"]) & set(sample["chosen"])
    trainer._np_calibration_set = sample

    trainer.train()
    logged = next(log for log in trainer.state.log_history if "prior_calibration_loss_after" in log)
    assert logged["prior_calibration_loss_after"] <= logged["prior_calibration_loss_before"]
    trainer.save_model()
    saved = load_file(os.path.join(tmp_path, FSSA_WEIGHTS_NAME))[PRIOR_SHIFT_KEY]
    torch.testing.assert_close(saved, trainer.np_modules.encoder.prior_shift)


def test_embedding_trainer_calibrates_on_precomputed_embeddings(tmp_path):
    data = style_preference_dataset(24, seed=0)
    generator = torch.Generator().manual_seed(0)
    # A "population" that agrees: the chosen embeddings lean one way, so the 0-shot prior can explain it.
    lean = torch.randn(8, generator=generator)
    chosen = torch.randn(len(data), 8, generator=generator) + lean
    rejected = torch.randn(len(data), 8, generator=generator) - lean
    data = data.add_column("chosen_embedding", chosen.tolist()).add_column("rejected_embedding", rejected.tolist())
    trainer = NPEmbeddingRewardTrainer(
        args=NPEmbeddingRewardConfig(
            output_dir=str(tmp_path),
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            save_strategy="no",
            max_steps=3,
            num_targets=8,
            max_context=4,
            latent_dim=4,
            encoder_hidden_dim=8,
            context_embedding="precomputed",
            prior_calibration_pairs=16,
        ),
        train_dataset=data,
    )
    trainer.train()
    logged = next(log for log in trainer.state.log_history if "prior_calibration_loss_after" in log)
    assert logged["prior_calibration_loss_after"] < logged["prior_calibration_loss_before"]


def test_negative_calibration_pairs_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="`prior_calibration_pairs` must be >= 0"):
        NPRewardConfig(output_dir=str(tmp_path), use_cpu=True, prior_calibration_pairs=-1)


def test_calibration_without_pairs_set_aside(tokenizer, tmp_path):
    trainer = reward_trainer(tokenizer, tmp_path, style_preference_dataset(24, seed=0))
    with pytest.raises(ValueError, match="No pairs were set aside"):
        trainer.calibrate_prior()


def test_calibration_is_refused_before_training_when_weights_are_sharded(tokenizer, tmp_path):
    trainer = reward_trainer(
        tokenizer, tmp_path, style_preference_dataset(24, seed=0), max_steps=1, prior_calibration_pairs=8
    )
    trainer.is_fsdp_enabled = True  # as under FSDP: the weights are sharded
    with pytest.raises(ValueError, match="calibrate the saved model"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_fewer_pairs_than_asked_are_set_aside_with_a_warning(tokenizer, tmp_path):
    with pytest.warns(UserWarning, match=r"set aside 12 pairs, as each user gives at most a quarter"):
        trainer = reward_trainer(tokenizer, tmp_path, style_preference_dataset(24, seed=0), prior_calibration_pairs=40)
    assert len(trainer._np_calibration_set) == 12
