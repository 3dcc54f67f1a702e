# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Context-set collator: TRL's preference collator for the target pairs, plus padded context-set tensors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from trl.trainer.utils import pad

# Batch keys added by the collator; trainers pop them before calling the model.
CONTEXT_KEYS = (
    "context_chosen_embeddings",
    "context_rejected_embeddings",
    "context_mask",
    "target_chosen_embeddings",
    "target_rejected_embeddings",
    "target_mask",
    "target_episode",
    "target_unseen",
    "target_context_size",
)


# Per-target columns handed to TRL's collator (reward: ids and margin; DPO: prompt/completion ids, reference log-probs).
TOKEN_KEYS = ("prompt_ids", "chosen_ids", "rejected_ids", "margin", "ref_chosen_logps", "ref_rejected_logps")


def right_pad(rows: Sequence[Sequence[int]], padding_value: int = 0) -> torch.Tensor:
    """`(B, L)` long tensor of `rows` right-padded with `padding_value` (TRL's `pad`, as its collators use).

    ```python
    >>> right_pad([[1, 2, 3], [4]], padding_value=0)
    tensor([[1, 2, 3],
            [4, 0, 0]])
    ```
    """
    return pad(
        [torch.tensor(row, dtype=torch.long) for row in rows], padding_value=padding_value, padding_side="right"
    )


def _pad_sets(table: torch.Tensor, sets: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of `table` for each index set, padded: `(B, max_len, D)` and a `(B, max_len)` boolean mask."""
    width = max((len(s) for s in sets), default=0)
    index = torch.zeros((len(sets), width), dtype=torch.long)
    mask = torch.zeros((len(sets), width), dtype=torch.bool)
    for row, indices in enumerate(sets):
        index[row, : len(indices)] = torch.tensor(indices, dtype=torch.long)
        mask[row, : len(indices)] = True
    if not table.numel():
        return torch.zeros((len(sets), width, 0)), mask
    # Padded slots are zeros (not row 0 of the table), as documented.
    return table[index] * mask.unsqueeze(-1).to(table.dtype), mask


@dataclass
class DataCollatorForContextSets:
    """Collates episodes (one user's target pairs and context pairs) into one batch.

    The target pairs of all episodes are flattened and passed to `target_collator`, TRL's own preference collator
    (`trl.trainer.reward_trainer.DataCollatorForPreference` for reward models, `trl.trainer.dpo_trainer.
    DataCollatorForPreference` for DPO), so tokens, padding and `margin` are handled exactly as in TRL. The collator
    adds, for B episodes with N target pairs in total and at most C context pairs per episode:

    - `context_chosen_embeddings`, `context_rejected_embeddings`: `(B, C, D)` float; `context_mask`: `(B, C)` bool.
      C may be 0 for a whole batch of 0-shot episodes.
    - `target_episode`: `(N,)` long, the episode of each target pair (rows follow TRL's order: chosen rows `[0:N]`,
      rejected rows `[N:2N]` of `input_ids`).
    - `target_unseen`: `(N,)` bool, targets outside the context; `target_context_size`: `(N,)` long.
    - With `include_target_embeddings`: `target_chosen_embeddings`, `target_rejected_embeddings` `(B, T, D)` and
      `target_mask` `(B, T)`, for reward decoders on frozen embeddings and for q(z | targets) of a Gaussian latent.

    Args:
        embeddings (`Callable[[], torch.Tensor]`): returns the `(U, D)` table the `*_embedding_index` columns refer to
            (a tensor, or a [`~fssa_trl.data.embeddings.VectorTable`], which reads rows without one copy of the table).
        target_collator (`Callable`, *optional*): TRL preference collator for the token columns; `None` when the
            episodes carry no tokens (frozen-embedding reward models; a `margin` column is then collated as `(N,)`).
        include_target_embeddings (`bool`, *optional*, defaults to `False`): also emit the target embedding sets.

    Example:

    ```python
    >>> import torch
    >>> from trl.trainer.reward_trainer import DataCollatorForPreference
    >>> from fssa_trl.data import DataCollatorForContextSets
    >>> table = torch.arange(8.0).view(4, 2)  # 4 distinct embeddings, D=2
    >>> collator = DataCollatorForContextSets(lambda: table, DataCollatorForPreference(pad_token_id=0))
    >>> episodes = [
    ...     {"chosen_ids": [[1, 2], [3]], "rejected_ids": [[4], [5, 6]], "target_in_context": [True, False],
    ...      "chosen_embedding_index": [0, 1], "rejected_embedding_index": [2, 3],
    ...      "context_chosen_embedding_index": [0], "context_rejected_embedding_index": [2]},
    ...     {"chosen_ids": [[7]], "rejected_ids": [[8]], "target_in_context": [False],
    ...      "chosen_embedding_index": [1], "rejected_embedding_index": [3],
    ...      "context_chosen_embedding_index": [], "context_rejected_embedding_index": []},
    ... ]
    >>> batch = collator(episodes)
    >>> batch["input_ids"]
    tensor([[1, 2],
            [3, 0],
            [7, 0],
            [4, 0],
            [5, 6],
            [8, 0]])
    >>> batch["context_chosen_embeddings"], batch["context_mask"]
    (tensor([[[0., 1.]],
            [[0., 0.]]]), tensor([[ True],
            [False]]))
    >>> batch["target_episode"], batch["target_unseen"], batch["target_context_size"]
    (tensor([0, 0, 1]), tensor([False,  True,  True]), tensor([1, 1, 0]))
    ```
    """

    embeddings: Callable[[], torch.Tensor]
    target_collator: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None
    include_target_embeddings: bool = False

    def __call__(self, episodes: list[dict[str, Any]]) -> dict[str, Any]:
        table = self.embeddings()
        batch: dict[str, Any] = {}
        if self.target_collator is not None:
            token_keys = [k for k in TOKEN_KEYS if k in episodes[0]]
            targets = [
                {key: episode[key][i] for key in token_keys}
                for episode in episodes
                for i in range(len(episode["chosen_ids"]))
            ]
            batch.update(self.target_collator(targets))
        elif "margin" in episodes[0]:  # no tokens (frozen embeddings): the per-target margins alone
            batch["margin"] = torch.tensor([m for e in episodes for m in e["margin"]], dtype=torch.float32)
        sizes = [len(e["target_in_context"]) for e in episodes]
        context = [len(e["context_chosen_embedding_index"]) for e in episodes]
        batch["context_chosen_embeddings"], batch["context_mask"] = _pad_sets(
            table, [e["context_chosen_embedding_index"] for e in episodes]
        )
        batch["context_rejected_embeddings"], _ = _pad_sets(
            table, [e["context_rejected_embedding_index"] for e in episodes]
        )
        batch["target_episode"] = torch.repeat_interleave(torch.arange(len(episodes)), torch.tensor(sizes))
        batch["target_unseen"] = ~torch.tensor([f for e in episodes for f in e["target_in_context"]], dtype=torch.bool)
        batch["target_context_size"] = torch.repeat_interleave(torch.tensor(context), torch.tensor(sizes))
        if self.include_target_embeddings:
            batch["target_chosen_embeddings"], batch["target_mask"] = _pad_sets(
                table, [e["chosen_embedding_index"] for e in episodes]
            )
            batch["target_rejected_embeddings"], _ = _pad_sets(
                table, [e["rejected_embedding_index"] for e in episodes]
            )
        return batch
