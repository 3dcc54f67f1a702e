# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""From a dataset of preference pairs to a dataset of episodes (one row per episode), with embedding-table indices.

The pairs may already be tokenized by TRL (`chosen_ids`, ...): the token columns named by the trainer are carried
into each episode as lists, one entry per target pair. Contexts are stored as indices into a
[`ContextEmbeddingStore`], which embeds each distinct text once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from datasets import Dataset

from .embeddings import ContextEmbeddingStore, pair_text
from .episodes import (
    build_eval_episodes,
    build_train_episodes,
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
) -> Dataset:
    """One row per episode (see `fssa_trl.data.episodes`): training episodes (context inside the targets) when
    `training`, else evaluation episodes (context disjoint from the targets, one set per size in
    `eval_context_sizes`). Token columns present in `dataset` are carried per target; `user` names the user."""
    rows_by_user = group_rows_by_user(dataset[user_column])
    if training:
        episodes, skipped = build_train_episodes(
            rows_by_user, num_targets, min_context, max_context, too_few_pairs, episode_passes, seed
        )
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
    columns = {c: dataset[c] for c in token_columns if c in dataset.column_names}
    rows: dict[str, list[Any]] = {c: [] for c in ["user", *columns, *EPISODE_COLUMNS]}
    for episode in episodes:
        rows["user"].append(episode.user)
        for column, values in columns.items():
            rows[column].append([values[i] for i in episode.target_rows])
        rows["target_in_context"].append(episode.target_in_context)
        rows["chosen_embedding_index"].append([chosen_index[i] for i in episode.target_rows])
        rows["rejected_embedding_index"].append([rejected_index[i] for i in episode.target_rows])
        rows["context_chosen_embedding_index"].append([chosen_index[i] for i in episode.context_rows])
        rows["context_rejected_embedding_index"].append([rejected_index[i] for i in episode.context_rows])
    logger.info("Built %d %s episodes from %d users", len(episodes), dataset_name, len(rows_by_user) - len(skipped))
    return Dataset.from_dict(rows)
