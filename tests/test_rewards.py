# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Reward functions for TRL's online trainers: per-user rewards from a steerable reward model, and exported per-user
reward models tokenized as in reward training; both run inside GRPOTrainer and RLOOTrainer."""

import copy

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer
from trl.trainer.utils import get_callable_name

from fssa_trl import (
    ContextFreeRewardModel,
    NPEmbeddingRewardConfig,
    NPEmbeddingRewardTrainer,
    NPRewardConfig,
    NPRewardTrainer,
)
from fssa_trl.rewards import RewardModelFunction, SteerableRewardFunction
from fssa_trl.testing_utils import style_preference_dataset, tiny_causal_lm, tiny_reward_model, word_tokenizer

# Renders a conversation in the word vocabulary: a user turn starts with the marker "p0", the text ends with the EOS.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}p0 {% endif %}{{ message['content'] }} "
    "{% endfor %}{{ eos_token }}"
)
PROMPTS = ["p1 p2 p3 ", "p4 p5 p6 ", "p7 p8 ", "p9 "]
COMPLETIONS = ["a1 a2 a3", "b1 b2", "a4 b4 a5", ""]


def pairs(rows):
    return [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]


@pytest.fixture(scope="module")
def tokenizer():
    tokenizer = word_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def contexts():
    data = style_preference_dataset(4, seed=3)
    return {user: pairs(data.filter(lambda r, u=user: r["user_id"] == u)) for user in ("A", "B")}


@pytest.fixture(scope="module")
def trainer(tokenizer, tmp_path_factory):
    """An NPRewardTrainer built from a base model on disk (an exported adapter names it), with a random hypernetwork
    and LoRA B matrices, so that each user's latent changes the rewards (training is not what is tested here)."""
    base_dir = tmp_path_factory.mktemp("base")
    tiny_reward_model(tokenizer).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    args = NPRewardConfig(
        output_dir=str(tmp_path_factory.mktemp("np")),
        report_to="none",
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
        save_strategy="no",
        num_targets=8,
        max_context=4,
        episode_passes=1,
        latent_dim=8,
        encoder_hidden_dim=32,
        hypernetwork_hidden_dim=32,
        seed=0,
    )
    trainer = NPRewardTrainer(
        model=str(base_dir),
        args=args,
        train_dataset=style_preference_dataset(24),
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in trainer.model.named_parameters():
            if name.startswith("fssa_np.hypernetwork") or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    trainer.model.eval()
    return trainer


@pytest.fixture(scope="module")
def steerable(trainer):
    return trainer.steerable_model()


def expected_rewards(model, prompts, completions, context):
    """`score` one (prompt, completion) at a time: the reference every reward function is held to."""
    return torch.cat([model.score([p], [c], context=context) for p, c in zip(prompts, completions, strict=True)])


# ------------------------------------------------------------------------------------------ per-user rewards
def test_context_column_rewards_equal_score_for_each_user(steerable, contexts):
    reward = SteerableRewardFunction(steerable)
    users = ["A", "B", "B", "A"]
    got = reward(prompts=PROMPTS, completions=COMPLETIONS, context=[copy.deepcopy(contexts[u]) for u in users])
    assert isinstance(got, list) and all(isinstance(r, float) for r in got)
    for i, user in enumerate(users):
        expected = expected_rewards(steerable, PROMPTS[i : i + 1], COMPLETIONS[i : i + 1], contexts[user])
        torch.testing.assert_close(torch.tensor(got[i : i + 1]), expected, atol=1e-5, rtol=0)
    # The user steers: the same completions score differently for A and B.
    for_a = reward(prompts=PROMPTS, completions=COMPLETIONS, context=[contexts["A"]] * 4)
    for_b = reward(prompts=PROMPTS, completions=COMPLETIONS, context=[contexts["B"]] * 4)
    assert max(abs(a - b) for a, b in zip(for_a, for_b, strict=True)) > 1e-3


def test_user_table_rewards_equal_score_and_empty_context_is_the_prior(steerable, contexts):
    table = {"A": contexts["A"], "B": contexts["B"], "new": []}
    reward = SteerableRewardFunction(steerable, contexts=table, user_column="uid")
    users = ["B", "new", "A", "B"]
    got = torch.tensor(reward(prompts=PROMPTS, completions=COMPLETIONS, uid=users, context=[None] * 4))
    expected = torch.cat(
        [expected_rewards(steerable, [p], [c], table[u]) for p, c, u in zip(PROMPTS, COMPLETIONS, users, strict=True)]
    )
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        got[1:2], steerable.score(PROMPTS[1:2], COMPLETIONS[1:2], context=None), atol=1e-5, rtol=0
    )


