# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""From a dataset of preference pairs to a dataset of episodes (one row per episode), with embedding-table indices.

The pairs may already be tokenized by TRL (`chosen_ids`, ...): the token columns named by the trainer are carried
into each episode as lists, one entry per target pair. Contexts are stored as indices into a
[`ContextEmbeddingStore`], which embeds each distinct text once.

Training episodes are either built once ([`build_episode_dataset`]: a `datasets.Dataset`, the same every epoch) or
redrawn every epoch ([`RedrawnEpisodes`] with its [`RedrawnEpisodeSampler`]).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from torch.utils.data import Sampler

from .embeddings import ContextEmbeddingStore, pair_text
from .episodes import (
    Episode,
    build_eval_episodes,
    build_train_episodes,
    epoch_seed,
    group_rows_by_user,
    log_skipped,
    split_heldout_rows,
)
from .validation import EMBEDDING_COLUMNS, TEXT_KEY_COLUMNS

logger = logging.getLogger(__name__)

EPISODE_COLUMNS = (
    "target_in_context",
    "chosen_embedding_index",
    "rejected_embedding_index",
    "context_chosen_embedding_index",
    "context_rejected_embedding_index",
)


def add_text_keys(dataset: Dataset, tokenizer=None) -> Dataset:
    """Keep the raw (prompt, response) texts to embed, before TRL's preparation appends EOS to them."""
    if "chosen" not in dataset.column_names or TEXT_KEY_COLUMNS[0] in dataset.column_names:
        return dataset

    def keys(example):
        prompt = example.get("prompt")
        return {
            TEXT_KEY_COLUMNS[0]: pair_text(prompt, example["chosen"], tokenizer),
            TEXT_KEY_COLUMNS[1]: pair_text(prompt, example["rejected"], tokenizer),
        }

    return dataset.map(keys, desc="Keeping context texts")


def embedding_indices(dataset: Dataset, store: ContextEmbeddingStore, dataset_name: str) -> tuple[list, list]:
    """Row indices into the store of every pair's chosen and rejected embedding: the precomputed columns when the
    store has no embedder, else the texts kept by [`add_text_keys`] (each embedded once)."""
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


