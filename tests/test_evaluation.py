# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Few-shot evaluation: the metric, the results table, and a context-free baseline."""

import pytest
import torch

from fssa_trl import ContextFreeRewardModel, FewShotResults, SteerableRewardModel, evaluate_few_shot
from fssa_trl.evaluation import FewShotAccuracy, plot_few_shot
from fssa_trl.testing_utils import style_preference_dataset, tiny_reward_model, word_tokenizer

RECORDS = [
    {"user": "A", "context_size": 0, "accuracy": 0.5, "num_pairs": 4},
    {"user": "A", "context_size": 3, "accuracy": 0.75, "num_pairs": 4},
    {"user": "B", "context_size": 0, "accuracy": 1.0, "num_pairs": 12},
    {"user": "B", "context_size": 3, "accuracy": 0.25, "num_pairs": 12},
]


def test_few_shot_accuracy_metric():
    result = FewShotAccuracy().compute(predictions=[0, 0, 1, 0, 1], references=[0, 0, 0, 0, 0])
    assert result == {"accuracy": pytest.approx(0.6), "num_pairs": 5}


def test_results_accuracy_by_user_and_overall():
    results = FewShotResults(RECORDS, name="np")
    assert results.users == ["A", "B"]
    assert results.context_sizes == [0, 3]
    assert results.accuracy(3, "A") == 0.75
    assert results.accuracy(0) == pytest.approx((0.5 * 4 + 1.0 * 12) / 16)  # weighted by pairs
    with pytest.raises(KeyError, match="context_size=5"):
        results.accuracy(5)
    with pytest.raises(KeyError, match="'C'"):
        results.accuracy(0, "C")


def test_results_table_string():
    lines = str(FewShotResults(RECORDS, name="np")).splitlines()
    assert lines[0] == "np: accuracy (%) on unseen pairs by context size"
    assert lines[1].split() == ["user", "0", "3"]
    assert lines[2].split() == ["A", "50.0", "75.0"]
    assert lines[3].split() == ["B", "100.0", "25.0"]
    assert lines[4].split() == ["all", "users", "87.5", "37.5"]


def test_results_json_round_trip(tmp_path):
    results = FewShotResults(RECORDS, name="np")
    results.to_json(tmp_path / "results.json")
    loaded = FewShotResults.from_json(tmp_path / "results.json")
    assert loaded == results
    assert str(loaded) == str(results)


def test_plot_few_shot_writes_a_png(tmp_path):
    path = tmp_path / "few_shot.png"
    other = FewShotResults([{**r, "accuracy": 0.5} for r in RECORDS], name="btl")
    plot_few_shot([FewShotResults(RECORDS, name="np"), other], str(path), title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plain_reward_model_ignores_the_context():
    tokenizer = word_tokenizer()
    model = ContextFreeRewardModel(tiny_reward_model(tokenizer), tokenizer)  # a plain baseline
    assert model.is_context_free
    data = style_preference_dataset(10, seed=3)
    model.model.train()
    results = evaluate_few_shot(model, data, context_sizes=[0, 1, 3], num_targets=4, name="btl")
    assert model.model.training  # training mode restored
    assert results.name == "btl"
    assert results.users == ["A", "B"]
    assert results.context_sizes == [0, 1, 3]
    assert all(r["num_pairs"] == 10 for r in results.records)  # every pair once per context size
    for user in ("A", "B"):
        rows = [i for i, u in enumerate(data["user_id"]) if u == user]
        prompts = [data["prompt"][i] for i in rows]
        chosen = model.score(prompts, [data["chosen"][i] for i in rows])
        rejected = model.score(prompts, [data["rejected"][i] for i in rows])
        expected = (chosen > rejected).float().mean().item()
        for size in (0, 1, 3):
            assert results.accuracy(size, user) == pytest.approx(expected)


def test_plain_scores_are_batch_independent():
    tokenizer = word_tokenizer()
    model = ContextFreeRewardModel(tiny_reward_model(tokenizer).eval(), tokenizer)
    data = style_preference_dataset(4, seed=3)
    full = model.score(data["prompt"], data["chosen"], batch_size=8)
    torch.testing.assert_close(model.score(data["prompt"], data["chosen"], batch_size=3), full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="A context-free reward model has no latent"):
        model.latent([])


def test_missing_user_column_raises():
    tokenizer = word_tokenizer()
    model = ContextFreeRewardModel(tiny_reward_model(tokenizer), tokenizer)
    data = style_preference_dataset(4).remove_columns("user_id")
    with pytest.raises(ValueError, match="no user column 'user_id'"):
        evaluate_few_shot(model, data)


def test_the_common_reward_interface_names_the_classes_to_use():
    tokenizer = word_tokenizer()
    with pytest.raises(TypeError, match="ContextFreeRewardModel"):
        SteerableRewardModel(tiny_reward_model(tokenizer), tokenizer)
    with pytest.raises(ValueError, match="no saved form"):
        ContextFreeRewardModel.from_pretrained("anything")
