# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""The data path at scale (issue 9): validation, episodes, the held-out split and the embedding indices work on
Arrow columns and NumPy arrays, and give exactly what the row-by-row implementation gave (commit cd172d4, copied
below as `old_*`) for the same inputs and seed: the learning and exact-resume tests depend on those trajectories."""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import random
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pytest
import torch
from datasets import Dataset, IterableDataset, List, Value, concatenate_datasets

from fssa_trl import NPEmbeddingRewardConfig, NPEmbeddingRewardTrainer
from fssa_trl.data.embeddings import ContextEmbeddingStore, pair_text
from fssa_trl.data.episode_dataset import (
    EPISODE_COLUMNS,
    RedrawnEpisodes,
    RedrawnEpisodeSampler,
    add_text_keys,
    build_episode_dataset,
    embedding_indices,
    split_heldout,
)
from fssa_trl.data.episodes import (
    Episode,
    build_eval_episodes,
    build_train_episodes,
    epoch_seed,
    group_rows_by_user,
    log_skipped,
    split_heldout_rows,
)
from fssa_trl.data.validation import EMBEDDING_COLUMNS, TEXT_KEY_COLUMNS, check_preference_dataset

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------------------
# The row-by-row implementation of commit cd172d4, verbatim but for the `old_` names and without docstrings.
# ------------------------------------------------------------------------------------------------------------------
def _old_is_empty(value) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == ""
    if isinstance(value, list):  # conversational: no message, or only empty contents
        return len(value) == 0 or all(_old_is_empty(m.get("content") if isinstance(m, dict) else m) for m in value)
    return False


def old_check_preference_dataset(
    dataset,
    dataset_name: str,
    user_column: str,
    precomputed_embeddings: bool,
    text_required: bool = True,
) -> None:
    if isinstance(dataset, IterableDataset):
        raise ValueError(
            f"The {dataset_name} dataset is an IterableDataset: few-shot episodes group each user's pairs, which needs "
            "random access. Load it without `streaming=True`."
        )
    columns = set(dataset.column_names)
    if user_column not in columns:
        raise ValueError(
            f"The {dataset_name} dataset has no user column {user_column!r} (columns: {sorted(columns)}). Add one, or "
            "set `user_column` to the column that names the user behind each pair; for a dataset that rates several "
            "attributes per pair, use `fssa_trl.users_from_attributes`."
        )
    has_text = {"chosen", "rejected"} <= columns
    has_ids = {"chosen_ids", "rejected_ids"} <= columns
    if text_required and not has_text and not (has_ids and precomputed_embeddings):
        missing = [c for c in ("chosen", "rejected") if c not in columns]
        raise ValueError(
            f"The {dataset_name} dataset is missing the column(s) {missing}: a preference dataset needs 'chosen' and "
            f"'rejected' (and optionally 'prompt'), as in TRL (columns: {sorted(columns)})."
        )
    for column in ("prompt", "chosen", "rejected"):
        if column in columns:
            for row, value in enumerate(dataset[column]):
                if _old_is_empty(value):
                    raise ValueError(
                        f"Row {row} of the {dataset_name} dataset has an empty {column!r}. Remove empty rows first, "
                        f"e.g. `dataset.filter(lambda x: x[{column!r}].strip() != '')`."
                    )
    if precomputed_embeddings:
        _old_check_embedding_columns(dataset, dataset_name, columns)
    for column in TEXT_KEY_COLUMNS:
        if column in columns:
            raise ValueError(f"Column {column!r} of the {dataset_name} dataset is reserved by fssa_trl; rename it.")


def _old_check_embedding_columns(dataset, dataset_name: str, columns: set[str]) -> None:
    for column in EMBEDDING_COLUMNS:
        if column not in columns:
            raise ValueError(
                f"`context_embedding='precomputed'` needs the float-list column {column!r} in the {dataset_name} "
                "dataset. Add it, or set `context_embedding` to 'base' or an encoder name to embed the text."
            )
    lengths = {len(v) for column in EMBEDDING_COLUMNS for v in dataset[column]}
    if len(lengths) != 1:
        raise ValueError(
            f"Embedding dimension mismatch in the {dataset_name} dataset: 'chosen_embedding'/'rejected_embedding' "
            f"vectors have lengths {sorted(lengths)}. Every embedding must come from one model, with one dimension."
        )
    # datasets >= 4 returns a lazy `Column` for `dataset[name]`, which has no `+`: concatenate as lists.
    vectors = torch.tensor(
        list(dataset[EMBEDDING_COLUMNS[0]]) + list(dataset[EMBEDDING_COLUMNS[1]]), dtype=torch.float32
    )
    if not torch.isfinite(vectors).all():
        row = int((~torch.isfinite(vectors)).any(-1).nonzero()[0]) % len(dataset)
        raise ValueError(
            f"The {dataset_name} dataset has NaN or infinite values in 'chosen_embedding'/'rejected_embedding' "
            f"(first at row {row}). Fix or drop those rows."
        )


def old_group_rows_by_user(users: Iterable[Any]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for row, user in enumerate(users):
        groups[str(user)].append(row)
    return dict(groups)


def _old_handle_too_few(user: str, have: int, need: int, policy: str, what: str) -> bool:
    if policy == "error":
        raise ValueError(
            f"User {user!r} has {have} preference pairs but {need} are needed for {what}. Set "
            "`too_few_pairs='skip'` to drop such users or `too_few_pairs='replace'` to sample their pairs with "
            "replacement, or lower `num_targets` / `max_context` / `eval_context_sizes`."
        )
    return policy == "replace" and have > 0


def _old_balanced_sizes(low: int, high: int, rng: random.Random) -> Iterator[int]:
    while True:
        block = list(range(low, high + 1))
        rng.shuffle(block)
        yield from block


def old_build_train_episodes(
    rows_by_user: dict[str, list[int]],
    num_targets: int,
    min_context: int,
    max_context: int,
    too_few_pairs: str = "skip",
    num_passes: int = 1,
    seed: int = 0,
) -> tuple[list[Episode], list[str]]:
    rng = random.Random(seed)
    episodes, skipped = [], []
    for user, rows in rows_by_user.items():
        if len(rows) < num_targets and not _old_handle_too_few(
            user, len(rows), num_targets, too_few_pairs, "one episode"
        ):
            skipped.append(user)
            continue
        context_sizes = _old_balanced_sizes(min_context, max_context, rng)
        for _ in range(num_passes):
            if len(rows) < num_targets:  # "replace": sample with replacement
                chunks = [[rng.choice(rows) for _ in range(num_targets)]]
            else:
                order = rows[:]
                rng.shuffle(order)
                chunks = [order[i : i + num_targets] for i in range(0, len(order), num_targets)]
                if len(chunks[-1]) < num_targets:  # top up from this user's other pairs
                    last = set(chunks[-1])
                    rest = [r for r in rows if r not in last]
                    chunks[-1] += rng.sample(rest, num_targets - len(chunks[-1]))
            for targets in chunks:
                size = next(context_sizes)
                in_context = sorted(rng.sample(range(num_targets), size))
                flags = [False] * num_targets
                for position in in_context:
                    flags[position] = True
                episodes.append(Episode(user, targets, [targets[p] for p in in_context], flags))
    return episodes, skipped


def old_build_eval_episodes(
    rows_by_user: dict[str, list[int]],
    context_sizes: Sequence[int],
    num_targets: int,
    too_few_pairs: str = "skip",
    seed: int = 0,
) -> tuple[list[Episode], list[str]]:
    rng = random.Random(seed)
    largest = max(context_sizes)
    episodes, skipped = [], []
    for user, rows in rows_by_user.items():
        replace = len(rows) < largest + 1
        if replace:
            keep = _old_handle_too_few(user, len(rows), largest + 1, too_few_pairs, f"{largest} unseen context pairs")
            if not keep or len(rows) < 2:  # even with replacement, unseen context needs one pair besides the target
                skipped.append(user)
                continue
        for size in context_sizes:
            order = rows[:]
            rng.shuffle(order)
            chunk = max(1, min(num_targets, len(rows) - (1 if replace else size)))
            for start in range(0, len(order), chunk):
                targets = order[start : start + chunk]
                taken = set(targets)
                others = [r for r in rows if r not in taken]
                if replace:
                    context = [rng.choice(others) for _ in range(size)]
                else:
                    context = rng.sample(others, size)
                episodes.append(Episode(user, targets, context, [False] * len(targets)))
    return episodes, skipped


def old_split_heldout_rows(
    rows_by_user: dict[str, list[int]],
    fraction: float,
    min_pairs: int,
    max_pairs: int,
    min_left: int,
    seed: int = 0,
) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    rng = random.Random(seed)
    kept, heldout = {}, {}
    for user, rows in rows_by_user.items():
        count = min(max(math.ceil(fraction * len(rows)), min_pairs), max_pairs)
        if len(rows) - count < min_left:
            kept[user] = rows
            continue
        chosen = set(rng.sample(rows, count))
        kept[user] = [r for r in rows if r not in chosen]
        heldout[user] = [r for r in rows if r in chosen]
    return kept, heldout


def old_add_text_keys(dataset: Dataset, tokenizer=None) -> Dataset:
    if "chosen" not in dataset.column_names or TEXT_KEY_COLUMNS[0] in dataset.column_names:
        return dataset

    def keys(example):
        prompt = example.get("prompt")
        return {
            TEXT_KEY_COLUMNS[0]: pair_text(prompt, example["chosen"], tokenizer),
            TEXT_KEY_COLUMNS[1]: pair_text(prompt, example["rejected"], tokenizer),
        }

    return dataset.map(keys, desc="Keeping context texts")


def old_embedding_indices(dataset: Dataset, store: ContextEmbeddingStore, dataset_name: str) -> tuple[list, list]:
    if store.embedder is not None:
        return store.add_texts(dataset[TEXT_KEY_COLUMNS[0]]), store.add_texts(dataset[TEXT_KEY_COLUMNS[1]])
    chosen = torch.tensor(dataset[EMBEDDING_COLUMNS[0]], dtype=torch.float32)
    rejected = torch.tensor(dataset[EMBEDDING_COLUMNS[1]], dtype=torch.float32)
    if chosen.dim() != 2 or chosen.shape != rejected.shape:
        raise ValueError(
            f"'chosen_embedding' and 'rejected_embedding' of the {dataset_name} dataset must be float lists of one "
            f"length, got shapes {tuple(chosen.shape)} and {tuple(rejected.shape)}."
        )
    if store.dim is not None and chosen.shape[-1] != store.dim:
        raise ValueError(
            f"Embedding dimension mismatch: the {dataset_name} dataset's embeddings have dimension {chosen.shape[-1]} "
            f"but earlier embeddings (and the latent encoder) use {store.dim}. Use one embedding model for all datasets."
        )
    return store.add_vectors(chosen), store.add_vectors(rejected)


def old_split_heldout(
    dataset: Dataset,
    user_column: str,
    fraction: float,
    min_pairs: int,
    max_pairs: int,
    min_left: int,
    seed: int,
) -> tuple[Dataset, Dataset | None]:
    kept, heldout = old_split_heldout_rows(
        old_group_rows_by_user(dataset[user_column]), fraction, min_pairs, max_pairs, min_left, seed
    )
    if not heldout:
        logger.warning(
            "No user has enough preference pairs for a held-out split (%d held out plus %d left for training): "
            "training without held-out evaluation. Pass an `eval_dataset`, or set `heldout_fraction=0` to silence this.",
            min_pairs,
            min_left,
        )
        return dataset, None
    held = sorted(row for rows in heldout.values() for row in rows)
    logger.info("Held out %d pairs of %d of %d users for evaluation", len(held), len(heldout), len(kept))
    return dataset.select(sorted(row for rows in kept.values() for row in rows)), dataset.select(held)


def old_episode_row(episode: Episode, targets: Mapping[str, list], chosen_index, rejected_index) -> dict[str, Any]:
    return {
        "user": episode.user,
        **targets,
        "target_in_context": episode.target_in_context,
        "chosen_embedding_index": [int(chosen_index[i]) for i in episode.target_rows],
        "rejected_embedding_index": [int(rejected_index[i]) for i in episode.target_rows],
        "context_chosen_embedding_index": [int(chosen_index[i]) for i in episode.context_rows],
        "context_rejected_embedding_index": [int(rejected_index[i]) for i in episode.context_rows],
    }


def old_build_episode_dataset(
    dataset: Dataset,
    store: ContextEmbeddingStore,
    dataset_name: str,
    *,
    training: bool,
    user_column: str,
    num_targets: int,
    min_context: int,
    max_context: int,
    eval_context_sizes: Sequence[int],
    too_few_pairs: str,
    episode_passes: int,
    seed: int,
    token_columns: Sequence[str] = (),
    redraw: bool = False,
) -> Dataset | old_RedrawnEpisodes:
    rows_by_user = old_group_rows_by_user(dataset[user_column])
    if training:
        draw = functools.partial(
            old_build_train_episodes,
            rows_by_user,
            num_targets,
            min_context,
            max_context,
            too_few_pairs,
            episode_passes,
        )
        episodes, skipped = draw(seed=seed)
    else:
        episodes, skipped = old_build_eval_episodes(rows_by_user, eval_context_sizes, num_targets, too_few_pairs, seed)
    log_skipped(skipped, rows_by_user, dataset_name)
    if not episodes:
        raise ValueError(
            f"No user of the {dataset_name} dataset has enough preference pairs for one episode (num_targets="
            f"{num_targets}, max_context={max_context}, eval_context_sizes={list(eval_context_sizes)}). Lower these, or "
            "set `too_few_pairs='replace'`."
        )
    chosen_index, rejected_index = old_embedding_indices(dataset, store, dataset_name)
    logger.info("Built %d %s episodes from %d users", len(episodes), dataset_name, len(rows_by_user) - len(skipped))
    if training and redraw:
        pairs = dataset.select_columns([c for c in token_columns if c in dataset.column_names])
        return old_RedrawnEpisodes(pairs, chosen_index, rejected_index, draw, seed, episodes)
    columns = {c: dataset[c] for c in token_columns if c in dataset.column_names}
    rows: dict[str, list[Any]] = {c: [] for c in ["user", *columns, *EPISODE_COLUMNS]}
    for episode in episodes:
        targets = {column: [values[i] for i in episode.target_rows] for column, values in columns.items()}
        for column, value in old_episode_row(episode, targets, chosen_index, rejected_index).items():
            rows[column].append(value)
    return Dataset.from_dict(rows)


class old_RedrawnEpisodes(torch.utils.data.Dataset):
    def __init__(self, pairs: Dataset, chosen_index, rejected_index, draw, seed: int, first_epoch=None):
        self.pairs = pairs
        self.chosen_index = np.asarray(chosen_index, dtype=np.int64)
        self.rejected_index = np.asarray(rejected_index, dtype=np.int64)
        self._draw, self.seed = draw, seed
        self._epoch, self._episodes = 0, first_epoch if first_epoch is not None else draw(seed=seed)[0]
        self.num_episodes = len(self._episodes)

    def __len__(self) -> int:
        return self.num_episodes

    def episodes(self, epoch: int) -> list[Episode]:
        if epoch != self._epoch:
            episodes = self._draw(seed=epoch_seed(self.seed, epoch))[0]
            if len(episodes) != self.num_episodes:  # the count depends on the users' pair counts only
                raise RuntimeError(f"Epoch {epoch} drew {len(episodes)} episodes, epoch 0 {self.num_episodes}.")
            self._epoch, self._episodes = epoch, episodes
        return self._episodes

    def __getitem__(self, index: int) -> dict[str, Any]:
        epoch, position = divmod(int(index), self.num_episodes)
        episode = self.episodes(epoch)[position]
        targets = self.pairs[episode.target_rows] if self.pairs.column_names else {}
        return old_episode_row(episode, targets, self.chosen_index, self.rejected_index)

    def dataset(self, epoch: int) -> Dataset:
        offset = epoch * self.num_episodes
        return Dataset.from_list([self[offset + i] for i in range(self.num_episodes)])

    def sampler(self, seed: int, shuffle: bool = True) -> RedrawnEpisodeSampler:
        return RedrawnEpisodeSampler(self.num_episodes, seed, shuffle)


# ------------------------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------------------------
# Pairs per user: fewer than any num_targets, around it, several episodes' worth.
PAIR_COUNTS = (1, 2, 3, 5, 8, 9, 12, 17, 40)


def preference_data(
    seed: int = 0, dim: int = 4, counts=PAIR_COUNTS, text: bool = False, tokens: bool = False, int_users: bool = False
) -> dict[str, list]:
    """Users with `counts` pairs, rows interleaved at random; precomputed embeddings (some vectors repeated, so the
    store deduplicates), or texts (some repeated) when `text`; `chosen_ids` / `margin` token columns with `tokens`."""
    rng = np.random.default_rng(seed)
    users = rng.permutation(np.repeat(np.arange(len(counts)), counts))
    rows = len(users)
    data: dict[str, list] = {"user_id": [int(u) if int_users else f"user{u}" for u in users]}
    if text:
        words = ["alpha", "beta", "gamma", "delta", "eps"]
        data["prompt"] = [f"Q{rng.integers(6)}: " for _ in range(rows)]
        data["chosen"] = [" ".join(rng.choice(words, 2)) for _ in range(rows)]
        data["rejected"] = [" ".join(rng.choice(words, 3)) for _ in range(rows)]
    else:
        chosen = rng.standard_normal((rows, dim))
        rejected = rng.standard_normal((rows, dim))
        rejected[::7] = chosen[::7]  # a rejected response that another pair chose
        chosen[1::5] = chosen[0]
        data["chosen_embedding"], data["rejected_embedding"] = chosen.tolist(), rejected.tolist()
    if tokens:
        data["chosen_ids"] = [[r, r + 1] for r in range(rows)]
        data["margin"] = rng.random(rows).tolist()
    return data


class HashEmbedder:
    """Stands in for a TextEmbedder: a text's vector is a function of its bytes. Records every `embed` call."""

    name, fingerprint = "hash", "hash"

    def __init__(self):
        self.calls = []

    def embed(self, texts):
        self.calls.append(list(texts))
        return torch.tensor([[b / 255 for b in hashlib.sha1(t.encode()).digest()[:3]] for t in texts])


