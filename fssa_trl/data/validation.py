# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Checks of a raw preference dataset, run before anything is loaded, tokenized, embedded or trained: every problem
raises a `ValueError` that names the dataset, the field and the fix.

The checks, and the episode builders after them, read whole columns as Arrow arrays ([`arrow_column`]) and NumPy
arrays, never rows as Python objects: at millions of pairs, formatting every row (`dataset[column]`, iterating the
dataset) took most of a trainer's construction time."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, IterableDataset

EMBEDDING_COLUMNS = ("chosen_embedding", "rejected_embedding")
# Columns the trainers add to a dataset (the texts to embed, before TRL appends EOS to them).
TEXT_KEY_COLUMNS = ("_fssa_chosen_text", "_fssa_rejected_text")
# Columns of a dataset of episodes (one row per episode), besides `user` and the token columns carried per target.
EPISODE_COLUMNS = (
    "target_in_context",
    "chosen_embedding_index",
    "rejected_embedding_index",
    "context_chosen_embedding_index",
    "context_rejected_embedding_index",
)
# Column names a raw preference dataset must not use: fssa_trl adds them (a dataset holding `target_in_context`
# would be taken for episodes already built).
RESERVED_COLUMNS = (*TEXT_KEY_COLUMNS, *EPISODE_COLUMNS)
TEXT_COLUMNS = ("prompt", "chosen", "rejected")
# Row indices an error or warning lists.
ROWS_SHOWN = 5
# Rows per batch where a column of an unusual type is checked value by value in Python.
PYTHON_CHECK_BATCH_ROWS = 10_000
# Values per slice of the NaN / infinity scan (bounds its temporary mask to 16 MB).
FINITE_CHECK_VALUES = 1 << 24
FLOAT32_MAX = float(np.finfo(np.float32).max)  # a larger finite float64 is inf in float32


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


class IdenticalPairsWarning(UserWarning):
    """Some pairs of a preference dataset have the same chosen and rejected response (a string, or a conversation
    with the same roles and contents). Legal, but such a pair states no preference: its Bradley-Terry or DPO loss
    does not depend on the model (no gradient), and as a context pair it tells the encoder nothing. It usually comes
    from a bug in how the dataset was built. Issued once per dataset, when the dataset is checked."""


def is_empty(value) -> bool:
    """Whether a `prompt` / `chosen` / `rejected` value is empty: None, only whitespace, or a conversation (a list of
    messages) with no message of non-empty content. The trainers refuse such rows; drop them with
    `dataset.filter(lambda x: not any(is_empty(x[c]) for c in ["prompt", "chosen", "rejected"]))` (the columns your
    dataset has), in the standard and the conversational format alike."""
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == ""
    if isinstance(value, list):  # conversational: no message, or only empty contents
        return len(value) == 0 or all(is_empty(m.get("content") if isinstance(m, Mapping) else m) for m in value)
    return False


def _rows(mask: np.ndarray) -> str:
    """The first rows where `mask` holds, for a message: `"3, 8, 12, ..."`."""
    rows = np.flatnonzero(mask)
    shown = ", ".join(str(row) for row in rows[:ROWS_SHOWN].tolist())
    return shown + (", ..." if len(rows) > ROWS_SHOWN else "")


def _empty_strings(strings: pa.Array) -> np.ndarray:
    """`is_empty` of every string: None, "" or only whitespace (Arrow's `utf8_is_space` and Python's `str.strip`
    agree on every code point)."""
    empty = pc.or_(pc.equal(pc.binary_length(strings), 0), pc.utf8_is_space(strings))
    return pc.fill_null(empty, True).to_numpy(zero_copy_only=False)


