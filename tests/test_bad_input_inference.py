# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Bad inference input never scores silently: `score`, `latent`, `log_probs`, `generate`, `export(context=...)` and
`evaluate_few_shot` check what they are given before anything is embedded or scored, and raise a `ValueError` that
names the argument, the index and the fix (issue 10)."""

import contextlib
import json
import logging
import math
import warnings

import pytest
import torch
from datasets import Dataset

from fssa_trl import ContextFreeRewardModel, FewShotResults, evaluate_few_shot
from fssa_trl.modeling import (
    ContextEmbeddingConfig,
    EmbeddingRewardModelConfig,
    LatentEncoderConfig,
    NPEmbeddingRewardModel,
    NPModules,
    RewardDecoderConfig,
    SteerableEmbeddingRewardModel,
)
from fssa_trl.testing_utils import (
    style_preference_dataset,
    tiny_causal_lm,
    tiny_reward_model,
    untrained_steerable_model,
    word_tokenizer,
)

LATENT_DIM, EMBEDDING_DIM = 4, 4
PAIR = {"prompt": "p1 p2 ", "chosen": "a1 a2", "rejected": "b1 b2"}
CONTEXT = [
    {"prompt": f"p{i} ", "chosen": f"a{i} a{i + 1}", "rejected": f"b{i} b{i + 1}", "user_id": "A"} for i in range(6)
]


@pytest.fixture(scope="module")
def rm():
    return untrained_steerable_model(tiny_reward_model(word_tokenizer()), word_tokenizer()).eval()


@pytest.fixture(scope="module")
def policy():
    return untrained_steerable_model(tiny_causal_lm(word_tokenizer()), word_tokenizer(), policy=True).eval()


@pytest.fixture(scope="module")
def embedding_rm():
    """A frozen-embedding reward model trained on precomputed embeddings: contexts and responses are vectors."""
    config = EmbeddingRewardModelConfig(
        encoder=LatentEncoderConfig(
            embedding_dim=EMBEDDING_DIM,
            latent_dim=LATENT_DIM,
            hidden_dim=8,
            aggregation="mean",
            latent_type="deterministic",
            num_heads=2,
        ),
        context_embedding=ContextEmbeddingConfig(source="precomputed"),
        decoder=RewardDecoderConfig(
            embedding_dim=EMBEDDING_DIM, latent_dim=LATENT_DIM, hidden_dim=8, num_layers=2, head="btl"
        ),
    )
    return SteerableEmbeddingRewardModel(NPEmbeddingRewardModel(NPModules.from_config(config)), None, config)


@contextlib.contextmanager
def no_forward(model):
    """Fail if the transformer body runs (to score or to embed a context) inside the block."""

    def fail(*args):
        raise AssertionError("a forward pass ran before the input was checked")

    handle = model.model.get_base_model().model.register_forward_pre_hook(fail)
    try:
        yield
    finally:
        handle.remove()


# ---------------------------------------------------------------------------------------- 1. single strings
def test_a_single_string_is_a_batch_of_one(rm, policy):
    torch.testing.assert_close(
        rm.score("p1 ", "a1 a2", context=CONTEXT), rm.score(["p1 "], ["a1 a2"], context=CONTEXT)
    )
    assert rm.score("p1 ", "a1 a2").shape == (1,)
    torch.testing.assert_close(policy.score("p1 ", "a1 a2"), policy.score(["p1 "], ["a1 a2"]))
    torch.testing.assert_close(policy.log_probs("p1 ", "a1 a2"), policy.log_probs(["p1 "], ["a1 a2"]))
    assert len(policy.generate("p1 p2 ", max_new_tokens=2, do_sample=False)) == 1
    plain = ContextFreeRewardModel(rm.model.get_base_model(), rm.tokenizer)
    torch.testing.assert_close(plain.score("p1 ", "a1 a2"), plain.score(["p1 "], ["a1 a2"]))
    # A single prompt does not broadcast over several responses: the lengths must match.
    with pytest.raises(ValueError, match="Got 1 prompts but 2 responses"):
        rm.score("p1 ", ["a1", "a2"])


# ------------------------------------------------------------------------------- 2. more than max_context pairs
def test_a_context_larger_than_max_context_is_used_whole_with_one_warning(rm):
    latent = rm.latent(CONTEXT)  # 6 pairs; max_context unknown (a saved folder does not record it): no warning
    assert not torch.allclose(latent, rm.latent(CONTEXT[:4]))  # every pair counts, not only the first or last 4
    rm.max_context = 4
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.testing.assert_close(rm.latent(CONTEXT), latent)
            rm.score(["p1 "], ["a1"], context=CONTEXT)
            rm.latent(CONTEXT[:4])
        assert [str(w.message) for w in caught if "trained with" in str(w.message)] == [
            "The context has 6 pairs, more than the 4 this model was trained with: all are used (the encoder pools a "
            "set of any size), but the latent may drift from what training saw. Pass at most 4 pairs to stay within "
            "it."
        ]
    finally:
        rm.max_context, rm._warned_max_context = None, False


# --------------------------------------------------------------------------------------- 3. keys and context forms
@pytest.mark.parametrize(
    ("key", "meant"),
    [("promt", "prompt"), ("Prompt", "prompt"), ("choosen", "chosen"), ("rejceted", "rejected")],
)
def test_a_misspelt_context_key_names_the_key_and_the_expected_keys(rm, key, meant):
    pair = {k: v for k, v in PAIR.items() if k != meant}
    pair[key] = PAIR[meant]
    match = rf"`context\[1\]` has the unknown key '{key}'; did you mean '{meant}'\? A context pair has 'chosen'"
    with no_forward(rm), pytest.raises(ValueError, match=match):
        rm.score(["p1 "], ["a1"], context=[PAIR, pair])


def test_context_forms_rows_columns_and_datasets_agree(rm):
    rows = [{k: v for k, v in pair.items() if k != "user_id"} for pair in CONTEXT]
    latent = rm.latent(rows)
    torch.testing.assert_close(rm.latent(CONTEXT), latent)  # other keys (a user id) are ignored
    torch.testing.assert_close(rm.latent(Dataset.from_list(CONTEXT)), latent)
    torch.testing.assert_close(rm.latent({k: [p[k] for p in rows] for k in PAIR}), latent)
    torch.testing.assert_close(rm.latent(tuple(rows)), latent)
    torch.testing.assert_close(rm.latent([]), rm.latent(None))  # the population prior


@pytest.mark.parametrize(
    ("context", "match"),
    [
        (PAIR, r"`context` is a single pair: give a list of pairs, `\[pair\]`"),
        ({"prompt": ["p"], "chosen": ["a1", "a2"], "rejected": ["b1", "b2"]}, "columns of `context` must have one"),
        ("a1 a2", "`context` must be a list of pairs, got str"),
        ([3], r"`context\[0\]` must be a dict, got int 3"),
        ([{"chosen": "a1"}], r"`context\[0\]` has the keys \['chosen'\]\. A context pair has 'chosen' and 'rejected'"),
        ([PAIR, {"chosen": "a1", "rejected": "b1"}], r"`context\[1\]` has no 'prompt' but `context\[0\]` has one"),
        ([{**PAIR, "chosen": None}], r"`context\[0\]\['chosen'\]` must be a string or a conversation.*NoneType"),
        ([{**PAIR, "rejected": 7}], r"`context\[0\]\['rejected'\]` must be a string or a conversation.*int 7"),
        ([{**PAIR, "prompt": None}], r"`context\[0\]\['prompt'\]` must be a string or a conversation"),
        ([{**PAIR, "chosen": ""}], r"`context\[0\]\['chosen'\]` is empty: a response needs text"),
        ([{**PAIR, "rejected": "  \n"}], r"`context\[0\]\['rejected'\]` is empty"),
        ([{**PAIR, "chosen": []}], r"`context\[0\]\['chosen'\]` is empty"),
        ([{**PAIR, "chosen": [{"role": "assistant", "content": ""}]}], r"`context\[0\]\['chosen'\]` is empty"),
        ([{**PAIR, "chosen": [{"role": "assistant", "content": "a1"}]}], r"`context\[0\]` mixes formats"),
    ],
)
def test_bad_contexts_raise_before_scoring(rm, context, match):
    with no_forward(rm), pytest.raises(ValueError, match=match):
        rm.score(["p1 "], ["a1"], context=context)


def test_an_empty_prompt_means_no_prompt_and_an_empty_response_is_scored(rm, policy):
    """`""` is a prompt-less pair, as for a dataset without a `prompt` column (where the trainers use `""` too). A
    scored response may be empty (a policy can generate an empty completion); a context pair's may not."""
    without = [{"chosen": "a1 a2", "rejected": "b1 b2"}]
    torch.testing.assert_close(rm.latent([{**without[0], "prompt": ""}]), rm.latent(without))
    assert torch.isfinite(rm.score([""], ["a1 a2"], context=without)).all()
    assert torch.isfinite(rm.score(["p1 ", "p2 "], ["a1", ""])).all()
    assert torch.isfinite(policy.log_probs(["p1 "], [""])).all()