def datasets_to_compare() -> dict[str, Dataset]:
    """Datasets of every form the path reads: float64 and float32 embeddings, integer users, token columns, and row
    orders through an indices mapping (shuffle, select), a slice, or columns of several Arrow chunks."""
    base = Dataset.from_dict(preference_data(tokens=True))
    vector = List(Value("float32"))
    return {
        "float64": base,
        "float32": base.cast_column("chosen_embedding", vector).cast_column("rejected_embedding", vector),
        "int users": Dataset.from_dict(preference_data(seed=1, int_users=True)),
        "shuffled": base.shuffle(seed=3),
        "selected": base.select([i for i in range(len(base)) if i % 4 != 1]),
        "sliced": base.select(range(5, len(base) - 3)),
        "chunked": concatenate_datasets(
            [base.select(range(30)), base.select(range(30, 60)), base.select(range(60, 97))]
        ),
    }


def store_for(dataset: Dataset) -> ContextEmbeddingStore:
    return (
        ContextEmbeddingStore(HashEmbedder())
        if TEXT_KEY_COLUMNS[0] in dataset.column_names
        else ContextEmbeddingStore()
    )


def text_dataset(seed=0, **kwargs) -> Dataset:
    return old_add_text_keys(Dataset.from_dict(preference_data(seed, text=True, **kwargs)))