def test_one_latent_per_distinct_user_per_call(steerable, contexts, monkeypatch):
    seen = []
    latent = steerable.latent

    def counting(context=None):
        seen.append(context)
        return latent(context)

    monkeypatch.setattr(steerable, "latent", counting)
    users = ["A", "B", "A", "B", "B", "A", "A", "B"]
    prompts, completions = PROMPTS * 2, COMPLETIONS * 2
    # Column mode: every row holds its own copy of its user's context; equal contents are one user.
    SteerableRewardFunction(steerable)(prompts, completions, context=[copy.deepcopy(contexts[u]) for u in users])
    assert len(seen) == 2
    table = SteerableRewardFunction(steerable, contexts=contexts)
    table(prompts, completions, user_id=users)
    assert len(seen) == 4
    table(prompts, completions, user_id=users)  # latents are inferred again in each call, once per user
    assert len(seen) == 6


def test_batching_gives_the_rewards_of_one_by_one(steerable, contexts):
    users = ["A", "B", "B", "A", "A", "B", "A", "B"]
    prompts, completions = PROMPTS * 2, COMPLETIONS[::-1] + COMPLETIONS
    batched = SteerableRewardFunction(steerable, contexts=contexts, batch_size=3)(prompts, completions, user_id=users)
    single = SteerableRewardFunction(steerable, contexts=contexts, batch_size=1)
    one_by_one = [single([p], [c], user_id=[u])[0] for p, c, u in zip(prompts, completions, users, strict=True)]
    torch.testing.assert_close(torch.tensor(batched), torch.tensor(one_by_one), atol=1e-5, rtol=0)


def test_conversational_prompts_and_completions(steerable, contexts):
    prompts = [[{"role": "user", "content": p.strip()}] for p in PROMPTS]
    completions = [[{"role": "assistant", "content": c}] for c in COMPLETIONS]
    users = ["A", "B", "A", "B"]
    got = SteerableRewardFunction(steerable, contexts=contexts)(
        prompts=prompts, completions=completions, user_id=users
    )
    expected = torch.cat(
        [
            expected_rewards(steerable, [p], [c], contexts[u])
            for p, c, u in zip(prompts, completions, users, strict=True)
        ]
    )
    torch.testing.assert_close(torch.tensor(got), expected, atol=1e-5, rtol=0)
    # Through the chat template, as RewardTrainer tokenizes conversations: not the plain-text rewards.
    plain = SteerableRewardFunction(steerable, contexts=contexts)(PROMPTS, COMPLETIONS, user_id=users)
    assert got != plain


def test_mixed_formats_are_refused(steerable, contexts):
    reward = SteerableRewardFunction(steerable, contexts=contexts)
    with pytest.raises(ValueError, match="Row 0 mixes formats"):
        reward(prompts=[PROMPTS[0]], completions=[[{"role": "assistant", "content": "a1"}]], user_id=["A"])


def test_name_is_what_trl_logs(steerable):
    assert get_callable_name(SteerableRewardFunction(steerable)) == "steerable_reward"
    assert get_callable_name(SteerableRewardFunction(steerable, name="alice_rm")) == "alice_rm"
    assert not isinstance(SteerableRewardFunction(steerable), torch.nn.Module)  # TRL would score a Module itself


def test_loads_a_saved_model_from_its_folder(trainer, steerable, contexts, tmp_path):
    trainer.save_model(str(tmp_path / "rm"))
    users = ["A", "B", "A", "B"]
    loaded = SteerableRewardFunction(str(tmp_path / "rm"), contexts=contexts)(PROMPTS, COMPLETIONS, user_id=users)
    in_memory = SteerableRewardFunction(steerable, contexts=contexts)(PROMPTS, COMPLETIONS, user_id=users)
    torch.testing.assert_close(torch.tensor(loaded), torch.tensor(in_memory), atol=1e-5, rtol=0)


