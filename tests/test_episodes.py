# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Episodes: training contexts are subsets of the targets, evaluation contexts are disjoint from them; training
episodes redrawn every epoch."""

from collections import Counter

import pytest
import torch
from accelerate.data_loader import prepare_data_loader, skip_first_batches
from datasets import Dataset
from torch.utils.data import DataLoader

from fssa_trl.data import ContextEmbeddingStore
from fssa_trl.data.episode_dataset import RedrawnEpisodes, RedrawnEpisodeSampler, build_episode_dataset
from fssa_trl.data.episodes import (
    build_eval_episodes,
    build_train_episodes,
    epoch_seed,
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


# ---------------------------------------------------------------------------------------------- redrawn episodes
def pair_dataset(rows_by_user, dim=4):
    """Pairs with distinct precomputed embeddings (store index of pair r's chosen response: r) and a token column."""
    rows = sorted((r, user) for user, user_rows in rows_by_user.items() for r in user_rows)
    g = torch.Generator().manual_seed(0)
    return Dataset.from_dict(
        {
            "user_id": [user for _, user in rows],
            "chosen_embedding": torch.randn(len(rows), dim, generator=g).tolist(),
            "rejected_embedding": torch.randn(len(rows), dim, generator=g).tolist(),
            "chosen_ids": [[r, r] for r, _ in rows],
        }
    )


def episode_datasets(pairs, redraw, seed=0, **kwargs):
    args = dict(
        training=True,
        user_column="user_id",
        num_targets=8,
        min_context=0,
        max_context=5,
        eval_context_sizes=[0],
        too_few_pairs="skip",
        episode_passes=1,
        seed=seed,
        token_columns=("chosen_ids", "margin"),
    )
    args.update(kwargs)
    return build_episode_dataset(pairs, ContextEmbeddingStore(), "train", redraw=redraw, **args)


def pair_rows(row):
    """Dataset rows of the targets of an episode row (carried `chosen_ids` are [r, r])."""
    return [ids[0] for ids in row["chosen_ids"]]


def test_redrawn_epoch_zero_is_the_episodes_drawn_once(rows_by_user):
    pairs = pair_dataset(rows_by_user)
    once = episode_datasets(pairs, redraw=False)
    redrawn = episode_datasets(pairs, redraw=True)
    assert isinstance(once, Dataset) and isinstance(redrawn, RedrawnEpisodes)
    assert len(redrawn) == len(once)
    assert redrawn.dataset(0).to_dict() == once.to_dict()
    assert [redrawn[i] for i in range(len(once))] == once.to_list()


def test_redrawn_episodes_differ_between_epochs_and_depend_on_seed_and_epoch_only(rows_by_user):
    pairs = pair_dataset(rows_by_user)
    redrawn = episode_datasets(pairs, redraw=True)
    epochs = [redrawn.episodes(epoch) for epoch in range(4)]
    for a in range(4):
        for b in range(a + 1, 4):
            assert epochs[a] != epochs[b]
    # Another object, epochs visited in another order (as a resumed run or a DataLoader worker does): same episodes.
    again = episode_datasets(pairs, redraw=True)
    for epoch in (3, 1, 0, 2):
        assert again.episodes(epoch) == epochs[epoch]
    assert episode_datasets(pairs, redraw=True, seed=1).episodes(2) != epochs[2]
    assert epoch_seed(0, 0) == 0 and epoch_seed(0, 1) not in (0, 1, 2) and epoch_seed(0, 1) != epoch_seed(1, 1)
    # Index e * N + i is episode i of epoch e, with the targets' token columns and store indices carried.
    n = len(redrawn)
    row = redrawn[2 * n + 5]
    episode = epochs[2][5]
    assert row["user"] == episode.user and pair_rows(row) == episode.target_rows
    assert row["chosen_embedding_index"] == episode.target_rows
    assert row["rejected_embedding_index"] == [len(pairs) + r for r in episode.target_rows]
    assert row["context_chosen_embedding_index"] == episode.context_rows
    assert row["target_in_context"] == episode.target_in_context and "margin" not in row


def test_every_redrawn_epoch_covers_each_users_pairs_as_a_pass_does(rows_by_user):
    pairs = pair_dataset(rows_by_user)
    redrawn = episode_datasets(pairs, redraw=True, episode_passes=2)
    n = len(redrawn)
    sizes = Counter()
    for epoch in range(5):
        rows = [redrawn[epoch * n + i] for i in range(n)]
        for user, user_rows in rows_by_user.items():
            targets = Counter(r for row in rows if row["user"] == user for r in pair_rows(row))
            assert set(targets) == set(user_rows)  # every pair, in each of the 2 passes (top-ups aside)
            assert min(targets.values()) >= 2
        for row in rows:
            context = row["context_chosen_embedding_index"]
            assert set(context) <= set(row["chosen_embedding_index"]) and len(context) <= 5
            sizes[len(context)] += 1
    assert set(sizes) == set(range(6))


def test_redrawn_episodes_apply_too_few_pairs_every_epoch(rows_by_user):
    rows = {**rows_by_user, "carol": [85, 86, 87]}
    pairs = pair_dataset(rows)
    skipped = episode_datasets(pairs, redraw=True)
    replaced = episode_datasets(pairs, redraw=True, too_few_pairs="replace")
    assert len(replaced) == len(skipped) + 1
    for epoch in range(3):
        assert "carol" not in {e.user for e in skipped.episodes(epoch)}
        carol = [e for e in replaced.episodes(epoch) if e.user == "carol"]
        assert len(carol) == 1 and set(carol[0].target_rows) <= {85, 86, 87}
    with pytest.raises(ValueError, match="'carol' has 3 preference pairs"):
        episode_datasets(pairs, redraw=True, too_few_pairs="error")


def test_redrawn_episode_sampler_indexes_the_epoch_it_is_set_to():
    sampler = RedrawnEpisodeSampler(10, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(10))
    # The order accelerate's seedable sampler gives the episodes drawn once (seed + epoch)
    assert first == torch.randperm(10, generator=torch.Generator().manual_seed(3)).tolist()
    sampler.set_epoch(2)
    third = list(sampler)
    assert sorted(third) == list(range(20, 30)) and third == list(sampler)
    assert [i - 20 for i in third] != first
    assert list(RedrawnEpisodeSampler(10, seed=3, shuffle=False)) == list(range(10))


@pytest.mark.parametrize("processes", [1, 2])
def test_redrawn_epoch_reaches_every_shard_also_when_resumed(processes):
    """What `NPTrainerMixin.get_train_dataloader` relies on: after `set_sampler`, accelerate's `set_epoch` reaches the
    sampler behind a `BatchSamplerShard` and the `SkipBatchSampler` of a resumed epoch (without, 2 processes resumed
    at epoch 0's indices)."""

    def shard(process_index, skip):
        sampler = RedrawnEpisodeSampler(16, seed=0)
        loader = prepare_data_loader(
            DataLoader(range(100), batch_size=2, sampler=sampler),
            num_processes=processes,
            process_index=process_index,
            put_on_device=False,
        )
        loader.set_sampler(getattr(loader.batch_sampler, "batch_sampler", loader.batch_sampler).sampler)
        loader = skip_first_batches(loader, skip) if skip else loader
        loader.set_epoch(2)
        return [int(i) for batch in loader for i in batch]

    full = [shard(p, 0) for p in range(processes)]
    assert sorted(i for part in full for i in part) == list(range(32, 48))
    for p in range(processes):
        assert shard(p, 1) == full[p][2:]