def _empty_conversations(conversations: pa.Array) -> np.ndarray | None:
    """`is_empty` of every conversation (a list of messages with a string `content`), or `None` for another type."""
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
                    is_empty(value)
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
    margin_used: bool = False,
) -> None:
    """Validate a raw preference dataset, every row once, column by column in Arrow.

    Raises a `ValueError` naming the column, the first rows and the fix for: a streamed or empty dataset; a missing
    user column, or user ids that are None, NaN or empty strings (ids may be strings or integers, compared as strings:
    `3` and `"3"` are one user); a column name fssa_trl reserves ([`RESERVED_COLUMNS`]); missing `chosen` /
    `rejected`; an empty `prompt` / `chosen` / `rejected` ([`is_empty`]); with `margin_used`, a `margin` that is
    None, NaN or infinite; every pair with `chosen == rejected`; and, for precomputed embeddings, missing, ragged,
    empty (dimension 0), None, NaN or infinite vectors. Some (not all) pairs with `chosen == rejected` give an
    [`IdenticalPairsWarning`].

    Args:
        dataset (`Dataset`): preference pairs (TRL's formats) with a user column.
        dataset_name (`str`): named in the errors ("train", "eval", ...).
        user_column (`str`): the column naming the user behind each pair.
        precomputed_embeddings (`bool`): whether `chosen_embedding` / `rejected_embedding` columns are required.
        text_required (`bool`, *optional*, defaults to `True`): whether `chosen` / `rejected` text is required
            (already tokenized `chosen_ids` / `rejected_ids` also do with precomputed embeddings).
        margin_used (`bool`, *optional*, defaults to `False`): whether a `margin` column enters the loss (the reward
            trainers), and must then hold a finite number in every row.
    """
    if isinstance(dataset, IterableDataset):
        raise ValueError(
            f"The {dataset_name} dataset is an IterableDataset: few-shot episodes group each user's pairs, which needs "
            "random access. Load it without `streaming=True`."
        )
    if len(dataset) == 0:
        raise ValueError(
            f"The {dataset_name} dataset is empty (0 rows): there are no preference pairs to build episodes from. "
            "Check how it was loaded, split or filtered."
        )
    columns = set(dataset.column_names)
    if user_column not in columns:
        raise ValueError(
            f"The {dataset_name} dataset has no user column {user_column!r} (columns: {sorted(columns)}). Add one, or "
            "set `user_column` to the column that names the user behind each pair; for a dataset that rates several "
            "attributes per pair, use `fssa_trl.users_from_attributes`."
        )
    for column in RESERVED_COLUMNS:
        if column in columns:
            raise ValueError(f"Column {column!r} of the {dataset_name} dataset is reserved by fssa_trl; rename it.")
    has_text = {"chosen", "rejected"} <= columns
    has_ids = {"chosen_ids", "rejected_ids"} <= columns
    if text_required and not has_text and not (has_ids and precomputed_embeddings):
        missing = [c for c in ("chosen", "rejected") if c not in columns]
        raise ValueError(
            f"The {dataset_name} dataset is missing the column(s) {missing}: a preference dataset needs 'chosen' and "
            f"'rejected' (and optionally 'prompt'), as in TRL (columns: {sorted(columns)})."
        )
    _check_users(arrow_column(dataset, user_column), user_column, dataset_name)
    _check_texts(dataset, dataset_name, [c for c in TEXT_COLUMNS if c in columns])
    if margin_used and "margin" in columns:
        _check_margin(arrow_column(dataset, "margin"), dataset_name)
    if has_text:
        _check_identical_pairs(dataset, dataset_name)
    if precomputed_embeddings:
        _check_embedding_columns(dataset, dataset_name, columns)