TRAIN_SETTINGS = [
    dict(num_targets=8, min_context=0, max_context=5, too_few_pairs="skip", episode_passes=1),
    dict(num_targets=5, min_context=2, max_context=5, too_few_pairs="replace", episode_passes=3),
    dict(num_targets=3, min_context=0, max_context=0, too_few_pairs="skip", episode_passes=2),
    dict(num_targets=8, min_context=8, max_context=8, too_few_pairs="replace", episode_passes=1),
]
EVAL_SETTINGS = [
    dict(eval_context_sizes=[0, 3, 10], num_targets=8, too_few_pairs="skip"),
    dict(eval_context_sizes=[0, 1, 5], num_targets=4, too_few_pairs="replace"),
    dict(eval_context_sizes=[16], num_targets=16, too_few_pairs="replace"),
    dict(eval_context_sizes=[2], num_targets=1, too_few_pairs="skip"),
]


def episode_args(training: bool, setting: dict, seed: int) -> dict[str, Any]:
    args = dict(
        training=training,
        user_column="user_id",
        num_targets=8,
        min_context=0,
        max_context=4,
        eval_context_sizes=[0, 4],
        too_few_pairs="skip",
        episode_passes=1,
        seed=seed,
        token_columns=("chosen_ids", "margin", "absent"),
    )
    args.update(setting)
    return args


