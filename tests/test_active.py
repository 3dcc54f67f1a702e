# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Active onboarding (`fssa_trl.active`): which questions to ask a new user. The selection is a deterministic function
of its inputs, ignores the order of a candidate's two responses, never asks one question twice, and on a task where
only some questions tell users apart, BALD's three questions beat three random ones on held-out pairs."""

import importlib.util
import json
import os
import sys

import numpy as np
import pytest
import torch
from peft import LoraConfig

from fssa_trl import (
    ContextFreeRewardModel,
    NPDPOConfig,
    NPDPOTrainer,
    NPEmbeddingRewardConfig,
    NPEmbeddingRewardTrainer,
    NPRewardConfig,
    NPRewardTrainer,
)
from fssa_trl.active import (
    QuerySuggestions,
    binary_entropy,
    posterior,
    simulate_onboarding,
    suggest_queries,
)
from fssa_trl.testing_utils import (
    style_preference_dataset,
    tiny_causal_lm,
    tiny_reward_model,
    trait_preference_task,
    word_tokenizer,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_example():
    spec = importlib.util.spec_from_file_location(
        "active_onboarding", os.path.join(ROOT, "examples", "active_onboarding.py")
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


# The example's settings of the Gaussian latent NP on the trait task (the benchmark uses them too): tested here, so
# that they cannot drift from what trains.
EXAMPLE = load_example()
GAUSSIAN = EXAMPLE.SYNTHETIC_TRAINING
PAIRS = EXAMPLE.SYNTHETIC_PAIRS


def embedding_config(tmp_path, **kwargs):
    return NPEmbeddingRewardConfig(
        output_dir=str(tmp_path),
        context_embedding="precomputed",
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=10**6,
        dataloader_num_workers=0,
        seed=0,
        **kwargs,
    )


def axis_of(pair) -> int:
    """The coordinate a trait-task pair differs along (0-2: a trait, 3: consensus, 4: tie)."""
    return int(np.flatnonzero(np.array(pair["chosen_embedding"]) != np.array(pair["rejected_embedding"]))[0])


def swap(pair):
    out = dict(pair)
    for a, b in (("chosen", "rejected"), ("chosen_embedding", "rejected_embedding")):
        if a in pair:
            out[a], out[b] = pair[b], pair[a]
    return out


@pytest.fixture(scope="module")
def gaussian(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny MLPs: more threads only add overhead on a shared machine
    try:
        trainer = NPEmbeddingRewardTrainer(
            model=None,
            args=embedding_config(tmp_path_factory.mktemp("gaussian"), **GAUSSIAN),
            train_dataset=trait_preference_task(PAIRS["train"], seed=100),
        )
        trainer.train()
    finally:
        torch.set_num_threads(threads)
    model = trainer.steerable_model()
    model.model.eval()
    return model


@pytest.fixture(scope="module")
def deterministic(tmp_path_factory):
    args = embedding_config(
        tmp_path_factory.mktemp("deterministic"), **{**GAUSSIAN, "latent_type": "deterministic", "max_steps": 1}
    )
    trainer = NPEmbeddingRewardTrainer(model=None, args=args, train_dataset=trait_preference_task(20, seed=1))
    trainer.train()
    return trainer.steerable_model()


@pytest.fixture(scope="module")
def pool():
    """Unlabelled trait-task pairs (their `chosen` is one user's answer; the ranking ignores it)."""
    return [
        {k: r[k] for k in ("chosen_embedding", "rejected_embedding", "kind")}
        for r in trait_preference_task(5, seed=7).to_list()
    ]


# ------------------------------------------------------------------------------------------- selection contract
@pytest.mark.parametrize("strategy", ["bald", "entropy", "random"])
def test_selection_is_a_deterministic_function_of_model_context_candidates_and_seed(gaussian, pool, strategy):
    context = pool[:2]
    first = gaussian.suggest_queries(pool[2:], context=context, k=4, strategy=strategy, seed=3)
    again = suggest_queries(gaussian, pool[2:], context=context, k=4, strategy=strategy, seed=3)
    assert isinstance(first, QuerySuggestions) and first.strategy == strategy
    assert first.indices == again.indices and first.scores == again.scores
    assert torch.equal(first.candidate_scores, again.candidate_scores)
    if strategy == "random":  # the seed is what varies the draw
        assert suggest_queries(gaussian, pool[2:], k=4, strategy=strategy, seed=4).indices != first.indices


def test_bald_on_a_deterministic_latent_names_the_fix(deterministic, pool):
    with pytest.raises(ValueError, match=r"needs a Gaussian latent.*latent_type='gaussian'.*strategy='entropy'"):
        deterministic.suggest_queries(pool, strategy="bald")
    # The other strategies work with a deterministic latent.
    assert len(deterministic.suggest_queries(pool, k=2, strategy="entropy").indices) == 2
    assert len(deterministic.suggest_queries(pool, k=2, strategy="random").indices) == 2


@pytest.mark.parametrize("strategy", ["bald", "entropy", "random"])
def test_swapping_chosen_and_rejected_changes_nothing(gaussian, pool, strategy):
    flipped = [swap(p) if i % 3 else p for i, p in enumerate(pool)]
    a = suggest_queries(gaussian, pool, context=pool[:1], k=5, strategy=strategy)
    b = suggest_queries(gaussian, flipped, context=pool[:1], k=5, strategy=strategy)
    assert a.indices == b.indices and a.scores == b.scores
    assert torch.equal(a.candidate_scores, b.candidate_scores)


def test_shapes_and_a_pool_smaller_than_k(gaussian, pool):
    ask = suggest_queries(gaussian, pool, k=3)
    assert len(ask.indices) == len(ask.scores) == 3 and len(set(ask.indices)) == 3
    assert all(0 <= i < len(pool) for i in ask.indices)
    assert ask.candidate_scores.shape == (len(pool),) and ask.candidate_scores.dtype == torch.float32
    assert ask.scores[0] == pytest.approx(ask.candidate_scores.max().item(), rel=1e-6)  # round one is plain BALD
    assert all(s >= 0 for s in ask.scores) and ask.scores == sorted(ask.scores, reverse=True)
    # k beyond the pool returns every candidate once, best first.
    for strategy in ("bald", "entropy", "random"):
        assert sorted(suggest_queries(gaussian, pool[:4], k=10, strategy=strategy).indices) == [0, 1, 2, 3]
    # A Dataset of rows is a pool too.
    from datasets import Dataset

    assert suggest_queries(gaussian, Dataset.from_list(pool), k=3).indices == ask.indices


def test_bad_input_is_refused_clearly(gaussian, pool):
    with pytest.raises(ValueError, match="`candidates` is empty"):
        suggest_queries(gaussian, [])
    with pytest.raises(ValueError, match="`strategy` must be one of"):
        suggest_queries(gaussian, pool, strategy="margin")
    with pytest.raises(ValueError, match="`k` must be a positive int"):
        suggest_queries(gaussian, pool, k=0)
    with pytest.raises(ValueError, match="`num_samples` must be a positive int"):
        suggest_queries(gaussian, pool, num_samples=0)
    with pytest.raises(ValueError, match=r"candidates\[1\] must be a dict with 'chosen_embedding'"):
        suggest_queries(gaussian, [pool[0], {"chosen": "a", "rejected": "b"}])
    with pytest.raises(ValueError, match=r"candidates\[0\]\['chosen_embedding'\].*expected \(5,\)"):
        suggest_queries(gaussian, [{"chosen_embedding": [1.0, 2.0], "rejected_embedding": [0.0] * 5}])


def test_duplicate_candidates_are_never_both_selected(gaussian, pool):
    # Each pair twice, the copy with its responses swapped: asking the same question twice teaches nothing.
    doubled = pool + [swap(p) for p in pool]
    for strategy in ("bald", "entropy", "random"):
        ask = suggest_queries(gaussian, doubled, k=len(doubled), strategy=strategy)
        assert sorted(ask.indices) == list(range(len(pool))), strategy  # only the first of each is eligible


# ------------------------------------------------------------------------------------------- what it measures
def test_bald_ranks_user_revealing_pairs_first_and_entropy_is_fooled_by_ties(gaussian, pool):
    by_kind = {}
    for strategy in ("bald", "entropy"):
        values = suggest_queries(gaussian, pool, strategy=strategy).candidate_scores
        by_kind[strategy] = {k: values[[p["kind"] == k for p in pool]] for k in ("trait", "consensus", "tie")}
    bald, entropy = by_kind["bald"], by_kind["entropy"]
    # BALD: a trait pair splits the users; nobody disagrees on a consensus pair and a tie is a coin flip for everyone.
    assert bald["trait"].min() > max(bald["consensus"].max(), bald["tie"].max())
    # Entropy cannot tell a coin flip from a question that splits users: ties look as good as trait pairs.
    assert entropy["tie"].mean() > 0.9 * entropy["trait"].mean()
    assert entropy["consensus"].max() < 0.1


def test_k_greater_than_one_asks_about_different_traits(gaussian):
    """Greedy BatchBALD: a second pair about an already selected trait adds (almost) nothing, so three questions from
    an empty context cover the three traits."""
    for seed in range(4):
        pairs = trait_preference_task(5, seed=20 + seed).to_list()
        ask = suggest_queries(gaussian, pairs, k=3, strategy="bald")
        assert sorted(axis_of(pairs[i]) for i in ask.indices) == [0, 1, 2], seed


def test_entropy_of_a_deterministic_latent_is_that_of_the_btl_probability(deterministic, pool):
    context = pool[:3]
    latent = deterministic.latent(context)
    rewards = deterministic.score(
        [""] * 2 * len(pool), [p[c] for c in ("chosen_embedding", "rejected_embedding") for p in pool], latent=latent
    )
    expected = binary_entropy(torch.sigmoid((rewards[: len(pool)] - rewards[len(pool) :]).double()))
    got = suggest_queries(deterministic, pool, context=context, strategy="entropy").candidate_scores
    torch.testing.assert_close(got, expected.float(), atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------------------- text models and policies
@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


@pytest.fixture(scope="module")
def text_pool():
    return [
        {"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]}
        for r in style_preference_dataset(4, seed=5).to_list()
    ]


def randomise_np_and_lora_b(model):
    """Random hypernetwork and LoRA B, so that z changes the rewards (training is not what is tested here)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "fssa_np" in name or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    model.eval()


@pytest.fixture(scope="module")
def lora_reward_model(tokenizer, tmp_path_factory):
    args = NPRewardConfig(
        output_dir=str(tmp_path_factory.mktemp("lora")),
        **dict(report_to="none", use_cpu=True, bf16=False, disable_tqdm=True, save_strategy="no"),
        **dict(num_targets=8, max_context=4, latent_dim=8, encoder_hidden_dim=32, hypernetwork_hidden_dim=32),
        latent_type="gaussian",
    )
    trainer = NPRewardTrainer(
        model=tiny_reward_model(tokenizer),
        args=args,
        train_dataset=style_preference_dataset(24),
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    randomise_np_and_lora_b(trainer.model)
    return trainer.steerable_model()


@pytest.fixture(scope="module")
def policy(tokenizer, tmp_path_factory):
    args = NPDPOConfig(
        output_dir=str(tmp_path_factory.mktemp("dpo")),
        **dict(report_to="none", use_cpu=True, bf16=False, disable_tqdm=True, save_strategy="no"),
        **dict(num_targets=8, max_context=4, latent_dim=8, encoder_hidden_dim=32, hypernetwork_hidden_dim=32),
        latent_type="gaussian",
        beta=0.5,
    )
    trainer = NPDPOTrainer(
        model=tiny_causal_lm(tokenizer),
        args=args,
        train_dataset=style_preference_dataset(24),
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    randomise_np_and_lora_b(trainer.model)
    return trainer.steerable_model()


@pytest.mark.parametrize("kind", ["lora_reward_model", "policy"])
def test_text_models_rank_by_score_with_a_latent(kind, request, text_pool):
    model = request.getfixturevalue(kind)
    context = text_pool[:2]
    ask = model.suggest_queries(text_pool[2:], context=context, k=2, strategy="bald", num_samples=4)
    assert len(ask.indices) == 2 and ask.candidate_scores.shape == (len(text_pool) - 2,)
    assert ask.candidate_scores.max() > 0  # z moves the rewards, so the samples disagree somewhere
    flipped = [swap(p) for p in text_pool[2:]]
    again = model.suggest_queries(flipped, context=context, k=2, strategy="bald", num_samples=4)
    assert again.indices == ask.indices and torch.equal(again.candidate_scores, ask.candidate_scores)
    # BALD by hand from the same draws of z (the seed's first `randn(num_samples, latent_dim)`) and `score(latent=z)`.
    q = posterior(model, context)
    zs = q.mean + q.std * torch.randn(4, q.mean.shape[-1], generator=torch.Generator().manual_seed(0))
    prompts = [p["prompt"] for p in text_pool[2:]]
    p = torch.stack(
        [
            torch.sigmoid(
                model.score(prompts, [p["chosen"] for p in text_pool[2:]], latent=z)
                - model.score(prompts, [p["rejected"] for p in text_pool[2:]], latent=z)
            ).double()
            for z in zs
        ]
    )
    bald = binary_entropy(p.mean(dim=0)) - binary_entropy(p).mean(dim=0)
    torch.testing.assert_close(ask.candidate_scores, bald.float(), atol=1e-5, rtol=1e-4)


def test_a_context_free_model_takes_entropy_but_not_bald(tokenizer, text_pool):
    model = ContextFreeRewardModel(tiny_reward_model(tokenizer).eval(), tokenizer)
    with pytest.raises(ValueError, match="context-free reward model has no latent"):
        model.suggest_queries(text_pool)
    assert len(model.suggest_queries(text_pool, k=2, strategy="entropy").indices) == 2


# -------------------------------------------------------------------------------------------------- learning test
def test_three_active_questions_beat_three_random_ones_on_held_out_pairs(gaussian, tmp_path):
    """Simulated new users (the eight of the trait task) answer truthfully; a third of their question pool splits
    users, a third everyone answers alike, a third is a coin flip. Held-out pairs are decisive ones (trait and
    consensus) the user was never asked. After 3 questions BALD must lead random by 5 points (mean over users and
    seeds); the curve is saved with the test's files and printed."""
    curves = None
    for seed in range(3):
        questions = trait_preference_task(PAIRS["pool"], seed=seed)
        heldout = trait_preference_task(PAIRS["heldout"], seed=50 + seed, kinds={"trait": 1.0, "consensus": 1.0})
        run = simulate_onboarding(gaussian, questions, heldout, ("bald", "random"), num_questions=3, seed=seed)
        curves = run if curves is None else curves + run
    curves.to_json(str(tmp_path / "onboarding_curve.json"))
    print("\n" + curves.table((0, 1, 2, 3)))
    assert len(json.loads((tmp_path / "onboarding_curve.json").read_text())["records"]) == 3 * 8 * 2 * 4
    assert curves.mean("bald", 0) == curves.mean("random", 0)  # the same model before any question
    assert curves.mean("bald", 3) >= curves.mean("random", 3) + 0.05
    assert curves.mean("bald", 3) >= curves.mean("bald", 0) + 0.10  # and it learns from the answers


def test_the_example_parses_its_defaults_and_refuses_a_bad_task():
    (args,) = EXAMPLE.make_parser().parse_args_and_config(args=[])
    assert args.task == "both" and args.strategies == ["bald", "entropy", "random"] and args.num_questions == 10
    with pytest.raises(ValueError, match="`task` must be one of"):
        EXAMPLE.make_parser().parse_args_and_config(args=["--task", "hh"])