def _check_users(column: pa.ChunkedArray, user_column: str, dataset_name: str) -> None:
    """User ids must be strings or integers (floats pass; NaN is missing), none missing: None, NaN or blank."""
    kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        keep = f"(x[{user_column!r}] or '').strip() != ''"
    elif pa.types.is_integer(kind) or pa.types.is_null(kind):
        keep = f"x[{user_column!r}] is not None"
    elif pa.types.is_floating(kind):
        keep = f"x[{user_column!r}] is not None and x[{user_column!r}] == x[{user_column!r}]"
    else:
        raise ValueError(
            f"The user column {user_column!r} of the {dataset_name} dataset must hold user ids, strings or integers, "
            f"got Arrow type {column.type}. Convert it, e.g. `dataset = dataset.map(lambda x: {{{user_column!r}: "
            f"str(x[{user_column!r}])}})`, or set `user_column` to the column that names the user behind each pair."
        )
    masks = []
    for chunk in column.chunks:
        if pa.types.is_dictionary(chunk.type):
            chunk = chunk.dictionary_decode()
        if pa.types.is_null(chunk.type):
            masks.append(np.ones(len(chunk), dtype=bool))
        elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
            masks.append(_empty_strings(chunk))
        elif pa.types.is_floating(kind):
            masks.append(pc.fill_null(pc.is_nan(chunk), True).to_numpy(zero_copy_only=False))
        else:
            masks.append(chunk.is_null().to_numpy(zero_copy_only=False))
    missing = np.concatenate(masks)
    if not missing.any():
        return
    count = int(missing.sum())
    if count == len(missing):
        raise ValueError(
            f"The user column {user_column!r} of the {dataset_name} dataset has no user id (None, NaN or an empty "
            f"string) in any of its {count} rows. Every pair needs the id of the user who made the choice: set "
            "`user_column` to the column that names the user behind each pair, or fill this one in."
        )
    raise ValueError(
        f"The user column {user_column!r} of the {dataset_name} dataset has no user id (None, NaN or an empty string) "
        f"in {count} of {len(missing)} rows (rows {_rows(missing)}). Every pair needs the id of the user who made the "
        f"choice: fill them in, or drop those rows, e.g. `dataset = dataset.filter(lambda x: {keep})`."
    )


def _text_format(kind: pa.DataType) -> str | None:
    """`"text"` for a string column, `"conversation"` for a list of messages with string `role` and `content`,
    `None` for anything else (a column of nulls: `"null"`)."""
    if pa.types.is_null(kind):
        return "null"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "text"
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        message = kind.value_type
        if pa.types.is_struct(message) and all(
            message.get_field_index(name) >= 0
            and (pa.types.is_string(message.field(name).type) or pa.types.is_large_string(message.field(name).type))
            for name in ("role", "content")
        ):
            return "conversation"
    return None


def _check_text_types(dataset, dataset_name: str, columns: list[str]) -> None:
    """`prompt` / `chosen` / `rejected` are strings, or conversations (lists of `{"role", "content"}` messages), one
    format for all of them (TRL's standard or conversational format)."""
    formats = {}
    for column in columns:
        kind = dataset.data.schema.field(column).type
        formats[column] = _text_format(kind)
        if formats[column] is None:
            raise ValueError(
                f"{column!r} of the {dataset_name} dataset must hold text (strings) or conversations (lists of "
                f"{{'role': str, 'content': str}} messages), got Arrow type {kind}. Convert the column, e.g. "
                f"`dataset = dataset.map(lambda x: {{{column!r}: str(x[{column!r}])}})` for plain values."
            )
    used = {f for f in formats.values() if f != "null"}
    if len(used) > 1:
        raise ValueError(
            f"The {dataset_name} dataset mixes plain text and conversations across {columns}: "
            f"{ {c: f for c, f in formats.items() if f != 'null'} }. Use one format for 'prompt', 'chosen' and "
            "'rejected' (TRL's standard or conversational format), e.g. `trl.maybe_apply_chat_template` to turn "
            "conversations into text."
        )


def _check_texts(dataset, dataset_name: str, columns: list[str]) -> None:
    """No empty `prompt` / `chosen` / `rejected`; the error's fix, `dataset.filter` with [`is_empty`], drops every
    empty row of every format."""
    _check_text_types(dataset, dataset_name, columns)
    empty = {column: empty_rows(arrow_column(dataset, column)) for column in columns}
    bad = [column for column in columns if empty[column].any()]
    if not bad:
        return
    first = empty[bad[0]]
    either = np.logical_or.reduce([empty[column] for column in bad])
    raise ValueError(
        f"Row {int(first.argmax())} of the {dataset_name} dataset has an empty {bad[0]!r}. {int(either.sum())} of "
        f"{len(either)} rows have an empty {' or '.join(repr(c) for c in bad)} (None, only whitespace, or a "
        f"conversation without message content; rows {_rows(either)}). Remove them first: `from "
        "fssa_trl.data.validation import is_empty; dataset = dataset.filter(lambda x: not any(is_empty(x[c]) for c "
        f"in {columns!r}))`."
    )