def assert_same_rows(new, old):
    assert new.column_names == old.column_names
    assert new.to_list() == old.to_list()


# ------------------------------------------------------------------------------------------------------------------
# Episodes, from rows per user
# ------------------------------------------------------------------------------------------------------------------
def rows_by_user_cases() -> list[dict[str, list[int]]]:
    rng = random.Random(0)
    scattered = list(range(300))
    rng.shuffle(scattered)  # row lists in no particular order (the order is what the draws index)
    cases, start = [], 0
    grouped = {}
    for i, n in enumerate(PAIR_COUNTS):
        grouped[f"u{i}"] = scattered[start : start + n]
        start += n
    cases.append(grouped)
    cases.append({"alice": list(range(37)), "bob": list(range(37, 85)), "carol": [100, 101, 102], "dave": [200]})
    return cases


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("setting", TRAIN_SETTINGS)
def test_train_episodes_are_those_of_the_row_by_row_draws(setting, seed):
    for rows_by_user in rows_by_user_cases():
        args = (setting["num_targets"], setting["min_context"], setting["max_context"], setting["too_few_pairs"])
        new = build_train_episodes(rows_by_user, *args, num_passes=setting["episode_passes"], seed=seed)
        old = old_build_train_episodes(rows_by_user, *args, num_passes=setting["episode_passes"], seed=seed)
        assert new == old


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("setting", EVAL_SETTINGS)
def test_eval_episodes_are_those_of_the_row_by_row_draws(setting, seed):
    for rows_by_user in rows_by_user_cases():
        args = (setting["eval_context_sizes"], setting["num_targets"], setting["too_few_pairs"])
        assert build_eval_episodes(rows_by_user, *args, seed=seed) == old_build_eval_episodes(
            rows_by_user, *args, seed=seed
        )


