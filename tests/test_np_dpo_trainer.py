# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""NPDPOTrainer and SteerablePolicy on a tiny causal LM built in code: steering both ways, the reference pass,
generation, saving and resuming."""

import pytest
import torch
from peft import LoraConfig

from fssa_trl import NPDPOConfig, NPDPOTrainer, SteerablePolicy, evaluate_few_shot
from fssa_trl.testing_utils import style_preference_dataset, tiny_causal_lm, word_tokenizer

LORA = dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"])


# Issue 7's settings for tasks where a few tokens carry the user's choice.
HARD_TASK_OPTIONS = dict(
    context_pair_features="difference",
    aggregation="shrunk_mean",
    context_btl_weight=1.0,
    hypernetwork_init_std=0.01,
    bounded_latent=True,
    prior_calibration_pairs=512,
)


def dpo_config(tmp_path, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path),
        report_to="none",
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
        save_strategy="no",
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        beta=0.5,
        num_targets=16,
        max_context=10,
        episode_passes=4,
        latent_dim=16,
        encoder_hidden_dim=64,
        hypernetwork_hidden_dim=64,
        seed=0,
    )
    defaults.update(kwargs)
    return NPDPOConfig(**defaults)


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


def make_trainer(tokenizer, train, tmp_path, model=None, **kwargs):
    return NPDPOTrainer(
        model=model if model is not None else tiny_causal_lm(tokenizer),
        args=dpo_config(tmp_path, **kwargs),
        train_dataset=train,
        processing_class=tokenizer,
        peft_config=LoraConfig(**LORA),
    )


def style_counts(texts):
    """How many responses are mostly style a, and mostly style b."""
    a = b = 0
    for text in texts:
        words = text.split()
        na, nb = sum(w.startswith("a") for w in words), sum(w.startswith("b") for w in words)
        a += na > nb
        b += nb > na
    return a, b


@pytest.fixture(scope="module")
def trained(tokenizer, tmp_path_factory):
    base_dir = tmp_path_factory.mktemp("base")  # a base model on disk, as from the Hub
    tiny_causal_lm(tokenizer).save_pretrained(base_dir)
    # Many distinct pairs and few passes: with few pairs a tiny LM memorises them instead of learning the styles.
    train, test = style_preference_dataset(1024, seed=0), style_preference_dataset(40, seed=1)
    out = tmp_path_factory.mktemp("np-dpo")
    trainer = make_trainer(tokenizer, train, out, model=str(base_dir), num_train_epochs=4, episode_passes=1)
    trainer.train()
    return trainer, test


def test_train_updates_trainable_parameters_only(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, style_preference_dataset(40), tmp_path, max_steps=3)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert any(n.startswith("fssa_np.hypernetwork") for n in trainable) and any("lora_B" in n for n in trainable)
    for name, param in trainer.model.named_parameters():
        if name in trainable:
            if name != "fssa_np.encoder.empty_set":  # moves only on 0-shot episodes
                assert not torch.equal(param, before[name]), f"{name} did not change"
        else:
            assert torch.equal(param, before[name]), f"frozen {name} changed"


def test_steers_both_ways(trained):
    """Implicit-reward accuracy rises with context for EACH user, and sampled generations follow the user's style."""
    trainer, test = trained
    results = evaluate_few_shot(trainer, test, context_sizes=(0, 1, 3, 5, 10), name="NP-DPO")
    print(results)
    for user in ("A", "B"):
        assert results.accuracy(10, user) >= results.accuracy(0, user) + 0.15, user
        assert results.accuracy(10, user) >= 0.8, user

    policy = trainer.steerable_model()
    rows = test.to_list()
    context = {u: [r for r in rows if r["user_id"] == u][:10] for u in ("A", "B")}
    prompts = [r["prompt"] for r in rows[:16]]
    torch.manual_seed(0)
    styles = {}
    for user in ("A", "B"):  # 16 prompts x 4 samples = 64 generations per user
        texts = policy.generate(
            prompts, context=context[user], do_sample=True, max_new_tokens=8, num_return_sequences=4
        )
        assert len(texts) == 64
        styles[user] = style_counts(texts)
    print(styles)
    assert styles["A"][0] > styles["B"][0], "A's context should give style a more often than B's context"
    assert styles["B"][1] > styles["A"][1], "B's context should give style b more often than A's context"