def _check_margin(column: pa.ChunkedArray, dataset_name: str) -> None:
    """Every `margin` a finite number: TRL subtracts it inside the loss, so one NaN makes every weight NaN."""
    masks = []
    for chunk in column.chunks:
        if pa.types.is_floating(chunk.type):
            # Finite in float32, as the loss computes it: 1e39 is finite in float64 and inf there.
            finite = pc.and_(pc.is_finite(chunk), pc.less_equal(pc.abs(chunk), FLOAT32_MAX))
            masks.append(pc.invert(pc.fill_null(finite, False)).to_numpy(zero_copy_only=False))
        elif pa.types.is_integer(chunk.type) or pa.types.is_null(chunk.type):
            masks.append(chunk.is_null().to_numpy(zero_copy_only=False))
        else:
            raise ValueError(
                f"'margin' of the {dataset_name} dataset must hold one number per row, got Arrow type {chunk.type}."
            )
    bad = np.concatenate(masks)
    if bad.any():
        row = int(bad.argmax())
        raise ValueError(
            f"Row {row} of the {dataset_name} dataset has a 'margin' that is not a finite number "
            f"({column[row].as_py()}); {int(bad.sum())} of {len(bad)} rows do (rows {_rows(bad)}). The margin enters "
            "the loss (in float32: at most 3.4e38 in magnitude), so one such row makes the loss, and then every trained weight, NaN. Fix or drop those rows, "
            "e.g. `import math; dataset = dataset.filter(lambda x: x['margin'] is not None and "
            "math.isfinite(x['margin']))`."
        )


def _conversation_text(conversations: pa.Array) -> pa.Array | None:
    """One string per conversation, its messages' roles and contents joined (`None` for another type), so that two
    conversations compare equal in Arrow exactly when their roles and contents do."""
    message_type = conversations.type.value_type
    if not pa.types.is_struct(message_type) or message_type.get_field_index("content") < 0:
        return None
    fields = [name for name in ("role", "content") if message_type.get_field_index(name) >= 0]
    if not all(pa.types.is_string(message_type.field(name).type) for name in fields):
        return None
    messages = conversations.flatten()  # the messages of the non-null conversations, in order
    parts = [pc.fill_null(pc.struct_field(messages, name), "") for name in fields]
    text = pc.binary_join_element_wise(*parts, "\x1f") if len(parts) > 1 else parts[0]
    lengths = pc.fill_null(pc.list_value_length(conversations), 0).to_numpy(zero_copy_only=False)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]), pa.int64())
    return pc.binary_join(pa.LargeListArray.from_arrays(offsets, text), "\x1e")


def _comparable(column: pa.ChunkedArray) -> pa.ChunkedArray | None:
    """A `chosen` / `rejected` column as strings (conversations as their roles and contents), `None` for another
    type."""
    parts = []
    for chunk in column.chunks:
        if pa.types.is_string(chunk.type) or pa.types.is_large_string(chunk.type):
            parts.append(chunk)
        elif pa.types.is_list(chunk.type) or pa.types.is_large_list(chunk.type):
            part = _conversation_text(chunk)
            if part is None:
                return None
            parts.append(part)
        else:
            return None
    return pa.chunked_array(parts, type=parts[0].type if parts else pa.string())


def identical_pairs(dataset: Dataset) -> np.ndarray | None:
    """Which rows have `chosen == rejected`: strings, or conversations with the same roles and contents (other message
    fields are not compared). `None` when the columns hold something else (e.g. multimodal contents)."""
    chosen, rejected = (_comparable(arrow_column(dataset, column)) for column in ("chosen", "rejected"))
    if chosen is None or rejected is None:
        return None
    if chosen.type != rejected.type:  # string and large_string
        chosen, rejected = chosen.cast(pa.large_string()), rejected.cast(pa.large_string())
    return pc.fill_null(pc.equal(chosen, rejected), False).to_numpy(zero_copy_only=False)


