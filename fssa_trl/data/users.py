# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Building users from a dataset that rates several attributes per pair (the paper's helpfulness/honesty users)."""

from __future__ import annotations

from collections.abc import Sequence

from datasets import Dataset


def _preferred(value) -> int | None:
    """Index (0 or 1) of the preferred response, from a label or a pair of scores; `None` for a tie or no label."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"An attribute given as scores must hold two numbers, got {value!r}.")
        if value[0] is None or value[1] is None or value[0] == value[1]:
            return None
        return 0 if value[0] > value[1] else 1
    if value in (0, 1):
        return int(value)
    return None


def users_from_attributes(
    dataset: Dataset,
    attributes: Sequence[str],
    response_columns: tuple[str, str] = ("response_a", "response_b"),
    prompt_column: str | None = "prompt",
    user_column: str = "user_id",
    only_conflicting: bool = False,
) -> Dataset:
    """One user per rated attribute: each pair becomes one row per attribute that prefers one of its responses.

    Each attribute column holds either the index (0 or 1) of the preferred response, or the two responses' scores
    `[score_a, score_b]`; ties and missing labels (`None`, `-1`) are skipped. With `only_conflicting=True` only
    pairs on which the attributes disagree are kept (the paper's helpfulness-vs-honesty setting, where a
    context-free model's accuracies on the two users sum to about 100).

    Args:
        dataset (`Dataset`): one row per pair of responses.
        attributes (`Sequence[str]`): attribute columns; each becomes a user id.
        response_columns (`tuple[str, str]`): the two response columns.
        prompt_column (`str`, *optional*): the prompt column (`None` for implicit prompts).
        user_column (`str`): name of the output user column.
        only_conflicting (`bool`): keep only pairs whose attributes do not all agree.

    Returns:
        A preference dataset with columns `prompt` (if any), `chosen`, `rejected` and `user_column`.

    Example:

    ```python
    >>> from datasets import Dataset
    >>> from fssa_trl import users_from_attributes
    >>> ds = Dataset.from_dict({"prompt": ["Q: "], "response_a": ["short"], "response_b": ["long answer"],
    ...                         "helpfulness": [1], "honesty": [[5, 3]]})
    >>> users_from_attributes(ds, ["helpfulness", "honesty"], only_conflicting=True).to_list()
    [{'prompt': 'Q: ', 'chosen': 'long answer', 'rejected': 'short', 'user_id': 'helpfulness'},
     {'prompt': 'Q: ', 'chosen': 'short', 'rejected': 'long answer', 'user_id': 'honesty'}]
    ```
    """
    missing = [
        c
        for c in [*attributes, *response_columns, *([prompt_column] if prompt_column else [])]
        if c not in dataset.column_names
    ]
    if missing:
        raise ValueError(
            f"users_from_attributes: the dataset has no column(s) {missing} (has {dataset.column_names})."
        )
    if len(attributes) < 1:
        raise ValueError("users_from_attributes: give at least one attribute column.")
    rows = {**({"prompt": []} if prompt_column else {}), "chosen": [], "rejected": [], user_column: []}
    for example in dataset:
        choices = {a: _preferred(example[a]) for a in attributes}
        decided = {a: c for a, c in choices.items() if c is not None}
        if only_conflicting and len(set(decided.values())) < 2:
            continue
        for attribute, choice in decided.items():
            if prompt_column:
                rows["prompt"].append(example[prompt_column])
            rows["chosen"].append(example[response_columns[choice]])
            rows["rejected"].append(example[response_columns[1 - choice]])
            rows[user_column].append(attribute)
    return Dataset.from_dict(rows)