@pytest.mark.parametrize("kind", ["train", "eval"])
def test_too_few_pairs_error_is_the_same(kind):
    rows_by_user = rows_by_user_cases()[1]
    if kind == "train":
        new, old = (
            functools.partial(build_train_episodes, rows_by_user, 8, 0, 4, "error"),
            functools.partial(old_build_train_episodes, rows_by_user, 8, 0, 4, "error"),
        )
    else:
        new, old = (
            functools.partial(build_eval_episodes, rows_by_user, [0, 5], 8, "error"),
            functools.partial(old_build_eval_episodes, rows_by_user, [0, 5], 8, "error"),
        )
    with pytest.raises(ValueError) as expected:
        old()
    with pytest.raises(ValueError, match="'carol' has 3 preference pairs.*too_few_pairs") as got:
        new()
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize(
    ("fraction", "min_pairs", "max_pairs", "min_left", "seed"),
    [(0.1, 5, 8, 8, 0), (0.3, 3, 64, 4, 1), (0.5, 0, 2, 1, 2), (0.0, 0, 4, 2, 3), (0.9, 11, 64, 8, 4)],
)
def test_heldout_rows_are_those_of_the_row_by_row_split(fraction, min_pairs, max_pairs, min_left, seed):
    for rows_by_user in rows_by_user_cases():
        args = (fraction, min_pairs, max_pairs, min_left, seed)
        assert split_heldout_rows(rows_by_user, *args) == old_split_heldout_rows(rows_by_user, *args)


def test_users_are_grouped_as_strings_in_order_of_first_appearance():
    import pyarrow as pa

    for users in ([3, "b", 3, "3", "b"], ["x", None, "None", "x"], [2.0, 1, 2.0], []):
        assert group_rows_by_user(users) == old_group_rows_by_user(users)
    for users in ([3, 1, 3, 2], ["b", None, "a", "None", "b"], [1.5, 2.0, 1.5], [True, False, True]):
        assert group_rows_by_user(pa.array(users)) == old_group_rows_by_user(users)
    chunked = pa.chunked_array([["u2", "u1"], ["u1", "u3", "u2"]])
    assert group_rows_by_user(chunked) == old_group_rows_by_user(chunked.to_pylist())


