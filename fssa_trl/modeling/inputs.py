# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""The checks of what a caller passes a steerable model at inference: texts, contexts, latents, batch sizes.

Each is checked before anything is embedded or scored; a bad value raises a `ValueError` naming the argument, the
index and the fix:

- `prompts` / `responses` (`completions`): non-empty lists of text or conversations (lists of `{"role", "content"}`
  messages); a single string is a batch of one. A prompt and its response are both text or both conversations. A
  prompt may be `""` (no prompt, as for a dataset without a `prompt` column), and so may a scored response (a policy
  can generate an empty completion); generation needs a non-empty prompt.
- `context`: a list of pairs `{"prompt", "chosen", "rejected"}` (`chosen` and `rejected` non-empty, as the trainers
  require; `prompt` optional, in every pair or in none) or `{"chosen_embedding", "rejected_embedding"}` (finite
  vectors of the encoder's dimension), a `datasets.Dataset` of such rows, or a dict of equal-length columns. Other
  keys (a user id, scores) are ignored, but a near miss of a key the pair lacks (`"promt"`) is an error. Every pair
  is used (see [`SteerableModel.latent`]).
- `latent`: a finite tensor of shape `(latent_dim,)`, given instead of `context` (never both).
- `batch_size`: a positive int.
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import datasets
import numpy as np
import torch

from ..data.validation import is_empty

Context = Sequence[Mapping[str, Any]] | Mapping[str, Sequence] | None
"""A user's choices: a list of pairs (or a `datasets.Dataset` of rows), or a dict of equal-length columns."""

TEXT_KEYS = ("prompt", "chosen", "rejected")
EMBEDDING_KEYS = ("chosen_embedding", "rejected_embedding")
PAIR_KEYS_HELP = (
    "A context pair has 'chosen' and 'rejected' (and optionally 'prompt'), or 'chosen_embedding' and "
    "'rejected_embedding'; other keys (a user id, scores) are ignored."
)


def as_batch(values, name: str) -> list:
    """`values` (a list, tuple, dataset column, ...) as a list; a single string is a batch of one."""
    if isinstance(values, str):
        return [values]
    if isinstance(values, (bytes, Mapping)) or not isinstance(values, Iterable):
        raise ValueError(
            f"`{name}` must be a list of texts or conversations (or one string), got {type(values).__name__}."
        )
    return list(values)


def check_batch_size(batch_size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int (sequences per forward pass), got {batch_size!r}.")


def _is_conversation(value) -> bool:
    return isinstance(value, list) and all(isinstance(m, Mapping) and "role" in m and "content" in m for m in value)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_text(value, where: str, allow_empty: bool) -> None:
    """`value` must be a string or a conversation (a list of `{'role', 'content'}` messages); empty only where
    `allow_empty` (a prompt: `""` is no prompt, as for a dataset without a `prompt` column)."""
    if not isinstance(value, str) and not _is_conversation(value):
        raise ValueError(
            f"{where} must be a string or a conversation (a list of {{'role', 'content'}} messages), got "
            f"{type(value).__name__} {_short(value)}."
        )
    if not allow_empty and is_empty(value):
        raise ValueError(f"{where} is empty: a response needs text (training rejects empty responses too).")
    texts = [value] if isinstance(value, str) else [m["content"] for m in value if isinstance(m["content"], str)]
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(
                f"{where} is not valid Unicode text ({error.reason} at position {error.start}, e.g. a lone surrogate "
                "from a bad decode): fix its encoding, e.g. `text.encode('utf-8', 'replace').decode('utf-8')`."
            ) from error


def check_pair_format(prompt, response, where: str) -> None:
    """A prompt and its response are both text or both conversations; an empty prompt (`""`, `[]`) goes with
    either."""
    if prompt and isinstance(prompt, str) != isinstance(response, str):
        raise ValueError(
            f"{where} mixes formats: the prompt is a {type(prompt).__name__}, the response a "
            f"{type(response).__name__}. Give both as text, or both as conversations (lists of "
            "{'role', 'content'} messages)."
        )


def check_texts(prompts, responses, names: tuple[str, str] = ("prompts", "responses")) -> tuple[list, list]:
    """Validated `(prompts, responses)` lists of one length, at least one (a single string is a batch of one) of text
    or conversations, each pair in one format. Unlike context pairs, a scored response may be empty: a policy can
    generate an empty completion, and a reward function must score it (as `prompt + eos`)."""
    prompts, responses = as_batch(prompts, names[0]), as_batch(responses, names[1])
    if len(prompts) != len(responses):
        raise ValueError(f"Got {len(prompts)} {names[0]} but {len(responses)} {names[1]}.")
    if not prompts:
        raise ValueError(f"`{names[0]}` and `{names[1]}` are empty: there is nothing to score.")
    for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        check_text(prompt, f"`{names[0]}[{i}]`", allow_empty=True)
        check_text(response, f"`{names[1]}[{i}]`", allow_empty=True)
        check_pair_format(prompt, response, f"`{names[0]}[{i}]` with `{names[1]}[{i}]`")
    return prompts, responses


def _vector(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().float().cpu().numpy()
    array = np.asarray(value)
    if array.dtype == object:  # None (which float32 would turn into NaN) or ragged rows
        raise TypeError(f"not numbers: {array.dtype}")
    with np.errstate(over="ignore"):  # beyond float32's range becomes inf, refused as such
        return array.astype(np.float32)


def as_vectors(values, dim: int, row: str) -> torch.Tensor:
    """`(N, dim)` float32 CPU tensor of finite vectors; errors name the row, `row.format(i=...)`."""
    if isinstance(values, (torch.Tensor, np.ndarray)) and values.dtype != object:
        if values.ndim != 2:
            raise ValueError(f"{row.format(i=':')} must have shape (N, {dim}), got {tuple(values.shape)}.")
        rows = list(_vector(values))
    else:
        rows = []
        for i, value in enumerate(values):
            try:
                rows.append(_vector(value))
            except (TypeError, ValueError) as error:
                raise ValueError(f"{row.format(i=i)} is not a vector of numbers: {_short(value)}.") from error
    for i, vector in enumerate(rows):
        if vector.shape != (dim,):
            raise ValueError(
                f"{row.format(i=i)} has shape {vector.shape}, expected ({dim},): the model's embedding dimension."
            )
        if not np.isfinite(vector).all():
            raise ValueError(f"{row.format(i=i)} holds NaN or infinite values.")
    return torch.from_numpy(np.stack(rows)) if rows else torch.zeros(0, dim)


def check_latent(latent, dim: int, rows: int | None = None) -> torch.Tensor:
    """`latent` as a finite float tensor of shape `(dim,)` (or `(rows, dim)`, one per prompt, where `rows` is
    given); a `ValueError` otherwise."""
    shapes = f"({dim},)" + (f" or ({rows}, {dim}), one per prompt" if rows is not None else "")
    try:
        latent = torch.as_tensor(latent)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"`latent` must have shape {shapes}, got {type(latent).__name__}.") from error
    if tuple(latent.shape) not in ((dim,), (rows, dim)) or latent.dtype == torch.bool or latent.is_complex():
        raise ValueError(
            f"`latent` must have shape {shapes} (the model's latent_dim is {dim}) and real values, got "
            f"{latent.dtype} of shape {tuple(latent.shape)}: pass one user's `model.latent(context)`."
        )
    latent = latent if latent.is_floating_point() else latent.float()
    if not torch.isfinite(latent).all() or not torch.isfinite(latent.float()).all():
        raise ValueError("`latent` holds NaN or infinite values (or values beyond float32's range, 3.4e38).")
    return latent


def _looks_like_one_pair(context: Mapping) -> bool:
    """A dict of one pair's values, not of columns: a string, messages or numbers where columns hold rows."""
    for key in (*TEXT_KEYS, *EMBEDDING_KEYS):
        value = context.get(key)
        if value is None:
            continue
        if isinstance(value, (str, bytes)):
            return True
        if isinstance(value, (torch.Tensor, np.ndarray)):
            if value.ndim < 2 and value.dtype != object and (key in EMBEDDING_KEYS or value.dtype.kind in "fiu"):
                return True
        elif isinstance(value, Sequence) and value and isinstance(value[0], (Mapping, numbers.Number)):
            return True
    return False


def context_rows(context: Context) -> list:
    """The pairs of a context in any of its forms: a list of pairs, a `datasets.Dataset`, or a dict of equal-length
    columns."""
    if context is None:
        return []
    if isinstance(context, datasets.Dataset):
        return context.to_list()
    if isinstance(context, Mapping):
        if _looks_like_one_pair(context):
            raise ValueError(
                "`context` is a single pair: give a list of pairs, `[pair]`, or a dict of equal-length columns "
                "({'prompt': [...], 'chosen': [...], 'rejected': [...]})."
            )
        for key, column in context.items():
            if isinstance(column, (str, bytes)) or not isinstance(column, Sequence | np.ndarray | torch.Tensor):
                raise ValueError(
                    f"`context[{key!r}]` must be a column (a list of one value per pair), got "
                    f"{type(column).__name__}. {PAIR_KEYS_HELP}"
                )
        lengths = {key: len(column) for key, column in context.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"The columns of `context` must have one length, got {lengths}.")
        return [dict(zip(context, values, strict=True)) for values in zip(*context.values(), strict=True)]
    if isinstance(context, (str, bytes)) or not isinstance(context, Iterable):
        raise ValueError(f"`context` must be a list of pairs, got {type(context).__name__}. {PAIR_KEYS_HELP}")
    return list(context)


def _is_embedding_pair(i: int, pair) -> bool:
    """Whether `context[i]` gives embeddings (else texts); raises on a malformed pair or a misspelt key."""
    if not isinstance(pair, Mapping):
        raise ValueError(f"`context[{i}]` must be a dict, got {type(pair).__name__} {_short(pair)}. {PAIR_KEYS_HELP}")
    keys = set(pair)
    embedded, texts = set(EMBEDDING_KEYS) <= keys, {"chosen", "rejected"} <= keys
    expected = EMBEDDING_KEYS if embedded else TEXT_KEYS if texts else (*TEXT_KEYS, *EMBEDDING_KEYS)
    missing = [key for key in expected if key not in keys]
    for key in sorted(str(k) for k in keys if k not in TEXT_KEYS and k not in EMBEDDING_KEYS):
        # A near miss of a key the pair lacks is a typo that would drop data: a misspelt 'prompt' was an empty one.
        match = difflib.get_close_matches(key.lower(), missing, n=1, cutoff=0.8)
        if match:
            raise ValueError(
                f"`context[{i}]` has the unknown key {key!r}; did you mean {match[0]!r}? {PAIR_KEYS_HELP}"
            )
    if not embedded and not texts:
        raise ValueError(f"`context[{i}]` has the keys {sorted(map(str, keys))}. {PAIR_KEYS_HELP}")
    return embedded


def context_pairs(context: Context, dim: int) -> tuple[list[dict], torch.Tensor | None, torch.Tensor | None]:
    """Check a context (see the module docstring) before anything is embedded or scored.

    Returns the text pairs `{"prompt", "chosen", "rejected"}` (`prompt` `""` when not given), or, for embedding
    pairs, no text pairs and the `(C, dim)` chosen and rejected embeddings.
    """
    rows = context_rows(context)
    embedded = [_is_embedding_pair(i, pair) for i, pair in enumerate(rows)]
    if any(embedded) and not all(embedded):
        raise ValueError(
            f"`context` mixes forms: `context[{embedded.index(True)}]` gives embeddings, "
            f"`context[{embedded.index(False)}]` texts. Give every pair as texts or every pair as embeddings."
        )
    if rows and embedded[0]:
        chosen = as_vectors([p["chosen_embedding"] for p in rows], dim, "`context[{i}]['chosen_embedding']`")
        rejected = as_vectors([p["rejected_embedding"] for p in rows], dim, "`context[{i}]['rejected_embedding']`")
        return [], chosen, rejected
    prompted = ["prompt" in pair for pair in rows]
    if any(prompted) and not all(prompted):
        raise ValueError(
            f"`context[{prompted.index(False)}]` has no 'prompt' but `context[{prompted.index(True)}]` has one: "
            "give every pair a prompt ('' for none), or none."
        )
    pairs = []
    for i, pair in enumerate(rows):
        prompt = pair.get("prompt", "")
        check_text(prompt, f"`context[{i}]['prompt']`", allow_empty=True)
        for key in ("chosen", "rejected"):
            check_text(pair[key], f"`context[{i}][{key!r}]`", allow_empty=False)
            check_pair_format(prompt, pair[key], f"`context[{i}]`")
        pairs.append({"prompt": prompt, "chosen": pair["chosen"], "rejected": pair["rejected"]})
    return pairs, None, None
