# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""The in-code preference tasks of `fssa_trl.testing_utils` hold the properties the learning tests rely on."""

from itertools import combinations

import pytest

from fssa_trl.testing_utils import EIGHT_USERS, style_preference_dataset, word_tokenizer


def test_eight_users_split_every_pair_of_styles_evenly():
    """A context-free model cannot beat 50% on the eight users: for every pair of styles, half prefer each."""
    for x, y in combinations("abcd", 2):
        prefer_x = sum(ranking.index(x) < ranking.index(y) for ranking in EIGHT_USERS.values())
        assert prefer_x == 4, (x, y)


def test_ranked_users_choose_their_higher_ranked_style():
    data = style_preference_dataset(50, users=EIGHT_USERS, signal_fraction=0.25, response_words=(8, 12))
    tokenizer = word_tokenizer(styles=("a", "b", "c", "d"), neutral=True)
    for row in data:
        ranking = EIGHT_USERS[row["user_id"]]
        chosen = {w[0] for w in row["chosen"].split()} - {"n"}
        rejected = {w[0] for w in row["rejected"].split()} - {"n"}
        assert len(chosen) == len(rejected) == 1 and ranking.index(*chosen) < ranking.index(*rejected)
        assert tokenizer.unk_token_id not in tokenizer(row["chosen"] + " " + row["rejected"]).input_ids


@pytest.mark.parametrize("ranking", ["", "aa"])
def test_style_rankings_must_be_distinct_styles(ranking):
    with pytest.raises(ValueError, match=r"`users\['A'\]` must rank distinct one-letter styles"):
        style_preference_dataset(2, users={"A": ranking, "B": "b"})