# ------------------------------------------------------------------------------------------------------------------
# Episode datasets, held-out split, embedding indices
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 5])
@pytest.mark.parametrize("setting", TRAIN_SETTINGS)
def test_train_episode_dataset_is_the_row_by_row_one(setting, seed):
    for name, dataset in {**datasets_to_compare(), "text": text_dataset()}.items():
        new_store, old_store = store_for(dataset), store_for(dataset)
        new = build_episode_dataset(dataset, new_store, "train", **episode_args(True, setting, seed))
        old = old_build_episode_dataset(dataset, old_store, "train", **episode_args(True, setting, seed))
        assert_same_rows(new, old), name
        assert torch.equal(new_store.table, old_store.table), name


@pytest.mark.parametrize("setting", EVAL_SETTINGS)
def test_eval_episode_dataset_is_the_row_by_row_one(setting):
    for name, dataset in {**datasets_to_compare(), "text": text_dataset()}.items():
        new_store, old_store = store_for(dataset), store_for(dataset)
        new = build_episode_dataset(dataset, new_store, "eval", **episode_args(False, setting, 3))
        old = old_build_episode_dataset(dataset, old_store, "eval", **episode_args(False, setting, 3))
        assert_same_rows(new, old), name
        assert torch.equal(new_store.table, old_store.table), name


@pytest.mark.parametrize("setting", TRAIN_SETTINGS[:2])
def test_redrawn_epochs_are_the_row_by_row_ones(setting):
    dataset = datasets_to_compare()["shuffled"]
    new = build_episode_dataset(
        dataset, ContextEmbeddingStore(), "train", redraw=True, **episode_args(True, setting, 2)
    )
    old = old_build_episode_dataset(
        dataset, ContextEmbeddingStore(), "train", redraw=True, **episode_args(True, setting, 2)
    )
    assert isinstance(new, RedrawnEpisodes) and len(new) == len(old)
    n = len(new)
    for epoch in (0, 2, 1):
        assert new.episodes(epoch) == old.episodes(epoch)
        assert [new[epoch * n + i] for i in range(n)] == [old[epoch * n + i] for i in range(n)]
    assert new.dataset(3).to_list() == old.dataset(3).to_list()


def test_too_few_pairs_and_no_episodes_errors_are_the_same():
    dataset = datasets_to_compare()["float64"]
    for setting in (dict(too_few_pairs="error"), dict(num_targets=41, max_context=4)):
        with pytest.raises(ValueError) as expected:
            old_build_episode_dataset(dataset, ContextEmbeddingStore(), "train", **episode_args(True, setting, 0))
        with pytest.raises(ValueError) as got:
            build_episode_dataset(dataset, ContextEmbeddingStore(), "train", **episode_args(True, setting, 0))
        assert str(got.value) == str(expected.value)


@pytest.mark.parametrize(
    ("fraction", "min_pairs", "max_pairs", "min_left"), [(0.1, 5, 8, 8), (0.3, 3, 64, 4), (0.2, 30, 64, 30)]
)
def test_heldout_split_is_the_row_by_row_one(fraction, min_pairs, max_pairs, min_left, caplog):
    for name, dataset in datasets_to_compare().items():
        new = split_heldout(dataset, "user_id", fraction, min_pairs, max_pairs, min_left, seed=4)
        old = old_split_heldout(dataset, "user_id", fraction, min_pairs, max_pairs, min_left, seed=4)
        if old[1] is None:
            assert new[1] is None and new[0] is dataset, name
        else:
            assert_same_rows(new[0], old[0]), name
            assert_same_rows(new[1], old[1]), name


def test_embedding_indices_are_the_row_by_row_ones():
    for name, dataset in {**datasets_to_compare(), "text": text_dataset()}.items():
        new_store, old_store = store_for(dataset), store_for(dataset)
        for part in (dataset.select(range(20)), dataset):  # the second call finds most vectors in the store
            new, old = embedding_indices(part, new_store, "train"), old_embedding_indices(part, old_store, "train")
            assert [np.asarray(x).tolist() for x in new] == [list(x) for x in old], name
            assert torch.equal(new_store.table, old_store.table), name
        if new_store.embedder is not None:  # texts reach the embedder as before: in the same calls, in one order
            assert new_store.embedder.calls == old_store.embedder.calls


def test_embedding_dimension_mismatch_with_the_store_is_the_same_error():
    dataset = datasets_to_compare()["float64"]
    new_store, old_store = ContextEmbeddingStore(), ContextEmbeddingStore()
    new_store.add_vectors(torch.ones(1, 3)), old_store.add_vectors(torch.ones(1, 3))
    with pytest.raises(ValueError) as expected:
        old_embedding_indices(dataset, old_store, "eval")
    with pytest.raises(ValueError, match="Embedding dimension mismatch") as got:
        embedding_indices(dataset, new_store, "eval")
    assert str(got.value) == str(expected.value)