def test_latent_interpolation_is_a_continuum(trained):
    """Between two users' latents the preference for style a over style b moves monotonically."""
    trainer, test = trained
    policy = trainer.steerable_model()
    rows = test.to_list()
    z_a = policy.latent([r for r in rows if r["user_id"] == "A"][:10])
    z_b = policy.latent([r for r in rows if r["user_id"] == "B"][:10])
    a_rows = [r for r in rows if r["user_id"] == "A"][10:26]  # chosen: style a, rejected: style b
    prompts = [r["prompt"] for r in a_rows]
    gaps = []
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        z = (1 - t) * z_a + t * z_b
        gap = policy.log_probs(prompts, [r["chosen"] for r in a_rows], latent=z) - policy.log_probs(
            prompts, [r["rejected"] for r in a_rows], latent=z
        )
        gaps.append(gap.mean().item())
    print(gaps)
    assert all(x > y for x, y in zip(gaps, gaps[1:], strict=False)), gaps
    assert len(policy.generate(prompts[:2], latent=0.5 * (z_a + z_b), max_new_tokens=4)) == 2


def test_generation_per_example_latents_follow_expanded_batch(trained):
    """Different users in one batch, with beams and several return sequences: each row equals its own run alone."""
    trainer, test = trained
    policy = trainer.steerable_model()
    rows = test.to_list()
    z = torch.stack([policy.latent([r for r in rows if r["user_id"] == u][:5]) for u in ("A", "B")])
    prompts = [rows[0]["prompt"], rows[1]["prompt"]]
    kwargs = dict(max_new_tokens=6, num_beams=3, num_return_sequences=2, do_sample=False)
    together = policy.generate(prompts, latent=z, **kwargs)
    alone = policy.generate(prompts[:1], latent=z[0], **kwargs) + policy.generate(prompts[1:], latent=z[1], **kwargs)
    assert together == alone
    sampled = policy.generate(prompts, latent=z, do_sample=True, max_new_tokens=4, num_return_sequences=3)
    assert len(sampled) == 6


def test_reference_is_the_base_model_without_a_second_copy(trained, tokenizer):
    trainer, _ = trained
    assert trainer.ref_model is None
    base = tiny_causal_lm(tokenizer)  # same seed as the trained model's base weights
    # Parameter storage held by the trainer: the base weights exist once; everything else is LoRA or NP modules.
    modules = [trainer.model] + [m for m in vars(trainer).values() if isinstance(m, torch.nn.Module)]
    storages = {}
    for module in modules:
        for name, param in module.named_parameters():
            if "lora_" not in name and "fssa_np" not in name:
                storages[param.untyped_storage().data_ptr()] = param.untyped_storage().nbytes()
    assert sum(storages.values()) == sum(p.numel() * p.element_size() for p in base.parameters())

    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    batch = {k: v.to(trainer.args.device) if torch.is_tensor(v) else v for k, v in batch.items()}
    trainer.model.eval()
    with trainer.np_step(), trainer._capture_log_probs() as captured, torch.no_grad():
        trainer.compute_loss(trainer.model, dict(batch))
    policy_logps, ref_logps = captured["policy"], captured["reference"]
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    with torch.no_grad():
        logits = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    expected = torch.log_softmax(logits, -1).gather(-1, labels[:, 1:].clamp(min=0)[..., None])[..., 0]
    expected = expected * (labels[:, 1:] != -100)
    torch.testing.assert_close(ref_logps.sum(1), expected.sum(1), atol=1e-4, rtol=1e-5)
    assert not torch.allclose(policy_logps.sum(1), expected.sum(1), atol=1e-2)


