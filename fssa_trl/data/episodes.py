# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Users and episodes: how rows of a preference dataset become few-shot training and evaluation examples.

An *episode* is one user's set of target pairs plus a context set of that user's pairs. During training the context is
a random subset of the targets (as in the paper); for evaluation it is disjoint from them, so accuracy is measured on
unseen pairs. Episodes are drawn once, from a seed, when a dataset is prepared: they are ordinary dataset rows, so the
Trainer's sampler, sharding and checkpoint resume treat them like any other example. Training episodes may instead be
redrawn every epoch, each epoch's from its own seed ([`epoch_seed`]).
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

TOO_FEW_PAIRS_POLICIES = ("skip", "replace", "error")


@dataclass
class Episode:
    """Row indices of one user's episode. `context_rows` may be empty (0-shot)."""

    user: str
    target_rows: list[int]
    context_rows: list[int]
    target_in_context: list[bool] = field(default_factory=list)


def group_rows_by_user(users: Iterable[Any]) -> dict[str, list[int]]:
    """Row indices of each user, users in order of first appearance (user ids are compared as strings)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for row, user in enumerate(users):
        groups[str(user)].append(row)
    return dict(groups)


def _handle_too_few(user: str, have: int, need: int, policy: str, what: str) -> bool:
    """Whether to keep a user with `have < need` pairs (sampling with replacement); raises under "error"."""
    if policy == "error":
        raise ValueError(
            f"User {user!r} has {have} preference pairs but {need} are needed for {what}. Set "
            "`too_few_pairs='skip'` to drop such users or `too_few_pairs='replace'` to sample their pairs with "
            "replacement, or lower `num_targets` / `max_context` / `eval_context_sizes`."
        )
    return policy == "replace" and have > 0


def _balanced_sizes(low: int, high: int, rng: random.Random) -> Iterator[int]:
    """Context sizes uniform on [low, high], drawn in shuffled blocks that hold every size once. Each user's episodes
    then cover all sizes almost equally (the 0-shot prior sees every user equally often), not only in expectation."""
    while True:
        block = list(range(low, high + 1))
        rng.shuffle(block)
        yield from block


def build_train_episodes(
    rows_by_user: dict[str, list[int]],
    num_targets: int,
    min_context: int,
    max_context: int,
    too_few_pairs: str = "skip",
    num_passes: int = 1,
    seed: int = 0,
) -> tuple[list[Episode], list[str]]:
    """Training episodes: each pass shuffles every user's pairs and cuts them into episodes of `num_targets` targets
    (the last one topped up with other pairs of the same user); the context is a random subset of C targets with C
    uniform in `[min_context, max_context]`, balanced per user (each size once per block of `max - min + 1` episodes).

    Returns the episodes and the users skipped for having fewer than `num_targets` pairs.
    """
    rng = random.Random(seed)
    episodes, skipped = [], []
    for user, rows in rows_by_user.items():
        if len(rows) < num_targets and not _handle_too_few(user, len(rows), num_targets, too_few_pairs, "one episode"):
            skipped.append(user)
            continue
        context_sizes = _balanced_sizes(min_context, max_context, rng)
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


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of the training episodes of `epoch` when they are redrawn every epoch: `seed` itself for epoch 0 (the
    first epoch trains on the episodes drawn without redrawing), else a hash of both, the same in every process and
    Python run (unlike `hash`), and far from `seed + 1`, which another run may use."""
    if epoch == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}/{epoch}".encode()).digest()[:8], "little")


def build_eval_episodes(
    rows_by_user: dict[str, list[int]],
    context_sizes: Sequence[int],
    num_targets: int,
    too_few_pairs: str = "skip",
    seed: int = 0,
) -> tuple[list[Episode], list[str]]:
    """Evaluation episodes with contexts disjoint from targets: for every user and every context size C, the user's
    pairs are cut into target chunks of at most `num_targets`, and each chunk gets C context pairs drawn from the
    user's other pairs. Every pair is thus scored once per context size, always as an unseen pair.

    Returns the episodes and the users skipped for having fewer than `max(context_sizes) + 1` pairs.
    """
    rng = random.Random(seed)
    largest = max(context_sizes)
    episodes, skipped = [], []
    for user, rows in rows_by_user.items():
        replace = len(rows) < largest + 1
        if replace:
            keep = _handle_too_few(user, len(rows), largest + 1, too_few_pairs, f"{largest} unseen context pairs")
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


def split_heldout_rows(
    rows_by_user: dict[str, list[int]],
    fraction: float,
    min_pairs: int,
    max_pairs: int,
    min_left: int,
    seed: int = 0,
) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Set aside, per user, pairs that training never sees, for evaluation on unseen pairs of known users.

    A user with n pairs holds out `ceil(fraction * n)` of them, at least `min_pairs` (what one evaluation episode at
    the largest context size needs) and at most `max_pairs`, drawn at random from `seed`; a user who would then keep
    fewer than `min_left` pairs (one training episode) holds out none.

    Returns the rows kept for training and the held-out rows, per user (users with no held-out rows are absent from
    the second dict), each list in dataset order.

    Example:

    ```python
    >>> train, heldout = split_heldout_rows({"a": list(range(20)), "b": [20, 21]}, 0.1, 3, 8, 4, seed=0)
    >>> {user: len(rows) for user, rows in train.items()}, {user: len(rows) for user, rows in heldout.items()}
    ({'a': 17, 'b': 2}, {'a': 3})
    ```
    """
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


def log_skipped(skipped: list[str], rows_by_user: dict[str, list[int]], dataset_name: str) -> None:
    if skipped:
        logger.warning(
            "Skipped %d of %d users of the %s dataset with too few preference pairs (too_few_pairs='skip'): %s%s",
            len(skipped),
            len(rows_by_user),
            dataset_name,
            ", ".join(skipped[:5]),
            " ..." if len(skipped) > 5 else "",
        )