def test_text_keys_are_the_row_by_row_ones():
    with_none = preference_data(text=True)
    with_none["prompt"][3] = None
    conversations = {
        "user_id": ["a", "b"],
        "prompt": [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "yo"}]],
        "chosen": [[{"role": "assistant", "content": "x"}], [{"role": "assistant", "content": "y"}]],
        "rejected": [[{"role": "assistant", "content": "z"}], [{"role": "assistant", "content": "w"}]],
    }
    no_prompt = {k: v for k, v in preference_data(text=True).items() if k != "prompt"}
    for data in (with_none, no_prompt, conversations):
        dataset = Dataset.from_dict(data)
        assert_same_rows(add_text_keys(dataset), old_add_text_keys(dataset))
    dataset = Dataset.from_dict(preference_data(text=True))
    views = (
        dict(type="torch", columns=["user_id"]),
        dict(type="numpy"),
        dict(columns=["chosen"], output_all_columns=True),
    )
    for view in views:  # the same view of the dataset: format and the columns it shows (`None` shows every one)
        new, old = add_text_keys(dataset.with_format(**view)), old_add_text_keys(dataset.with_format(**view))
        for keyed in (new, old):
            keyed.shown = (keyed.format["type"], keyed.format["output_all_columns"])
            keyed.shown += (set(keyed.format["columns"] or keyed.column_names),)
        assert new.shown == old.shown


# ------------------------------------------------------------------------------------------------------------------
# Whole trainer: held-out split, episodes redrawn, store
# ------------------------------------------------------------------------------------------------------------------
def test_trainer_data_is_the_row_by_row_one(tmp_path):
    dataset = Dataset.from_dict(preference_data(seed=2, counts=(12, 30, 25, 40, 9, 16)))
    args = NPEmbeddingRewardConfig(
        output_dir=str(tmp_path),
        context_embedding="precomputed",
        num_targets=8,
        max_context=4,
        heldout_fraction=0.2,
        redraw_episodes=True,
        report_to="none",
        use_cpu=True,
        max_steps=1,
        seed=3,
    )
    trainer = NPEmbeddingRewardTrainer(args=args, train_dataset=dataset)
    store = ContextEmbeddingStore()
    kept, heldout = old_split_heldout(dataset, "user_id", 0.2, 5, args.heldout_max_pairs_per_user, 8, 3)
    common = dict(user_column="user_id", num_targets=8, min_context=0, max_context=4, too_few_pairs="skip")
    common.update(episode_passes=1, seed=3, token_columns=("margin",))
    old_heldout = old_build_episode_dataset(
        heldout, store, "heldout", training=False, eval_context_sizes=[0, 4], **common
    )
    old_train = old_build_episode_dataset(
        kept, store, "train", training=True, eval_context_sizes=args.eval_context_sizes, redraw=True, **common
    )
    assert_same_rows(trainer.heldout_dataset, old_heldout)
    n = len(old_train)
    assert [trainer.train_dataset[i] for i in range(2 * n)] == [old_train[i] for i in range(2 * n)]
    assert torch.equal(trainer._store.table, store.table)


def test_each_dataset_is_checked_once(tmp_path, monkeypatch):
    import fssa_trl.trainer.np_trainer_mixin as mixin

    calls = []
    monkeypatch.setattr(mixin, "check_preference_dataset", lambda dataset, name, *a: calls.append(name))
    data = preference_data(counts=(20, 20))
    args = NPEmbeddingRewardConfig(
        output_dir=str(tmp_path), context_embedding="precomputed", num_targets=8, max_context=4, report_to="none"
    )
    NPEmbeddingRewardTrainer(args=args, train_dataset=Dataset.from_dict(data), eval_dataset=Dataset.from_dict(data))
    assert calls == ["train", "eval"]


def test_no_row_is_read_as_a_python_object(monkeypatch):
    """Validation, episodes, the held-out split and the embedding indices read whole columns (Arrow, NumPy): no row
    is formatted, so a million rows cost no million Python objects."""
    raw_text = Dataset.from_dict(preference_data(text=True))
    keyed_text = old_add_text_keys(raw_text)  # made before rows are forbidden
    datasets = datasets_to_compare()

    def forbidden(*args, **kwargs):
        raise AssertionError("a dataset was read row by row")

    for method in ("__getitem__", "__getitems__", "__iter__", "to_list", "to_dict", "iter"):
        monkeypatch.setattr(Dataset, method, forbidden)
    check_preference_dataset(raw_text, "train", "user_id", False)
    for dataset in datasets.values():
        check_preference_dataset(dataset, "train", "user_id", True, text_required=False)
    for dataset in [*datasets.values(), keyed_text]:
        for training in (True, False):
            build_episode_dataset(dataset, store_for(dataset), "x", **episode_args(training, {}, 0))
        split_heldout(dataset, "user_id", 0.3, 3, 64, 4, seed=0)


# ------------------------------------------------------------------------------------------------------------------
# Validation: the same errors, found without reading rows one by one
# ------------------------------------------------------------------------------------------------------------------
def _with(data: dict, column: str, row: int, value) -> dict:
    values = list(data[column])
    values[row] = value
    return {**data, column: values}