def test_accuracy_metric_does_not_rest_on_the_order_of_trl_forward_passes(trained):
    """The implicit-reward accuracy reads the policy and the reference log-probs of TRL's forward passes. Each pass is
    identified by whether the gates were active when it ran, so the metric is unchanged when the passes come in the
    other order (an order-based reading would swap policy and reference here and get the opposite accuracy)."""
    trainer, _ = trained
    episodes = [trainer.eval_dataset[i] for i in range(4)] if trainer.eval_dataset else None
    episodes = episodes or [trainer.train_dataset[i] for i in range(4)]
    batch = trainer.data_collator(episodes)
    trainer.model.eval()

    def metrics_of(captured, inputs, context) -> dict:
        trainer._metrics["eval"].clear()
        trainer._log_implicit_reward_accuracy("eval", captured, inputs, context)
        trainer._np_flush_accuracy("eval")
        return {k: v[0] for k, v in trainer._metrics["eval"].items()}

    # TRL's order (policy, then reference), through TRL's own compute_loss.
    inputs = dict(batch)
    with trainer.np_step(), trainer._capture_log_probs() as in_trl_order, torch.no_grad():
        trainer.compute_loss(trainer.model, inputs)
    trainer._np_accuracy_counts.clear()
    # The reverse order, run by hand with the same gates.
    inputs = dict(batch)
    context = trainer._np_pop_context(inputs)
    labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
    kwargs = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
    with trainer.np_step(), trainer._capture_log_probs() as reversed_order, torch.no_grad():
        trainer._np_modulate(context)
        with trainer.model.disable_adapter():
            trainer.model(**kwargs, labels=labels, fused_lm_head=True)  # reference first
        trainer.model(**kwargs, labels=labels, fused_lm_head=True)  # then the policy
    for key in ("policy", "reference"):
        torch.testing.assert_close(reversed_order[key], in_trl_order[key])
    expected = metrics_of(in_trl_order, inputs, context)
    assert expected["accuracy_unseen"] > 0.5  # trained: the policy beats the reference on unseen pairs
    assert metrics_of(reversed_order, inputs, context) == expected
    swapped = {"policy": in_trl_order["reference"], "reference": in_trl_order["policy"]}
    assert metrics_of(swapped, inputs, context) != expected


def test_save_from_pretrained_greedy_generation_is_identical(trained, tmp_path):
    trainer, test = trained
    trainer.save_model(str(tmp_path / "policy"))
    loaded = SteerablePolicy.from_pretrained(str(tmp_path / "policy"))
    in_memory = trainer.steerable_model()
    rows = test.to_list()
    context = [r for r in rows if r["user_id"] == "B"][:5]
    prompts = [r["prompt"] for r in rows[:4]]
    for ctx in (context, []):
        expected = in_memory.generate(prompts, context=ctx, max_new_tokens=8, do_sample=False)
        assert loaded.generate(prompts, context=ctx, max_new_tokens=8, do_sample=False) == expected
    torch.testing.assert_close(
        loaded.score(prompts, [r["chosen"] for r in rows[:4]], context=context),
        in_memory.score(prompts, [r["chosen"] for r in rows[:4]], context=context),
        atol=1e-5,
        rtol=0,
    )


