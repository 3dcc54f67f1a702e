# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Checks of a raw preference dataset, run before anything is loaded, tokenized, embedded or trained: every problem
raises a `ValueError` that names the dataset, the field and the fix.

The checks, and the episode builders after them, read whole columns as Arrow arrays ([`arrow_column`]) and NumPy
arrays, never rows as Python objects: at millions of pairs, formatting every row (`dataset[column]`, iterating the
dataset) took most of a trainer's construction time."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, IterableDataset

EMBEDDING_COLUMNS = ("chosen_embedding", "rejected_embedding")
# Columns the trainers add to a dataset (the texts to embed, before TRL appends EOS to them).
TEXT_KEY_COLUMNS = ("_fssa_chosen_text", "_fssa_rejected_text")
# Rows per batch where a column of an unusual type is checked value by value in Python.
PYTHON_CHECK_BATCH_ROWS = 10_000
# Values per slice of the NaN / infinity scan (bounds its temporary mask to 16 MB).
FINITE_CHECK_VALUES = 1 << 24


def arrow_column(dataset: Dataset, name: str) -> pa.ChunkedArray:
    """Column `name` of `dataset` in the dataset's row order, as Arrow (no Python object per row).

    A dataset made by `select`, `shuffle` or `train_test_split` reads its rows through an indices mapping, applied
    here with one `take`. (`dataset[name]` formats every row as a Python object; `with_format("arrow")[name]` gathers
    the mapped rows one slice per row.)
    """
    column = dataset.data.column(name)
    if not hasattr(dataset, "_indices"):  # not the `datasets` this was written for: the public, slower way
        return pa.chunked_array([dataset.with_format("arrow")[name]])
    indices = dataset._indices  # the indices mapping, or None
    return column if indices is None else column.take(indices.column(0))


def _is_empty(value) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == ""
    if isinstance(value, list):  # conversational: no message, or only empty contents
        return len(value) == 0 or all(_is_empty(m.get("content") if isinstance(m, dict) else m) for m in value)
    return False


def _empty_strings(strings: pa.Array) -> np.ndarray:
    """`_is_empty` of every string: None, "" or only whitespace (Arrow's `utf8_is_space` and Python's `str.strip`
    agree on every code point)."""
    empty = pc.or_(pc.equal(pc.binary_length(strings), 0), pc.utf8_is_space(strings))
    return pc.fill_null(empty, True).to_numpy(zero_copy_only=False)


def _empty_conversations(conversations: pa.Array) -> np.ndarray | None:
    """`_is_empty` of every conversation (a list of messages with a string `content`), or `None` for another type."""
    message_type = conversations.type.value_type
    if not pa.types.is_struct(message_type) or message_type.get_field_index("content") < 0:
        return None
    content_type = message_type.field("content").type
    if not (pa.types.is_string(content_type) or pa.types.is_large_string(content_type)):
        return None
    messages = conversations.flatten()  # the messages of the non-null conversations, in order
    owner = pc.list_parent_indices(conversations).to_numpy(zero_copy_only=False)
    if len(owner) != len(messages):  # null conversations backed by messages: let the Python check decide
        return None
    message_empty = messages.is_null().to_numpy(zero_copy_only=False) | _empty_strings(
        pc.struct_field(messages, "content")
    )
    non_empty = np.bincount(owner[~message_empty], minlength=len(conversations))
    return conversations.is_null().to_numpy(zero_copy_only=False) | (non_empty == 0)


def empty_rows(column: pa.ChunkedArray) -> np.ndarray:
    """Which rows of a `prompt` / `chosen` / `rejected` column are empty: None, only whitespace, or a conversation
    with no message of non-empty content. Strings and conversations are checked in Arrow; a column of another type
    value by value, in batches."""
    masks = []
    for chunk in column.chunks:
        mask = None
        if pa.types.is_string(chunk.type) or pa.types.is_large_string(chunk.type):
            mask = _empty_strings(chunk)
        elif pa.types.is_list(chunk.type) or pa.types.is_large_list(chunk.type):
            mask = _empty_conversations(chunk)
        if mask is None:
            mask = np.array(
                [
                    _is_empty(value)
                    for start in range(0, len(chunk), PYTHON_CHECK_BATCH_ROWS)
                    for value in chunk.slice(start, PYTHON_CHECK_BATCH_ROWS).to_pylist()
                ],
                dtype=bool,
            )
        masks.append(mask)
    return np.concatenate(masks) if masks else np.zeros(0, dtype=bool)