# -------------------------------------------------------------------------- 4. texts, latents, batch sizes, vectors
@pytest.mark.parametrize(
    ("prompts", "responses", "match"),
    [
        (["p1 ", None], ["a1", "a2"], r"`prompts\[1\]` must be a string or a conversation"),
        (["p1 ", "p2 "], ["a1", 5], r"`responses\[1\]` must be a string or a conversation.*got int 5"),
        ([], [], "`prompts` and `responses` are empty"),
        ({"prompt": "p1 "}, ["a1"], "`prompts` must be a list of texts or conversations"),
        (["p1 "], [[{"role": "assistant", "content": "a1"}]], r"`prompts\[0\]` with `responses\[0\]` mixes formats"),
        (["p1 ", "p2 "], ["a1", "a2", "a3"], "Got 2 prompts but 3 responses"),
    ],
)
def test_bad_texts_raise_before_scoring(rm, policy, prompts, responses, match):
    with no_forward(rm), pytest.raises(ValueError, match=match):
        rm.score(prompts, responses, context=CONTEXT)
    with no_forward(policy), pytest.raises(ValueError, match=match):
        policy.score(prompts, responses)
    with pytest.raises(ValueError, match=match.replace("responses", "completions")):
        policy.log_probs(prompts, responses)


@pytest.mark.parametrize(
    ("latent", "match"),
    [
        (torch.zeros(3), r"`latent` must have shape \(4,\) \(the model's latent_dim is 4\)"),
        (torch.zeros(2, 4), r"`latent` must have shape \(4,\)"),
        (torch.tensor([0.0, math.nan, 0.0, 0.0]), "`latent` holds NaN or infinite values"),
        (torch.tensor([0.0, math.inf, 0.0, 0.0]), "`latent` holds NaN or infinite values"),
        ("z", r"`latent` must have shape \(4,\)"),
    ],
)
def test_bad_latents_are_refused(rm, policy, embedding_rm, latent, match):
    for model in (rm, policy, embedding_rm):
        responses = [[0.0] * EMBEDDING_DIM] if model is embedding_rm else ["a1"]
        with pytest.raises(ValueError, match=match):
            model.score(["p1 "], responses, latent=latent)
    with pytest.raises(ValueError, match=match):
        policy.log_probs(["p1 "], ["a1"], latent=latent)


