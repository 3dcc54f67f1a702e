# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""users_from_attributes: one user per rated attribute, from labels or score pairs."""

import pytest
from datasets import Dataset

from fssa_trl import users_from_attributes


@pytest.fixture
def rated():
    # helpfulness: index of the preferred response (None / -1: no label); honesty: [score_a, score_b].
    return Dataset.from_dict(
        {
            "prompt": ["q0 ", "q1 ", "q2 ", "q3 ", "q4 "],
            "response_a": ["a0", "a1", "a2", "a3", "a4"],
            "response_b": ["b0", "b1", "b2", "b3", "b4"],
            "helpfulness": [1, 0, 0, None, -1],
            "honesty": [[5, 3], [1, 4], [2, 2], [3, 1], [0, 1]],
        }
    )


def as_tuples(dataset):
    return [(r["user_id"], r["prompt"], r["chosen"], r["rejected"]) for r in dataset]


def test_labels_and_score_pairs(rated):
    out = users_from_attributes(rated, ["helpfulness", "honesty"])
    assert out.column_names == ["prompt", "chosen", "rejected", "user_id"]
    assert as_tuples(out) == [
        ("helpfulness", "q0 ", "b0", "a0"),  # label 1: response_b preferred
        ("honesty", "q0 ", "a0", "b0"),  # 5 > 3: response_a preferred
        ("helpfulness", "q1 ", "a1", "b1"),
        ("honesty", "q1 ", "b1", "a1"),
        ("helpfulness", "q2 ", "a2", "b2"),  # honesty ties on q2: skipped
        ("honesty", "q3 ", "a3", "b3"),  # helpfulness unlabelled on q3 (None) and q4 (-1)
        ("honesty", "q4 ", "b4", "a4"),
    ]


def test_only_conflicting_keeps_pairs_where_attributes_disagree(rated):
    out = users_from_attributes(rated, ["helpfulness", "honesty"], only_conflicting=True)
    # q0 and q1 conflict; q2 (tie), q3 and q4 (one label only) have no disagreement.
    assert as_tuples(out) == [
        ("helpfulness", "q0 ", "b0", "a0"),
        ("honesty", "q0 ", "a0", "b0"),
        ("helpfulness", "q1 ", "a1", "b1"),
        ("honesty", "q1 ", "b1", "a1"),
    ]
    for prompt in ("q0 ", "q1 "):
        users = {r["user_id"]: r["chosen"] for r in out if r["prompt"] == prompt}
        assert users["helpfulness"] != users["honesty"]


def test_agreeing_pairs_are_dropped_only_with_only_conflicting():
    ds = Dataset.from_dict({"prompt": ["q"], "response_a": ["a"], "response_b": ["b"], "x": [0], "y": [[9, 1]]})
    assert len(users_from_attributes(ds, ["x", "y"])) == 2
    assert len(users_from_attributes(ds, ["x", "y"], only_conflicting=True)) == 0


def test_implicit_prompt_and_custom_columns():
    ds = Dataset.from_dict({"first": ["a"], "second": ["b"], "x": [1]})
    out = users_from_attributes(ds, ["x"], response_columns=("first", "second"), prompt_column=None, user_column="u")
    assert out.to_list() == [{"chosen": "b", "rejected": "a", "u": "x"}]


def test_missing_columns_raise(rated):
    with pytest.raises(ValueError, match=r"no column\(s\) \['harmlessness'\]"):
        users_from_attributes(rated, ["helpfulness", "harmlessness"])
    with pytest.raises(ValueError, match=r"no column\(s\) \['prompt'\]"):
        users_from_attributes(rated.remove_columns("prompt"), ["helpfulness"])
    with pytest.raises(ValueError, match=r"no column\(s\) \['response_c'\]"):
        users_from_attributes(rated, ["helpfulness"], response_columns=("response_a", "response_c"))


def test_no_attribute_raises(rated):
    with pytest.raises(ValueError, match="at least one attribute"):
        users_from_attributes(rated, [])


def test_scores_must_be_pairs():
    ds = Dataset.from_dict({"prompt": ["q"], "response_a": ["a"], "response_b": ["b"], "x": [[1, 2, 3]]})
    with pytest.raises(ValueError, match="two numbers"):
        users_from_attributes(ds, ["x"])