def _check_identical_pairs(dataset, dataset_name: str) -> None:
    """Pairs with `chosen == rejected`: an [`IdenticalPairsWarning`] with the count and the first rows, or a
    `ValueError` when every pair is one (nothing would be learnt)."""
    same = identical_pairs(dataset)
    if same is None or not same.any():
        return
    count = int(same.sum())
    if count == len(same):
        raise ValueError(
            f"Every pair of the {dataset_name} dataset has chosen == rejected ({count} rows): such a pair states no "
            "preference, so nothing would be learnt. Check how 'chosen' and 'rejected' were built (the same column "
            "used twice?)."
        )
    warnings.warn(
        f"{count} of {len(same)} pairs of the {dataset_name} dataset have chosen == rejected (rows {_rows(same)}). "
        "Such a pair states no preference: it gives no gradient, and as a context pair tells the encoder nothing. "
        "Unless that is intended, drop them: `dataset = dataset.filter(lambda x: x['chosen'] != x['rejected'])`.",
        IdenticalPairsWarning,
        stacklevel=3,
    )


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
        by_row = {column: np.concatenate([part for _, _, part in chunks[column]]) for column in EMBEDDING_COLUMNS}
        expected = int(by_row[EMBEDDING_COLUMNS[0]][0])  # row 0's 'chosen_embedding'
        column = next(column for column in EMBEDDING_COLUMNS if (by_row[column] != expected).any())
        row = int(np.argmax(by_row[column] != expected))
        length = int(by_row[column][row])
        raise ValueError(
            f"Embedding dimension mismatch in the {dataset_name} dataset: 'chosen_embedding'/'rejected_embedding' "
            f"vectors have lengths {sorted(lengths)}. Row {row} has a {column!r} of length {length}, row 0 a "
            f"'chosen_embedding' of length {expected}: every embedding must come from one model, with one dimension. "
            "Fix or drop those rows."
        )
    dim = lengths.pop()
    if dim == 0:
        raise ValueError(
            f"'chosen_embedding' and 'rejected_embedding' of the {dataset_name} dataset hold empty vectors (length 0) "
            "in every row: a precomputed embedding needs at least one value. Fill them with your embedding model's "
            "vectors, or set `context_embedding` to 'base' or an encoder name to embed the text."
        )
    for column in EMBEDDING_COLUMNS:  # the first bad row of 'chosen_embedding', else of 'rejected_embedding'
        for first_row, chunk, _ in chunks[column]:
            values = _values(chunk, column, dataset_name, first_row, dim)
            for start in range(0, len(values), FINITE_CHECK_VALUES):
                block = values[start : start + FINITE_CHECK_VALUES]
                finite = np.isfinite(block) & (np.abs(block) <= FLOAT32_MAX)  # finite in the float32 table too
                if not finite.all():
                    row = first_row + (start + int((~finite).argmax())) // dim
                    raise ValueError(
                        f"The {dataset_name} dataset has NaN or infinite values in 'chosen_embedding'/"
                        f"'rejected_embedding' (first at row {row}). Fix or drop those rows."
                    )


def embedding_blocks(dataset: Dataset, columns: str | Sequence[str], dataset_name: str) -> list[np.ndarray]:
    """The vectors of float-list columns of one length as `(n, D)` float32 blocks, one per Arrow chunk: the rows of
    the first column, then those of the next. A float32 chunk without nulls becomes a read-only view of its Arrow
    buffer (no copy: a memory-mapped dataset's vectors stay in its pages); other number types are converted."""
    columns = [columns] if isinstance(columns, str) else list(columns)
    parts, dims = [], set()
    for column in columns:
        for first_row, chunk, lengths in _vector_chunks(arrow_column(dataset, column), column, dataset_name):
            dims.update(np.unique(lengths).tolist())
            if len(dims) > 1:
                raise ValueError(
                    f"'chosen_embedding' and 'rejected_embedding' of the {dataset_name} dataset must be float lists of "
                    f"one length, got lengths {sorted(dims)} in {column!r}."
                )
            if len(chunk):
                parts.append((column, first_row, chunk))
    if not parts:
        return []
    dim = dims.pop()
    return [
        _values(chunk, column, dataset_name, first_row, dim).astype(np.float32, copy=False).reshape(len(chunk), dim)
        for column, first_row, chunk in parts
    ]