def test_latents_given_right_are_used(rm, policy):
    z = rm.latent(CONTEXT)
    torch.testing.assert_close(
        rm.score(["p1 "], ["a1"], latent=z.tolist()), rm.score(["p1 "], ["a1"], context=CONTEXT)
    )
    # generation takes one latent per prompt too; scoring only one latent for all
    zs = torch.stack([policy.latent(CONTEXT), policy.latent([])])
    assert len(policy.generate(["p1 ", "p2 "], latent=zs, max_new_tokens=2, do_sample=False)) == 2
    with pytest.raises(ValueError, match=r"`latent` must have shape \(4,\) or \(2, 4\), one per prompt"):
        policy.generate(["p1 ", "p2 "], latent=torch.zeros(3, 4), max_new_tokens=2)


def test_context_and_latent_together_are_refused(rm, policy):
    z = rm.latent(CONTEXT)
    with pytest.raises(ValueError, match="either `context`.*or `latent`.*not both: the context would be ignored"):
        rm.score(["p1 "], ["a1"], context=CONTEXT, latent=z)
    with pytest.raises(ValueError, match="either `context`.*or `latent`"):
        policy.generate(["p1 "], context=CONTEXT, latent=z, max_new_tokens=2)


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, True, None])
def test_bad_batch_sizes_are_refused(rm, policy, batch_size):
    plain = ContextFreeRewardModel(rm.model.get_base_model(), rm.tokenizer)
    for call in (rm.score, policy.score, policy.log_probs, plain.score):
        with pytest.raises(ValueError, match="`batch_size` must be a positive int"):
            call(["p1 "], ["a1"], batch_size=batch_size)


