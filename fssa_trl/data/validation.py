# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Checks of a raw preference dataset, run before anything is loaded, tokenized, embedded or trained: every problem
raises a `ValueError` that names the dataset, the field and the fix."""

from __future__ import annotations

import torch
from datasets import IterableDataset

EMBEDDING_COLUMNS = ("chosen_embedding", "rejected_embedding")
# Columns the trainers add to a dataset (the texts to embed, before TRL appends EOS to them).
TEXT_KEY_COLUMNS = ("_fssa_chosen_text", "_fssa_rejected_text")


def _is_empty(value) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == ""
    if isinstance(value, list):  # conversational: no message, or only empty contents
        return len(value) == 0 or all(_is_empty(m.get("content") if isinstance(m, dict) else m) for m in value)
    return False


def check_preference_dataset(
    dataset,
    dataset_name: str,
    user_column: str,
    precomputed_embeddings: bool,
    text_required: bool = True,
) -> None:
    """Validate a raw preference dataset.

    Args:
        dataset (`Dataset`): preference pairs (TRL's formats) with a user column.
        dataset_name (`str`): named in the errors ("train", "eval", ...).
        user_column (`str`): the column naming the user behind each pair.
        precomputed_embeddings (`bool`): whether `chosen_embedding` / `rejected_embedding` columns are required.
        text_required (`bool`, *optional*, defaults to `True`): whether `chosen` / `rejected` text is required
            (already tokenized `chosen_ids` / `rejected_ids` also do with precomputed embeddings).
    """
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
                if _is_empty(value):
                    raise ValueError(
                        f"Row {row} of the {dataset_name} dataset has an empty {column!r}. Remove empty rows first, "
                        f"e.g. `dataset.filter(lambda x: x[{column!r}].strip() != '')`."
                    )
    if precomputed_embeddings:
        _check_embedding_columns(dataset, dataset_name, columns)
    for column in TEXT_KEY_COLUMNS:
        if column in columns:
            raise ValueError(f"Column {column!r} of the {dataset_name} dataset is reserved by fssa_trl; rename it.")


def _check_embedding_columns(dataset, dataset_name: str, columns: set[str]) -> None:
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