def split_heldout(
    dataset: Dataset,
    user_column: str,
    fraction: float,
    min_pairs: int,
    max_pairs: int,
    min_left: int,
    seed: int,
) -> tuple[Dataset, Dataset | None]:
    """The pairs of `dataset` kept for training and the held-out pairs (`None` when no user has enough pairs), split
    per user by [`split_heldout_rows`]; both keep the dataset's row order and columns."""
    kept, heldout = split_heldout_rows(
        group_rows_by_user(dataset[user_column]), fraction, min_pairs, max_pairs, min_left, seed
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


def episode_row(episode: Episode, targets: Mapping[str, list], chosen_index, rejected_index) -> dict[str, Any]:
    """One episode as a dataset row: `user`, the per-target values of the token columns (`targets`, already taken at
    the episode's target rows), then [`EPISODE_COLUMNS`] (store indices of every target and context pair, from the
    per-pair `chosen_index` / `rejected_index`, lists or arrays)."""
    return {
        "user": episode.user,
        **targets,
        "target_in_context": episode.target_in_context,
        "chosen_embedding_index": [int(chosen_index[i]) for i in episode.target_rows],
        "rejected_embedding_index": [int(rejected_index[i]) for i in episode.target_rows],
        "context_chosen_embedding_index": [int(chosen_index[i]) for i in episode.context_rows],
        "context_rejected_embedding_index": [int(rejected_index[i]) for i in episode.context_rows],
    }


def build_episode_dataset(
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
) -> Dataset | RedrawnEpisodes:
    """One row per episode (see `fssa_trl.data.episodes`): training episodes (context inside the targets) when
    `training`, else evaluation episodes (context disjoint from the targets, one set per size in
    `eval_context_sizes`). Token columns present in `dataset` are carried per target; `user` names the user.

    With `redraw` (training only), the training episodes are a [`RedrawnEpisodes`], drawn anew every epoch; its epoch 0
    holds the rows returned without `redraw`."""
    rows_by_user = group_rows_by_user(dataset[user_column])
    if training:
        draw = functools.partial(
            build_train_episodes, rows_by_user, num_targets, min_context, max_context, too_few_pairs, episode_passes
        )
        episodes, skipped = draw(seed=seed)
    else:
        episodes, skipped = build_eval_episodes(rows_by_user, eval_context_sizes, num_targets, too_few_pairs, seed)
    log_skipped(skipped, rows_by_user, dataset_name)
    if not episodes:
        raise ValueError(
            f"No user of the {dataset_name} dataset has enough preference pairs for one episode (num_targets="
            f"{num_targets}, max_context={max_context}, eval_context_sizes={list(eval_context_sizes)}). Lower these, or "
            "set `too_few_pairs='replace'`."
        )
    chosen_index, rejected_index = embedding_indices(dataset, store, dataset_name)
    logger.info("Built %d %s episodes from %d users", len(episodes), dataset_name, len(rows_by_user) - len(skipped))
    if training and redraw:
        pairs = dataset.select_columns([c for c in token_columns if c in dataset.column_names])
        return RedrawnEpisodes(pairs, chosen_index, rejected_index, draw, seed, episodes)
    columns = {c: dataset[c] for c in token_columns if c in dataset.column_names}
    rows: dict[str, list[Any]] = {c: [] for c in ["user", *columns, *EPISODE_COLUMNS]}
    for episode in episodes:
        targets = {column: [values[i] for i in episode.target_rows] for column, values in columns.items()}
        for column, value in episode_row(episode, targets, chosen_index, rejected_index).items():
            rows[column].append(value)
    return Dataset.from_dict(rows)


class RedrawnEpisodes(torch.utils.data.Dataset):
    """Training episodes drawn anew every epoch: new target groups, context sizes and context subsets, as many
    episodes per epoch (so the Trainer's steps per epoch do not change), each epoch covering every user's pairs as
    [`build_train_episodes`] does. Epoch e's episodes are a function of (`seed`, e) only ([`epoch_seed`]); epoch 0's are
    those built without redrawing.

    Index `e * len(self) + i` is episode i of epoch e (rows as [`build_episode_dataset`]'s): the epoch travels with the
    index, which [`RedrawnEpisodeSampler`] yields, so the dataset keeps no epoch state that the DataLoader (or its
    worker processes) would have to be told about. An epoch's episodes are drawn when first indexed and only the latest
    epoch's are kept; pairs stay in `pairs` (Arrow), the token columns of an episode's targets are read per episode.

    Args:
        pairs (`datasets.Dataset`): the training pairs' token columns to carry per target (possibly none).
        chosen_index, rejected_index (`list[int]`): store index of each pair's chosen and rejected embedding.
        draw (`Callable[..., tuple[list[Episode], list[str]]]`): [`build_train_episodes`] with every argument but
            `seed` bound.
        seed (`int`): the run's seed.
        first_epoch (`list[Episode]`, *optional*): epoch 0's episodes, if already drawn.
    """

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
        """The episodes of `epoch`, drawn from `epoch_seed(seed, epoch)`."""
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
        return episode_row(episode, targets, self.chosen_index, self.rejected_index)

    def dataset(self, epoch: int) -> Dataset:
        """The episodes of `epoch` as a `datasets.Dataset` (for inspection; training indexes this object)."""
        offset = epoch * self.num_episodes
        return Dataset.from_list([self[offset + i] for i in range(self.num_episodes)])

    def sampler(self, seed: int, shuffle: bool = True) -> RedrawnEpisodeSampler:
        return RedrawnEpisodeSampler(self.num_episodes, seed, shuffle)


class RedrawnEpisodeSampler(Sampler[int]):
    """Indices of a [`RedrawnEpisodes`] for the epoch last set by `set_epoch` (the Trainer sets it before every epoch,
    including the one it resumes in): `epoch * num_episodes + i`, every episode i once, shuffled from `seed + epoch`
    as accelerate's `SeedableRandomSampler` shuffles (epoch 0 thus sees the episodes in the order it would without
    redrawing). The order depends on (`seed`, epoch) only, so every process draws the same one (accelerate's
    `BatchSamplerShard` then gives each process its share) and a resumed run skips the batches it had consumed.
    """

    def __init__(self, num_episodes: int, seed: int, shuffle: bool = True):
        self.num_episodes, self.seed, self.shuffle = num_episodes, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_episodes

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_episodes, generator=generator).tolist()
        else:
            order = range(self.num_episodes)
        offset = self.epoch * self.num_episodes
        return iter([offset + i for i in order])
