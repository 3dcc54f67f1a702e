# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Episodes: training contexts are subsets of the targets, evaluation contexts are disjoint from them."""

from collections import Counter

import pytest

from fssa_trl.data.episodes import (
    build_eval_episodes,
    build_train_episodes,
    group_rows_by_user,
)


@pytest.fixture
def rows_by_user():
    # 37 is not a multiple of num_targets (the last chunk is topped up), 48 is.
    return {"alice": list(range(37)), "bob": list(range(37, 85))}


def by_user(episodes):
    grouped = {}
    for episode in episodes:
        grouped.setdefault(episode.user, []).append(episode)
    return grouped


def test_group_rows_by_user_keeps_order_and_compares_as_strings():
    assert group_rows_by_user([3, "b", 3, "3", "b"]) == {"3": [0, 2, 3], "b": [1, 4]}


# --------------------------------------------------------------------------------------------------------- training
def test_train_episodes_have_num_targets_and_context_subset(rows_by_user):
    episodes, skipped = build_train_episodes(rows_by_user, num_targets=12, min_context=2, max_context=7, seed=1)
    assert skipped == []
    assert episodes
    for episode in episodes:
        assert len(episode.target_rows) == 12
        assert len(set(episode.target_rows)) == 12  # no pair twice in one episode
        assert set(episode.target_rows) <= set(rows_by_user[episode.user])
        assert 2 <= len(episode.context_rows) <= 7
        assert set(episode.context_rows) <= set(episode.target_rows)
        # The flags mark exactly the targets that are in the context.
        assert len(episode.target_in_context) == 12
        flagged = [row for row, flag in zip(episode.target_rows, episode.target_in_context, strict=True) if flag]
        assert flagged == episode.context_rows


def test_train_context_sizes_cover_the_range_including_zero(rows_by_user):
    episodes, _ = build_train_episodes(rows_by_user, num_targets=8, min_context=0, max_context=5, num_passes=30)
    sizes = Counter(len(e.context_rows) for e in episodes)
    assert set(sizes) == set(range(6))
    # Roughly uniform: 330 draws over 6 sizes, each expected 55 times.
    assert min(sizes.values()) > 25