def test_policy_generate_needs_non_empty_prompts(policy):
    with pytest.raises(ValueError, match=r"`prompts\[1\]` is empty"):
        policy.generate(["p1 ", ""], max_new_tokens=2)
    with pytest.raises(ValueError, match="`prompts` is empty: there is nothing to generate from"):
        policy.generate([], max_new_tokens=2)


def test_precomputed_embeddings_are_checked(embedding_rm):
    good = [[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]]
    context = [{"chosen_embedding": good[0], "rejected_embedding": good[1], "user_id": "A"}]
    rewards = embedding_rm.score(["", ""], good, context=context)
    assert rewards.shape == (2,) and torch.isfinite(rewards).all()
    torch.testing.assert_close(embedding_rm.score(["", ""], torch.tensor(good), context=context), rewards)
    cases = [
        (["", ""], [good[0], [math.nan] * 4], {}, r"`responses\[1\]` holds NaN or infinite values"),
        ([""], [[0.1, 0.2]], {}, r"`responses\[0\]` has shape \(2,\), expected \(4,\)"),
        ([""], [[0.1, None, 0.3, 0.4]], {}, r"`responses\[0\]` is not a vector of numbers"),
        ([""], torch.zeros(4), {}, r"`responses\[:\]` must have shape \(N, 4\)"),
        (["", ""], [good[0]], {}, "Got 2 prompts but 1 responses"),
        (
            [""],
            [good[0]],
            {"context": [context[0], {"chosen_embedding": good[0], "rejected_embedding": [math.inf, 0, 0, 0]}]},
            r"`context\[1\]\['rejected_embedding'\]` holds NaN or infinite values",
        ),
        (
            [""],
            [good[0]],
            {"context": [{"chosen_embeddings": good[0], "rejected_embedding": good[1]}]},
            r"unknown key 'chosen_embeddings'; did you mean 'chosen_embedding'\?",
        ),
        (
            [""],
            [good[0]],
            {"context": [context[0], {"chosen": "a1", "rejected": "b1"}]},
            r"`context` mixes forms: `context\[0\]` gives embeddings, `context\[1\]` texts",
        ),
        ([""], [good[0]], {"context": [{"chosen": "a1", "rejected": "b1"}]}, "trained on precomputed embeddings"),
    ]
    for prompts, responses, kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            embedding_rm.score(prompts, responses, **kwargs)


def test_export_checks_the_context_before_writing(rm, tmp_path):
    with pytest.raises(ValueError, match="unknown key 'promt'"):
        rm.export(str(tmp_path / "out"), context=[{"promt": "p1 ", "chosen": "a1", "rejected": "b1"}])
    with pytest.raises(ValueError, match=r"`latent` must have shape \(4,\)"):
        rm.export(str(tmp_path / "out"), latent=torch.zeros(5))
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ evaluation
@pytest.fixture(scope="module")
def plain():
    tokenizer = word_tokenizer()
    return ContextFreeRewardModel(tiny_reward_model(tokenizer).eval(), tokenizer)


def with_small_users(pairs_c: int = 3, pairs_d: int = 1) -> Dataset:
    """Users A and B with 8 pairs each, C with `pairs_c`, D with `pairs_d`."""
    rows = style_preference_dataset(8, seed=3).to_list()
    rows += [{**r, "user_id": "C"} for r in style_preference_dataset(pairs_c, seed=4).to_list()[:pairs_c]]
    rows += [{**r, "user_id": "D"} for r in style_preference_dataset(pairs_d, seed=5).to_list()[:pairs_d]]
    return Dataset.from_list(rows)


