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
import hashlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets import Dataset
from torch.utils.data import Sampler

from .embeddings import ContextEmbeddingStore, VectorTable, pair_text
from .episodes import (
    Episode,
    EpisodeArrays,
    UserRows,
    draw_eval_episodes,
    draw_train_episodes,
    dropped_pairs_message,
    epoch_seed,
    heldout_mask,
    log_dropped,
    log_skipped,
)
from .validation import EMBEDDING_COLUMNS, TEXT_KEY_COLUMNS, arrow_column, embedding_blocks
from .validation import EPISODE_COLUMNS as EPISODE_COLUMNS  # defined with the other reserved column names

logger = logging.getLogger(__name__)


def is_episode_dataset(dataset) -> bool:
    """Whether `dataset` already holds episodes (every column of [`EPISODE_COLUMNS`]), not raw pairs. A raw dataset
    with only some of them is refused by the checks (reserved column names)."""
    return set(EPISODE_COLUMNS) <= set(dataset.column_names)


def _is_text(dataset: Dataset, column: str) -> bool:
    kind = dataset.data.schema.field(column).type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def add_text_keys(dataset: Dataset, tokenizer=None) -> Dataset:
    """Keep the raw (prompt, response) texts to embed, before TRL's preparation appends EOS to them."""
    if "chosen" not in dataset.column_names or TEXT_KEY_COLUMNS[0] in dataset.column_names:
        return dataset
    columns = [c for c in ("prompt", "chosen", "rejected") if c in dataset.column_names]
    if all(_is_text(dataset, c) for c in columns):  # plain strings: `pair_text` is `(prompt or "") + response`
        return _concatenated_text_keys(dataset)

    def keys(example):
        prompt = example.get("prompt")
        return {
            TEXT_KEY_COLUMNS[0]: pair_text(prompt, example["chosen"], tokenizer),
            TEXT_KEY_COLUMNS[1]: pair_text(prompt, example["rejected"], tokenizer),
        }

    return dataset.map(keys, desc="Keeping context texts")


def _concatenated_text_keys(dataset: Dataset) -> Dataset:
    """[`add_text_keys`] of plain-string columns, concatenated in Arrow batch by batch."""

    def keys(batch: pa.Table) -> pa.Table:  # the whole batch: `map` takes a returned Arrow table as the new rows
        # One string type for the join: `string` and `large_string` columns (e.g. Parquet written by polars) mix.
        prompt = pc.fill_null(batch["prompt"], "").cast(pa.large_string()) if "prompt" in batch.column_names else None
        for key, column in zip(TEXT_KEY_COLUMNS, ("chosen", "rejected"), strict=True):
            response = batch[column].cast(pa.large_string())
            text = (
                response
                if prompt is None
                else pc.binary_join_element_wise(prompt, response, pa.scalar("", pa.large_string()))
            )
            batch = batch.append_column(key, text)
        return batch

    view = dataset.format
    keyed = dataset.with_format("arrow").map(keys, batched=True, desc="Keeping context texts")
    columns = None if view["columns"] is None else [*view["columns"], *TEXT_KEY_COLUMNS]  # as `map` extends them
    return keyed.with_format(view["type"], columns, view["output_all_columns"], **view["format_kwargs"])


def _text_indices(store: ContextEmbeddingStore, texts: pa.ChunkedArray) -> np.ndarray:
    """Store row of every text: the distinct texts, in order of first appearance, go to the store (which embeds
    those it has not seen), then every row takes its text's index."""
    distinct = pc.unique(texts)
    codes = pc.index_in(texts, value_set=distinct).combine_chunks().to_numpy(zero_copy_only=False)
    return np.asarray(store.add_texts(distinct.to_pylist()), dtype=np.int64)[codes]


def embedding_indices(
    dataset: Dataset, store: ContextEmbeddingStore, dataset_name: str
) -> tuple[np.ndarray, np.ndarray]:
    """`(N,)` int64 row indices into the store of every pair's chosen and rejected embedding: the precomputed columns
    when the store has no embedder, else the texts kept by [`add_text_keys`] (each embedded once)."""
    if store.embedder is not None:
        return _text_indices(store, arrow_column(dataset, TEXT_KEY_COLUMNS[0])), _text_indices(
            store, arrow_column(dataset, TEXT_KEY_COLUMNS[1])
        )
    # 2N vectors, chosen rows then rejected rows, as views of the Arrow chunks: with distinct vectors they join the
    # store's table as they are, so the collator reads them from the dataset's (memory-mapped) pages.
    vectors = VectorTable(embedding_blocks(dataset, EMBEDDING_COLUMNS, dataset_name))
    if store.dim is not None and vectors.dim is not None and vectors.dim != store.dim:
        raise ValueError(
            f"Embedding dimension mismatch: the {dataset_name} dataset's embeddings have dimension {vectors.dim} "
            f"but earlier embeddings (and the latent encoder) use {store.dim}. Use one embedding model for all datasets."
        )
    indices = store.vector_indices(vectors)
    return indices[: len(dataset)], indices[len(dataset) :]


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
    groups = UserRows.from_column(arrow_column(dataset, user_column))
    held, holds = heldout_mask(groups, fraction, min_pairs, max_pairs, min_left, seed)
    if not holds.any():
        logger.warning(
            "No user has enough preference pairs for a held-out split (%d held out plus %d left for training): "
            "training without held-out evaluation. Pass an `eval_dataset`, or set `heldout_fraction=0` to silence this.",
            min_pairs,
            min_left,
        )
        return dataset, None
    heldout_rows = np.sort(groups.rows[held])
    logger.info("Held out %d pairs of %d of %d users for evaluation", len(heldout_rows), holds.sum(), len(groups))
    return dataset.select(np.sort(groups.rows[~held])), dataset.select(heldout_rows)


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