def test_every_pair_appears_in_every_pass(rows_by_user):
    num_targets, passes = 10, 3
    episodes, _ = build_train_episodes(rows_by_user, num_targets, 0, 4, num_passes=passes, seed=3)
    for user, user_episodes in by_user(episodes).items():
        rows = rows_by_user[user]
        per_pass = -(-len(rows) // num_targets)
        assert len(user_episodes) == passes * per_pass
        for p in range(passes):
            in_pass = [r for e in user_episodes[p * per_pass : (p + 1) * per_pass] for r in e.target_rows]
            assert set(in_pass) == set(rows)


def test_train_episodes_are_deterministic_for_a_seed(rows_by_user):
    first, _ = build_train_episodes(rows_by_user, 8, 0, 5, num_passes=2, seed=7)
    again, _ = build_train_episodes(rows_by_user, 8, 0, 5, num_passes=2, seed=7)
    other, _ = build_train_episodes(rows_by_user, 8, 0, 5, num_passes=2, seed=8)
    assert first == again
    assert first != other


# ------------------------------------------------------------------------------------------------------- evaluation
def test_eval_context_is_disjoint_and_each_pair_is_scored_once_per_context_size(rows_by_user):
    sizes = [0, 1, 3, 10]
    episodes, skipped = build_eval_episodes(rows_by_user, sizes, num_targets=8, seed=2)
    assert skipped == []
    for user, user_episodes in by_user(episodes).items():
        rows = rows_by_user[user]
        assert {len(e.context_rows) for e in user_episodes} == set(sizes)
        for size in sizes:
            scored = Counter(r for e in user_episodes if len(e.context_rows) == size for r in e.target_rows)
            assert scored == Counter(rows)  # every pair exactly once
        for episode in user_episodes:
            assert 1 <= len(episode.target_rows) <= 8
            assert not set(episode.context_rows) & set(episode.target_rows)
            assert set(episode.context_rows) <= set(rows)
            assert len(set(episode.context_rows)) == len(episode.context_rows)  # no replacement when not needed
            assert episode.target_in_context == [False] * len(episode.target_rows)


def test_eval_context_size_is_exactly_as_requested():
    rows = {"u": list(range(12))}
    for size in (0, 2, 11):  # 11: every other pair of the user is context
        episodes, _ = build_eval_episodes(rows, [size], num_targets=16)
        assert {len(e.context_rows) for e in episodes} == {size}
        assert Counter(r for e in episodes for r in e.target_rows) == Counter(rows["u"])


def test_eval_episodes_are_deterministic_for_a_seed(rows_by_user):
    first, _ = build_eval_episodes(rows_by_user, [0, 3], 8, seed=4)
    assert first == build_eval_episodes(rows_by_user, [0, 3], 8, seed=4)[0]
    assert first != build_eval_episodes(rows_by_user, [0, 3], 8, seed=5)[0]


# ---------------------------------------------------------------------------------------------- too few pairs
def test_train_too_few_pairs_skip(rows_by_user):
    rows = {**rows_by_user, "carol": [100, 101, 102]}
    episodes, skipped = build_train_episodes(rows, 8, 0, 4, too_few_pairs="skip")
    assert skipped == ["carol"]
    assert {e.user for e in episodes} == {"alice", "bob"}


def test_train_too_few_pairs_replace(rows_by_user):
    rows = {**rows_by_user, "carol": [100, 101, 102]}
    episodes, skipped = build_train_episodes(rows, 8, 0, 4, too_few_pairs="replace", num_passes=2)
    assert skipped == []
    carol = by_user(episodes)["carol"]
    assert len(carol) == 2
    for episode in carol:
        assert len(episode.target_rows) == 8
        assert set(episode.target_rows) <= {100, 101, 102}  # sampled with replacement
        assert set(episode.context_rows) <= set(episode.target_rows)


def test_train_too_few_pairs_error(rows_by_user):
    rows = {**rows_by_user, "carol": [100, 101, 102]}
    with pytest.raises(ValueError, match=r"'carol' has 3 preference pairs.*too_few_pairs"):
        build_train_episodes(rows, 8, 0, 4, too_few_pairs="error")


def test_eval_too_few_pairs_skip(rows_by_user):
    rows = {**rows_by_user, "carol": [100, 101, 102]}
    episodes, skipped = build_eval_episodes(rows, [0, 5], 8, too_few_pairs="skip")
    assert skipped == ["carol"]
    assert {e.user for e in episodes} == {"alice", "bob"}


def test_eval_too_few_pairs_replace_keeps_contexts_unseen(rows_by_user):
    rows = {**rows_by_user, "carol": [100, 101, 102], "dave": [200]}
    episodes, skipped = build_eval_episodes(rows, [0, 5], 8, too_few_pairs="replace")
    assert skipped == ["dave"]  # one pair: no unseen context is possible, even with replacement
    carol = by_user(episodes)["carol"]
    assert {len(e.context_rows) for e in carol} == {0, 5}
    for size in (0, 5):
        scored = Counter(r for e in carol if len(e.context_rows) == size for r in e.target_rows)
        assert scored == Counter([100, 101, 102])
    for episode in carol:
        assert not set(episode.context_rows) & set(episode.target_rows)
        assert set(episode.context_rows) <= {100, 101, 102}


def test_eval_too_few_pairs_error(rows_by_user):
    rows = {**rows_by_user, "carol": [100, 101, 102]}
    with pytest.raises(ValueError, match=r"'carol' has 3 preference pairs.*too_few_pairs"):
        build_eval_episodes(rows, [0, 5], 8, too_few_pairs="error")