def check_preference_dataset(
    dataset,
    dataset_name: str,
    user_column: str,
    precomputed_embeddings: bool,
    text_required: bool = True,
) -> None:
    """Validate a raw preference dataset, every row once, column by column in Arrow.

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
            empty = empty_rows(arrow_column(dataset, column))
            if empty.any():
                raise ValueError(
                    f"Row {int(empty.argmax())} of the {dataset_name} dataset has an empty {column!r}. Remove empty "
                    f"rows first, e.g. `dataset.filter(lambda x: x[{column!r}].strip() != '')`."
                )
    if precomputed_embeddings:
        _check_embedding_columns(dataset, dataset_name, columns)
    for column in TEXT_KEY_COLUMNS:
        if column in columns:
            raise ValueError(f"Column {column!r} of the {dataset_name} dataset is reserved by fssa_trl; rename it.")


# ---------------------------------------------------------------------------------------------- embedding columns
def _vector_chunks(column: pa.ChunkedArray, name: str, dataset_name: str):
    """`(first row, chunk, lengths)` of every chunk of a float-list column; a null vector or a column of another type
    raises."""
    row = 0
    for chunk in column.chunks:
        if pa.types.is_fixed_size_list(chunk.type):
            lengths = np.full(len(chunk), chunk.type.list_size, dtype=np.int64)
        elif pa.types.is_list(chunk.type) or pa.types.is_large_list(chunk.type):
            lengths = pc.list_value_length(chunk).to_numpy(zero_copy_only=False)
        else:
            raise ValueError(
                f"{name!r} of the {dataset_name} dataset must hold one list of floats per row, got Arrow type "
                f"{chunk.type}."
            )
        if chunk.null_count:
            bad = row + int(chunk.is_null().to_numpy(zero_copy_only=False).argmax())
            raise ValueError(
                f"Row {bad} of the {dataset_name} dataset has no {name!r} (None): every pair needs both embeddings. "
                "Fix or drop those rows."
            )
        yield row, chunk, lengths.astype(np.int64, copy=False)
        row += len(chunk)


def _values(chunk: pa.Array, name: str, dataset_name: str, first_row: int, dim: int) -> np.ndarray:
    """The values of a chunk of vectors of one length `dim`, flat, as NumPy (no copy for float columns without
    nulls)."""
    values = chunk.flatten()
    if values.null_count:
        bad = first_row + int(values.is_null().to_numpy(zero_copy_only=False).argmax()) // max(dim, 1)
        raise ValueError(
            f"Row {bad} of the {dataset_name} dataset has a missing value (None) in {name!r}. Fix or drop those rows."
        )
    if not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type) or pa.types.is_boolean(values.type)):
        raise ValueError(f"{name!r} of the {dataset_name} dataset must hold numbers, got Arrow type {values.type}.")
    return values.to_numpy(zero_copy_only=False)


def _check_embedding_columns(dataset, dataset_name: str, columns: set[str]) -> None:
    for column in EMBEDDING_COLUMNS:
        if column not in columns:
            raise ValueError(
                f"`context_embedding='precomputed'` needs the float-list column {column!r} in the {dataset_name} "
                "dataset. Add it, or set `context_embedding` to 'base' or an encoder name to embed the text."
            )
    vectors = {column: arrow_column(dataset, column) for column in EMBEDDING_COLUMNS}
    chunks = {column: list(_vector_chunks(vectors[column], column, dataset_name)) for column in EMBEDDING_COLUMNS}
    lengths = {int(n) for parts in chunks.values() for _, _, part in parts for n in np.unique(part)}
    if len(lengths) != 1:
        raise ValueError(
            f"Embedding dimension mismatch in the {dataset_name} dataset: 'chosen_embedding'/'rejected_embedding' "
            f"vectors have lengths {sorted(lengths)}. Every embedding must come from one model, with one dimension."
        )
    dim = lengths.pop()
    for column in EMBEDDING_COLUMNS:  # the first bad row of 'chosen_embedding', else of 'rejected_embedding'
        for first_row, chunk, _ in chunks[column]:
            values = _values(chunk, column, dataset_name, first_row, dim)
            for start in range(0, len(values), FINITE_CHECK_VALUES):
                finite = np.isfinite(values[start : start + FINITE_CHECK_VALUES])
                if not finite.all():
                    row = first_row + (start + int((~finite).argmax())) // dim
                    raise ValueError(
                        f"The {dataset_name} dataset has NaN or infinite values in 'chosen_embedding'/"
                        f"'rejected_embedding' (first at row {row}). Fix or drop those rows."
                    )


def embedding_matrix(dataset: Dataset, column: str, dataset_name: str) -> np.ndarray:
    """`(N, D)` float32 array (a new, writable one) of a float-list column whose vectors have one length."""
    parts, dims, copied = [], set(), False
    for first_row, chunk, lengths in _vector_chunks(arrow_column(dataset, column), column, dataset_name):
        dims.update(np.unique(lengths).tolist())
        if len(dims) > 1:
            raise ValueError(
                f"'chosen_embedding' and 'rejected_embedding' of the {dataset_name} dataset must be float lists of one "
                f"length, got lengths {sorted(dims)} in {column!r}."
            )
        if len(chunk):
            dim = int(lengths[0])
            values = _values(chunk, column, dataset_name, first_row, dim)
            converted = values.astype(np.float32, copy=False)
            copied = converted is not values
            parts.append(converted.reshape(len(chunk), dim))
    if len(parts) == 1 and copied:  # already a new array: no second copy
        return parts[0]
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