def test_frozen_embedding_reward_model(tokenizer, contexts, tmp_path):
    backbone = tmp_path / "backbone"
    tiny_reward_model(tokenizer).model.save_pretrained(backbone)
    tokenizer.save_pretrained(backbone)
    args = NPEmbeddingRewardConfig(
        output_dir=str(tmp_path / "out"),
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
        num_targets=8,
        max_context=4,
        latent_dim=8,
        encoder_hidden_dim=32,
        decoder_hidden_dim=32,
    )
    model = NPEmbeddingRewardTrainer(
        model=str(backbone), args=args, train_dataset=style_preference_dataset(24), processing_class=tokenizer
    ).steerable_model()
    users = ["A", "B", "B", "A"]
    got = SteerableRewardFunction(model, contexts=contexts)(PROMPTS, COMPLETIONS, user_id=users)
    expected = torch.cat(
        [expected_rewards(model, [p], [c], contexts[u]) for p, c, u in zip(PROMPTS, COMPLETIONS, users, strict=True)]
    )
    torch.testing.assert_close(torch.tensor(got), expected, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------ bad input
def test_missing_context_column_names_it_and_the_fix(steerable):
    with pytest.raises(ValueError, match=r"reads the column 'context'.*columns: \['user_id'\].*`context_column=`"):
        SteerableRewardFunction(steerable)(PROMPTS, COMPLETIONS, user_id=["A"] * 4)
    with pytest.raises(ValueError, match="reads the column 'ctx'"):
        SteerableRewardFunction(steerable, context_column="ctx")(PROMPTS, COMPLETIONS, context=[[]] * 4)


def test_missing_user_column_names_it_and_the_fix(steerable, contexts):
    with pytest.raises(ValueError, match="reads the column 'user_id'.*`user_column=`"):
        SteerableRewardFunction(steerable, contexts=contexts)(PROMPTS, COMPLETIONS, context=[[]] * 4)


def test_unknown_user_names_the_user_and_the_fix(steerable, contexts):
    with pytest.raises(
        ValueError, match=r"User 'C' \(column 'user_id'\) is not in the context table.*contexts\['C'\]"
    ):
        SteerableRewardFunction(steerable, contexts=contexts)(PROMPTS, COMPLETIONS, user_id=["A", "C", "A", "B"])


def test_a_context_that_is_not_a_list_is_refused(steerable):
    with pytest.raises(ValueError, match="Row 1 of the column 'context' is a str"):
        SteerableRewardFunction(steerable)(PROMPTS[:2], COMPLETIONS[:2], context=[[], "A"])


def test_a_plain_model_is_sent_to_reward_model_function(tokenizer):
    with pytest.raises(TypeError, match="RewardModelFunction"):
        SteerableRewardFunction(tiny_reward_model(tokenizer))
    with pytest.raises(ValueError, match="ignores the user's context.*RewardModelFunction"):
        SteerableRewardFunction(ContextFreeRewardModel(tiny_reward_model(tokenizer), tokenizer))


def test_a_model_on_precomputed_embeddings_is_refused(tmp_path):
    generator = torch.Generator().manual_seed(0)
    train = Dataset.from_dict(
        {
            "chosen_embedding": torch.randn(32, 4, generator=generator).tolist(),
            "rejected_embedding": torch.randn(32, 4, generator=generator).tolist(),
            "user_id": ["u1", "u2"] * 16,
        }
    )
    args = NPEmbeddingRewardConfig(
        output_dir=str(tmp_path),
        report_to="none",
        use_cpu=True,
        context_embedding="precomputed",
        num_targets=4,
        max_context=4,
        latent_dim=4,
        encoder_hidden_dim=8,
        decoder_hidden_dim=8,
    )
    model = NPEmbeddingRewardTrainer(model=None, args=args, train_dataset=train).steerable_model()
    with pytest.raises(ValueError, match="precomputed embeddings"):
        SteerableRewardFunction(model)


# ------------------------------------------------------------------------------------- exported user models
@pytest.fixture(scope="module")
def exported(steerable, contexts, tmp_path_factory):
    """User A's reward model as a plain PEFT adapter folder (B diag(g(z_A)) folded into LoRA B), no fssa_trl module."""
    return steerable.export(str(tmp_path_factory.mktemp("export") / "rm-user-a"), context=contexts["A"])


def test_exported_model_rewards_equal_steerable_score_with_eos(exported, steerable, contexts, tokenizer):
    reward = RewardModelFunction(str(exported))  # the tokenizer is loaded from the folder
    assert not any(type(m).__module__.startswith("fssa_trl") for m in reward.model.model.modules())
    assert get_callable_name(reward) == "rm-user-a"  # the name TRL would log for the path itself
    got = torch.tensor(reward(prompts=PROMPTS, completions=COMPLETIONS))
    torch.testing.assert_close(
        got, expected_rewards(steerable, PROMPTS, COMPLETIONS, contexts["A"]), atol=1e-4, rtol=0
    )
    # A model object works alike, and conversations go through the chat template.
    from_object = RewardModelFunction(reward.model.model, tokenizer, name="alice")
    torch.testing.assert_close(torch.tensor(from_object(PROMPTS, COMPLETIONS)), got, atol=1e-6, rtol=0)
    chat_p = [[{"role": "user", "content": p}] for p in PROMPTS]
    chat_c = [[{"role": "assistant", "content": c}] for c in COMPLETIONS]
    torch.testing.assert_close(
        torch.tensor(from_object(chat_p, chat_c)),
        expected_rewards(steerable, chat_p, chat_c, contexts["A"]),
        atol=1e-4,
        rtol=0,
    )
    # What TRL computes for `reward_funcs=<path>`: no special tokens and no EOS, so the reward is read elsewhere.
    texts = [p + c for p, c in zip(PROMPTS, COMPLETIONS, strict=True)]
    inputs = tokenizer(texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
    with torch.no_grad():
        without_eos = reward.model.model(**inputs).logits[:, 0]
    assert (without_eos - got).abs().max() > 1e-3


def test_merged_export_rewards_equal_steerable_score(steerable, contexts, tokenizer, tmp_path):
    path = steerable.export(str(tmp_path / "rm-merged"), context=contexts["A"], merge=True)
    # A full-weights folder holds Qwen2's config.json, which would make AutoTokenizer pick Qwen2's BPE class for this
    # word-level tokenizer: pass the tokenizer, as one passes `reward_processing_classes` to TRL.
    reward = RewardModelFunction(path, tokenizer)
    got = torch.tensor(reward(PROMPTS, COMPLETIONS))
    torch.testing.assert_close(
        got, expected_rewards(steerable, PROMPTS, COMPLETIONS, contexts["A"]), atol=1e-4, rtol=0
    )


# ------------------------------------------------------------------------------------- inside TRL's trainers
def online_dataset(contexts):
    """Two prompts, one per user: with 4 completions per step (2 per prompt) every step scores both users."""
    return Dataset.from_dict(
        {"prompt": ["p1 p2 p3 ", "p4 p5 "], "user_id": ["A", "B"], "context": [contexts["A"], contexts["B"]]}
    )


def train_online(kind, tokenizer, dataset, reward, tmp_path):
    trainer_cls, config_cls = {"grpo": (GRPOTrainer, GRPOConfig), "rloo": (RLOOTrainer, RLOOConfig)}[kind]
    args = config_cls(
        output_dir=str(tmp_path),
        report_to="none",
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
        save_strategy="no",
        max_steps=2,
        logging_steps=1,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=8,
        gradient_checkpointing=False,
        beta=0.0,
        seed=0,
    )
    policy = tiny_causal_lm(tokenizer)
    trainer = trainer_cls(
        model=policy, reward_funcs=reward, args=args, train_dataset=dataset, processing_class=tokenizer
    )
    trainer.train()
    name = reward.__name__
    assert all(f"rewards/{name}/mean" in logs for logs in trainer.state.log_history[:2])
    logged = list(
        zip(trainer._logs["prompt"], trainer._logs["completion"], trainer._logs["rewards"][name], strict=True)
    )
    assert len(logged) == 4
    return logged


@pytest.mark.parametrize("kind", ["grpo", "rloo"])
@pytest.mark.parametrize("source", ["context_column", "user_table"])
def test_online_trainer_logs_each_users_score(kind, source, tokenizer, steerable, contexts, tmp_path):
    dataset = online_dataset(contexts)
    if source == "user_table":
        reward = SteerableRewardFunction(steerable, contexts=contexts)
        dataset = dataset.remove_columns("context")
    else:
        reward = SteerableRewardFunction(steerable)
    logged = train_online(kind, tokenizer, dataset, reward, tmp_path)
    user_of = dict(zip(dataset["prompt"], dataset["user_id"], strict=True))
    assert {user_of[p] for p, _, _ in logged} == {"A", "B"}
    other_user = []
    for prompt, completion, got in logged:
        user = user_of[prompt]
        expected = steerable.score([prompt], [completion], context=contexts[user])
        torch.testing.assert_close(torch.tensor([got]), expected, atol=1e-4, rtol=0)
        other = steerable.score([prompt], [completion], context=contexts["B" if user == "A" else "A"])
        other_user.append(abs(got - other.item()))
    assert max(other_user) > 1e-3  # the rows are told apart by user


def test_online_trainer_with_conversational_prompts(tokenizer, steerable, contexts, tmp_path):
    dataset = Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": "p1 p2 p3"}], [{"role": "user", "content": "p4 p5"}]],
            "user_id": ["A", "B"],
        }
    )
    logged = train_online("grpo", tokenizer, dataset, SteerableRewardFunction(steerable, contexts=contexts), tmp_path)
    user_of = {"p1 p2 p3": "A", "p4 p5": "B"}
    for prompt, completion, got in logged:
        assert completion[0]["role"] == "assistant"  # TRL's conversational completion: one assistant message
        expected = steerable.score([prompt], [completion], context=contexts[user_of[prompt[0]["content"]]])
        torch.testing.assert_close(torch.tensor([got]), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_online_trainer_with_an_exported_model(kind, tokenizer, exported, steerable, contexts, tmp_path):
    reward = RewardModelFunction(str(exported))
    logged = train_online(kind, tokenizer, online_dataset(contexts), reward, tmp_path)
    for prompt, completion, got in logged:  # user A's model, whichever user the row belongs to
        expected = steerable.score([prompt], [completion], context=contexts["A"])
        torch.testing.assert_close(torch.tensor([got]), expected, atol=1e-4, rtol=0)