def _lists(offsets: np.ndarray, values: pa.Array) -> pa.Array:
    """A list array: list i holds `values[offsets[i]:offsets[i + 1]]`."""
    if offsets[-1] < 2**31:
        return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)
    return pa.LargeListArray.from_arrays(pa.array(offsets), values)


def episodes_as_dataset(
    episodes: EpisodeArrays, columns: Mapping[str, pa.ChunkedArray], chosen_index, rejected_index, source: str = ""
) -> Dataset:
    """The episodes as a `datasets.Dataset`, one row per episode as [`episode_row`] gives it: built in Arrow, the
    token `columns` (of the pairs, in dataset order) taken at the target rows. `source` enters the fingerprint."""
    chosen_index, rejected_index = np.asarray(chosen_index), np.asarray(rejected_index)
    targets = pa.array(episodes.targets)
    table = {"user": pa.array(episodes.users, pa.string()).take(pa.array(episodes.user))}
    for name, column in columns.items():
        table[name] = _lists(episodes.target_offsets, column.take(targets).combine_chunks())
    table["target_in_context"] = _lists(episodes.target_offsets, pa.array(episodes.target_in_context))
    for name, index, rows, offsets in (
        ("chosen_embedding_index", chosen_index, episodes.targets, episodes.target_offsets),
        ("rejected_embedding_index", rejected_index, episodes.targets, episodes.target_offsets),
        ("context_chosen_embedding_index", chosen_index, episodes.contexts, episodes.context_offsets),
        ("context_rejected_embedding_index", rejected_index, episodes.contexts, episodes.context_offsets),
    ):
        table[name] = _lists(offsets, pa.array(index[rows].astype(np.int64, copy=False)))
    # Our own fingerprint: `datasets` would otherwise hash the whole table.
    digest = hashlib.sha256(source.encode())
    arrays = (episodes.targets, episodes.target_offsets, episodes.contexts, episodes.context_offsets)
    for array in (*arrays, chosen_index, rejected_index):
        digest.update(memoryview(np.ascontiguousarray(array)))
    digest.update(repr(sorted(columns)).encode())
    return Dataset(pa.table(table), fingerprint=digest.hexdigest()[:16])


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
    dropped: dict[str, Any] | None = None,
) -> Dataset | RedrawnEpisodes:
    """One row per episode (see `fssa_trl.data.episodes`): training episodes (context inside the targets) when
    `training`, else evaluation episodes (context disjoint from the targets, one set per size in
    `eval_context_sizes`). Token columns present in `dataset` are carried per target; `user` names the user.

    With `redraw` (training only), the training episodes are a [`RedrawnEpisodes`], drawn anew every epoch; its epoch 0
    holds the rows returned without `redraw`.

    `dropped` (a trainer's `np_dropped[dataset_name]`) may hold the pairs removed from `dataset` before, by reason
    ([`DROP_REASONS`]); the users skipped for too few pairs are added to it (`users_too_few_pairs`,
    `pairs_of_skipped_users`) and everything left out is logged in one warning ([`log_dropped`]), which the errors
    for too few pairs also mention. Without it, skipped users are logged alone ([`log_skipped`])."""
    groups = UserRows.from_column(arrow_column(dataset, user_column))
    removed = "" if dropped is None else dropped_pairs_message(dropped, dataset_name)
    try:
        if training:
            draw = functools.partial(
                draw_train_episodes, groups, num_targets, min_context, max_context, too_few_pairs, episode_passes
            )
            episodes, skipped = draw(seed=seed)
        else:
            episodes, skipped = draw_eval_episodes(groups, eval_context_sizes, num_targets, too_few_pairs, seed)
    except ValueError as error:  # too_few_pairs="error": say if pairs were removed before
        if not removed:
            raise
        raise ValueError(f"{error} ({removed})") from error
    if dropped is None:
        log_skipped(skipped, groups, dataset_name)
    else:
        pairs = dict(zip(groups.users, groups.counts.tolist(), strict=True))
        dropped["users_too_few_pairs"] = list(skipped)
        dropped["pairs_of_skipped_users"] = sum(pairs[user] for user in skipped)
        log_dropped(dropped, len(groups), dataset_name)
    if not len(episodes):
        raise ValueError(
            f"No user of the {dataset_name} dataset has enough preference pairs for one episode (num_targets="
            f"{num_targets}, max_context={max_context}, eval_context_sizes={list(eval_context_sizes)}). Lower these, or "
            "set `too_few_pairs='replace'`." + (f" ({removed})" if removed else "")
        )
    chosen_index, rejected_index = embedding_indices(dataset, store, dataset_name)
    logger.info("Built %d %s episodes from %d users", len(episodes), dataset_name, len(groups) - len(skipped))
    carried = [c for c in token_columns if c in dataset.column_names]
    if training and redraw:
        return RedrawnEpisodes(dataset.select_columns(carried), chosen_index, rejected_index, draw, seed, episodes)
    columns = {c: arrow_column(dataset, c) for c in carried}
    source = f"{getattr(dataset, '_fingerprint', '')}/{dataset_name}/{seed}"
    return episodes_as_dataset(episodes, columns, chosen_index, rejected_index, source)