def bad_datasets() -> dict[str, tuple[Any, bool]]:
    """(dataset, precomputed) pairs that the row-by-row check rejected with a ValueError."""
    text = preference_data(text=True)
    vectors = preference_data()
    chat = {
        "user_id": ["a", "a", "b", "b"],
        "chosen": [[{"role": "assistant", "content": c}] for c in ("x", "y", "z", "w")],
        "rejected": [[{"role": "assistant", "content": c}] for c in ("x", "y", "z", "w")],
    }
    nan_first_in_rejected = _with(vectors, "rejected_embedding", 2, [float("nan")] * 4)
    return {
        "iterable": (Dataset.from_dict(text).to_iterable_dataset(), False),
        "no user column": (Dataset.from_dict(text).remove_columns("user_id"), False),
        "no chosen": (Dataset.from_dict(text).remove_columns("chosen"), False),
        "blank prompt": (Dataset.from_dict(_with(text, "prompt", 7, "  ")), False),
        "empty chosen": (Dataset.from_dict(_with(text, "chosen", 3, "")), False),
        "None rejected": (Dataset.from_dict(_with(text, "rejected", 5, None)), False),
        "unicode blank": (Dataset.from_dict(_with(text, "chosen", 9, "\u3000\x1c\n")), False),
        "blank, shuffled": (Dataset.from_dict(_with(text, "prompt", 7, " ")).shuffle(seed=1), False),
        "blank, sliced": (Dataset.from_dict(_with(text, "prompt", 9, " ")).select(range(4, 40)), False),
        "blank message": (Dataset.from_dict(_with(chat, "chosen", 2, [{"role": "assistant", "content": " "}])), False),
        "no message": (Dataset.from_dict(_with(chat, "rejected", 1, [])), False),
        "None content": (Dataset.from_dict(_with(chat, "chosen", 3, [{"role": "assistant", "content": None}])), False),
        "no rejected_embedding": (Dataset.from_dict(vectors).remove_columns("rejected_embedding"), True),
        "ragged": (Dataset.from_dict(_with(vectors, "chosen_embedding", 3, [1.0, 2.0, 3.0])), True),
        "nan": (Dataset.from_dict(_with(vectors, "rejected_embedding", 4, [0.0, float("nan"), 0.0, 0.0])), True),
        "inf in chosen after nan in rejected": (
            Dataset.from_dict(_with(nan_first_in_rejected, "chosen_embedding", 6, [float("inf")] * 4)),
            True,
        ),
        "reserved column": (
            Dataset.from_dict({**vectors, TEXT_KEY_COLUMNS[0]: ["x"] * len(vectors["user_id"])}),
            True,
        ),
    }


@pytest.mark.parametrize("case", list(bad_datasets()))
def test_bad_data_raises_the_row_by_row_error(case):
    dataset, precomputed = bad_datasets()[case]
    text_required = not precomputed
    with pytest.raises(ValueError) as expected:
        old_check_preference_dataset(dataset, "train", "user_id", precomputed, text_required)
    with pytest.raises(ValueError) as got:
        check_preference_dataset(dataset, "train", "user_id", precomputed, text_required)
    # The first sentence (what is wrong, and where) is the row-by-row check's; issue 10 made the fixes after it runnable
    # for every format and added the rows' details.
    assert str(got.value).split(". ")[0] == str(expected.value).split(". ")[0]


def test_good_data_passes():
    for dataset in datasets_to_compare().values():
        check_preference_dataset(dataset, "train", "user_id", True, text_required=False)
    check_preference_dataset(Dataset.from_dict(preference_data(text=True)), "train", "user_id", False)
    zero_width = Dataset.from_dict(_with(preference_data(text=True), "chosen", 2, "\u200b"))  # not whitespace
    check_preference_dataset(zero_width, "train", "user_id", False)


def test_missing_embeddings_raise_a_clear_error():
    """The row-by-row check raised a TypeError for a None vector or value; now a ValueError names the row."""
    vectors = preference_data()
    with pytest.raises(ValueError, match="Row 3 of the train dataset has no 'chosen_embedding'"):
        check_preference_dataset(
            Dataset.from_dict(_with(vectors, "chosen_embedding", 3, None)), "train", "user_id", True, False
        )
    with pytest.raises(ValueError, match=r"Row 5 of the train dataset has a missing value \(None\) in 'rejected_emb"):
        check_preference_dataset(
            Dataset.from_dict(_with(vectors, "rejected_embedding", 5, [0.0, None, 1.0, 2.0])),
            "train",
            "user_id",
            True,
            False,
        )


def test_blank_strings_are_found_as_python_strips_them():
    """Arrow's whitespace and Python's `str.strip` agree on every code point."""
    import pyarrow as pa

    from fssa_trl.data.validation import empty_rows

    strings = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF] + ["", " a ", " \u3000\x1f", None]
    expected = [_old_is_empty(s) for s in strings]
    assert empty_rows(pa.chunked_array([pa.array(strings)])).tolist() == expected