@pytest.mark.parametrize(
    ("too_few_pairs", "skipped", "reason"),
    [
        ("skip", {"C": 3, "D": 1}, "at most 3 pairs, fewer than the 4 that 3 context pairs and an unseen target need"),
        ("replace", {"D": 1}, "a single pair: no unseen context pair besides the target, even with too_few_pairs="),
    ],
)
def test_skipped_users_are_counted_logged_once_and_kept_in_the_results(
    plain, caplog, tmp_path, too_few_pairs, skipped, reason
):
    with caplog.at_level(logging.WARNING, logger="fssa_trl"):
        results = evaluate_few_shot(
            plain, with_small_users(), context_sizes=[0, 3], num_targets=4, too_few_pairs=too_few_pairs, num_draws=2
        )
    assert {u["user"]: u["num_pairs"] for u in results.skipped_users} == skipped
    assert all(
        reason in u["reason"] and f"too_few_pairs='{too_few_pairs}'" in u["reason"] for u in results.skipped_users
    )
    assert set(results.users) == {"A", "B", "C", "D"} - set(skipped)
    logs = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert len(logs) == 1 and f"left out {len(skipped)} of 4 users" in logs[0] and reason in logs[0]
    other = "replace" if too_few_pairs == "skip" else "skip"
    assert f"too_few_pairs='{other}';" not in logs[0]  # names the option in use
    table = str(results).splitlines()
    assert table[-1].startswith(f"not evaluated: {len(skipped)} user") and reason in table[-1]
    results.to_json(tmp_path / "results.json")
    assert json.loads((tmp_path / "results.json").read_text())["skipped_users"] == results.skipped_users
    assert FewShotResults.from_json(tmp_path / "results.json") == results


def test_results_json_without_skipped_users_still_loads(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"name": "np", "records": []}))
    assert FewShotResults.from_json(path).skipped_users == []


def test_duplicate_context_sizes_are_evaluated_once(plain):
    data = style_preference_dataset(6, seed=3)
    once = evaluate_few_shot(plain, data, context_sizes=[0, 2], num_targets=4)
    twice = evaluate_few_shot(plain, data, context_sizes=[2, 0, 2, 0], num_targets=4)
    assert twice.records == once.records
    assert all(r["num_pairs"] == 6 for r in twice.records)  # every pair once per size, not twice


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"too_few_pairs": "drop"}, r"`too_few_pairs` must be one of \('skip', 'replace', 'error'\), got 'drop'"),
        ({"context_sizes": [0, -1]}, "`context_sizes` must be a non-empty list of ints >= 0"),
        ({"context_sizes": []}, "`context_sizes` must be a non-empty list of ints >= 0"),
        ({"num_targets": 0}, "`num_targets` must be an int >= 1"),
        ({"num_draws": 0}, "`num_draws` must be an int >= 1"),
        ({"batch_size": 0}, "`batch_size` must be a positive int"),
    ],
)
def test_bad_evaluation_arguments_are_refused(plain, kwargs, match):
    with pytest.raises(ValueError, match=match):
        evaluate_few_shot(plain, style_preference_dataset(4), **kwargs)


@pytest.mark.parametrize("column", ["chosen", "rejected", "prompt"])
def test_a_none_or_empty_text_in_the_dataset_names_the_column_and_the_row(plain, rm, column):
    rows = style_preference_dataset(4, seed=3).to_list()
    rows[5][column] = None
    for model in (plain, rm):
        with pytest.raises(ValueError, match=rf"Row 5 of the evaluation dataset has an empty '{column}'"):
            evaluate_few_shot(model, Dataset.from_list(rows), context_sizes=[0, 1], num_targets=4)
    rows[5][column] = " "
    with pytest.raises(ValueError, match=rf"Row 5 of the evaluation dataset has an empty '{column}'"):
        evaluate_few_shot(plain, Dataset.from_list(rows), context_sizes=[0, 1], num_targets=4)


def test_a_steerable_model_is_evaluated_on_a_checked_dataset(rm):
    results = evaluate_few_shot(rm, style_preference_dataset(4, seed=3), context_sizes=[0, 1, 1], num_targets=4)
    assert results.context_sizes == [0, 1] and results.skipped_users == []