class RedrawnEpisodes(torch.utils.data.Dataset):
    """Training episodes drawn anew every epoch: new target groups, context sizes and context subsets, as many
    episodes per epoch (so the Trainer's steps per epoch do not change), each epoch covering every user's pairs as
    [`build_train_episodes`] does. Epoch e's episodes are a function of (`seed`, e) only ([`epoch_seed`]); epoch 0's are
    those built without redrawing.

    Index `e * len(self) + i` is episode i of epoch e (rows as [`build_episode_dataset`]'s): the epoch travels with the
    index, which [`RedrawnEpisodeSampler`] yields, so the dataset keeps no epoch state that the DataLoader (or its
    worker processes) would have to be told about. An epoch's episodes are drawn when first indexed and only the latest
    epoch's are kept (as arrays); pairs stay in `pairs` (Arrow), the token columns of an episode's targets are read per
    episode.

    Args:
        pairs (`datasets.Dataset`): the training pairs' token columns to carry per target (possibly none).
        chosen_index, rejected_index (`np.ndarray`): store index of each pair's chosen and rejected embedding.
        draw (`Callable[..., tuple[EpisodeArrays, list[str]]]`): [`draw_train_episodes`] with every argument but
            `seed` bound.
        seed (`int`): the run's seed.
        first_epoch ([`EpisodeArrays`], *optional*): epoch 0's episodes, if already drawn.
    """

    def __init__(self, pairs: Dataset, chosen_index, rejected_index, draw, seed: int, first_epoch=None):
        self.pairs = pairs
        self.chosen_index = np.asarray(chosen_index, dtype=np.int64)
        self.rejected_index = np.asarray(rejected_index, dtype=np.int64)
        self._draw, self.seed = draw, seed
        self._epoch, self._arrays = 0, first_epoch if first_epoch is not None else draw(seed=seed)[0]
        self.num_episodes = len(self._arrays)

    def __len__(self) -> int:
        return self.num_episodes

    def arrays(self, epoch: int) -> EpisodeArrays:
        """The episodes of `epoch`, drawn from `epoch_seed(seed, epoch)`, as arrays."""
        if epoch != self._epoch:
            drawn = self._draw(seed=epoch_seed(self.seed, epoch))[0]
            if len(drawn) != self.num_episodes:  # the count depends on the users' pair counts only
                raise RuntimeError(f"Epoch {epoch} drew {len(drawn)} episodes, epoch 0 {self.num_episodes}.")
            self._epoch, self._arrays = epoch, drawn
        return self._arrays

    def episodes(self, epoch: int) -> list[Episode]:
        """The episodes of `epoch`, drawn from `epoch_seed(seed, epoch)`."""
        return self.arrays(epoch).to_episodes()

    def __getitem__(self, index: int) -> dict[str, Any]:
        epoch, position = divmod(int(index), self.num_episodes)
        episode = self.arrays(epoch).episode(position)
        targets = self.pairs[episode.target_rows] if self.pairs.column_names else {}
        return episode_row(episode, targets, self.chosen_index, self.rejected_index)

    def dataset(self, epoch: int) -> Dataset:
        """The episodes of `epoch` as a `datasets.Dataset` (for inspection; training indexes this object)."""
        columns = {c: arrow_column(self.pairs, c) for c in self.pairs.column_names}
        return episodes_as_dataset(
            self.arrays(epoch), columns, self.chosen_index, self.rejected_index, f"epoch {epoch}"
        )

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