def test_resume_restores_encoder_and_hypernetwork(tokenizer, tmp_path):
    train = style_preference_dataset(64)
    common = dict(max_steps=6, save_strategy="steps", save_steps=3)
    full = make_trainer(tokenizer, train, tmp_path / "full", **common)
    full.train()
    resumed = make_trainer(tokenizer, train, tmp_path / "resumed", **common)
    with torch.no_grad():  # only the checkpoint can bring these back
        for param in resumed.model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param))
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))
    got = dict(resumed.model.named_parameters())
    for name, param in full.model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(got[name], param, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize(
    "loss_type", ["sigmoid", "hinge", "ipo", "nca_pair", "bco_pair", "sppo_hard", "aot", "apo_zero", "discopop"]
)
def test_trl_loss_types_keep_working(tokenizer, tmp_path, loss_type):
    trainer = make_trainer(tokenizer, style_preference_dataset(20), tmp_path, max_steps=1, loss_type=loss_type)
    trainer.train()
    assert torch.isfinite(torch.tensor(trainer.state.log_history[-1]["train_loss"]))


def test_bad_input(tokenizer, tmp_path):
    data = style_preference_dataset(20)
    with pytest.raises(ValueError, match="user column 'user_id'"):
        make_trainer(tokenizer, data.remove_columns("user_id"), tmp_path)
    with pytest.raises(ValueError, match="ref_model=None"):
        NPDPOTrainer(
            model=tiny_causal_lm(tokenizer),
            ref_model=tiny_causal_lm(tokenizer),
            args=dpo_config(tmp_path),
            train_dataset=data,
        )
    with pytest.raises(ValueError, match="min_context"):
        dpo_config(tmp_path, min_context=3, max_context=1)


def test_reference_log_probs_are_computed_once_and_match_the_base(trained, tokenizer):
    trainer, test = trained
    policy = trainer.steerable_model()
    rows = test.to_list()[:6]
    prompts, responses = [r["prompt"] for r in rows], [r["chosen"] for r in rows]
    calls = []
    batched = policy._batched
    policy._batched = lambda p, r, modulation, b: calls.append(modulation is None) or batched(p, r, modulation, b)
    first = policy.score(prompts, responses, context=[])
    second = policy.score(prompts, responses, context=rows[:3])
    assert calls.count(True) == 1  # the reference pass ran once for both scores
    with trainer.model.disable_adapter():
        expected = policy._sequence_log_probs(*policy._completion_batch(prompts, responses))
    torch.testing.assert_close(policy.reference_log_probs(prompts, responses), expected)
    assert not torch.equal(first, second)


def test_a_reward_config_names_its_trainer(tokenizer, tmp_path):
    from fssa_trl import NPRewardConfig

    args = NPRewardConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    with pytest.raises(TypeError, match="must be an `NPDPOConfig`.*configures `NPRewardTrainer`"):
        NPDPOTrainer(model=tiny_causal_lm(tokenizer), args=args, train_dataset=style_preference_dataset(8))


def test_steers_both_ways_when_few_tokens_carry_the_signal(tmp_path):
    """Issue 7's acceptance task: a quarter of each response's words carry the user's style, the rest are neutral
    words drawn alike for both responses; 2,000 distinct pairs per user, held-out pairs scored with contexts drawn
    from other held-out pairs. With the odd encoder (difference features, shrunk mean), the auxiliary NP-BTL loss and
    a small hypernetwork init, the policy reads the context for BOTH users (>= 85% at 10 pairs); the bounded latent
    keeps that from stalling at 0.79-0.85 for one user, as it did on two seeds of five with an unbounded z. The 0-shot
    prior is fitted after training to 512 pairs set aside (2,256 pairs per user, so 2,000 are trained on), which keeps
    the 0-shot policy near indifference (<= 65% for each user). The paper's encoder stays at chance at every context
    size here while its training accuracy at context 0 rises from memorising pairs. Measured: 0.385 / 0.575 at 0 and
    0.975 / 0.975 at 10 (set-aside pairs' loss 0.7026 -> 0.6944); A's context gave 243 style-a words to B's 95, B's
    context 223 style-b words to A's 80 (benchmarks/steering.py has five seeds and the plain-DPO step count)."""
    tokenizer = word_tokenizer(neutral=True)
    task = dict(signal_fraction=0.25, response_words=(8, 12))
    train = style_preference_dataset(2256, seed=0, **task)  # 256 per user set aside for `prior_calibration_pairs`
    test = style_preference_dataset(200, seed=1, **task)
    trainer = NPDPOTrainer(
        model=tiny_causal_lm(tokenizer, hidden_size=64),
        args=dpo_config(
            tmp_path,
            max_steps=150,  # plain DPOTrainer needs 25-30 steps of 64 pairs to reach 85% on one user: 5-6x
            logging_steps=50,
            per_device_eval_batch_size=64,
            **HARD_TASK_OPTIONS,
        ),
        train_dataset=train,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"),
    )
    assert trainer.fssa_config.encoder.bounded  # saved with the model
    trainer.train()
    results = evaluate_few_shot(trainer, test, context_sizes=(0, 10), num_targets=10, batch_size=50)
    print(results)
    for user in ("A", "B"):
        assert results.accuracy(10, user) >= 0.85, user
        assert results.accuracy(0, user) <= 0.65, user

    # Sampled generations follow the context: A's context gives more style-a words than B's context, and vice versa.
    policy = trainer.steerable_model()
    rows = test.to_list()
    context = {u: [r for r in rows if r["user_id"] == u][:10] for u in ("A", "B")}
    prompts = [r["prompt"] for r in rows[20:36]]
    torch.manual_seed(0)
    words = {}
    for user in ("A", "B"):
        texts = policy.generate(
            prompts, context=context[user], do_sample=True, max_new_tokens=12, num_return_sequences=4
        )
        tokens = " ".join(texts).split()
        words[user] = (sum(w.startswith("a") for w in tokens), sum(w.startswith("b") for w in tokens))
    print(words)
    assert words["A"][0] > words["B"][0] and words["B"][1] > words["A"][1], words
