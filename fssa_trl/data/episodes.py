# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Users and episodes: how rows of a preference dataset become few-shot training and evaluation examples.

An *episode* is one user's set of target pairs plus a context set of that user's pairs. During training the context is
a random subset of the targets (as in the paper); for evaluation it is disjoint from them, so accuracy is measured on
unseen pairs. Episodes are drawn once, from a seed, when a dataset is prepared: they are ordinary dataset rows, so the
Trainer's sampler, sharding and checkpoint resume treat them like any other example. Training episodes may instead be
redrawn every epoch, each epoch's from its own seed ([`epoch_seed`]).

At scale, users' rows are one grouped array ([`UserRows`]) and episodes flat arrays ([`EpisodeArrays`]). The draws
stay Python's `random.Random`, called in the same order with the same arguments as when episodes were lists of rows:
the draws are of positions within a user's rows (`sample(range(n), k)` draws the positions `sample(rows, k)` picks),
so the episodes of a seed did not change.
"""

from __future__ import annotations

import hashlib
import logging
import random
from array import array
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

logger = logging.getLogger(__name__)

TOO_FEW_PAIRS_POLICIES = ("skip", "replace", "error")


@dataclass
class Episode:
    """Row indices of one user's episode. `context_rows` may be empty (0-shot)."""

    user: str
    target_rows: list[int]
    context_rows: list[int]
    target_in_context: list[bool] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------- users
class UserRows:
    """The rows of every user: `rows[offsets[u]:offsets[u + 1]]` are user `users[u]`'s, in dataset order; users in
    order of first appearance, compared as strings (`3` and `"3"` are one user).

    Args:
        users (`list[str]`): the users.
        rows (`np.ndarray`): `(N,)` int64 row indices, grouped by user.
        offsets (`np.ndarray`): `(U + 1,)` int64 start of each user's rows in `rows`.
    """

    def __init__(self, users: list[str], rows: np.ndarray, offsets: np.ndarray):
        self.users, self.rows, self.offsets = users, rows, offsets

    @classmethod
    def from_column(cls, column: pa.Array | pa.ChunkedArray) -> UserRows:
        """Group the rows of a user column (Arrow), in Arrow and NumPy."""
        column = pa.chunked_array([column]) if isinstance(column, pa.Array) else column
        values = pc.unique(column)  # in order of first appearance, a null included
        codes = pc.index_in(column, value_set=values, skip_nulls=False).combine_chunks()
        if codes.null_count:  # a value `unique` gave and `index_in` did not find (NaN): group in Python
            return UserRows.from_mapping(group_rows_by_user(column.to_pylist()))
        codes = codes.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        names = [str(value) for value in values.to_pylist()]  # as `str(user)` did: None -> "None", 3 -> "3"
        first = {}
        merged = np.array([first.setdefault(name, len(first)) for name in names], dtype=np.int64)
        if len(first) < len(names):  # values with one name: None and "None"
            codes, names = merged[codes], list(first)
        counts = np.bincount(codes, minlength=len(names))
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(names, np.argsort(codes, kind="stable").astype(np.int64), offsets)

    @classmethod
    def from_mapping(cls, rows_by_user: Mapping[str, Sequence[int]]) -> UserRows:
        """From `{user: row indices}` (each user's rows distinct), users and rows in the mapping's order."""
        users = list(rows_by_user)
        parts = [np.asarray(rows_by_user[user], dtype=np.int64).reshape(-1) for user in users]
        counts = [len(part) for part in parts]
        rows = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return cls(users, rows, np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64))

    def __len__(self) -> int:
        return len(self.users)

    @property
    def counts(self) -> np.ndarray:
        """`(U,)` pairs of every user."""
        return np.diff(self.offsets)

    def as_dict(self) -> dict[str, list[int]]:
        bounds = zip(self.users, self.offsets[:-1].tolist(), self.offsets[1:].tolist(), strict=True)
        return {user: self.rows[a:b].tolist() for user, a, b in bounds}


def group_rows_by_user(users: Iterable[Any]) -> dict[str, list[int]]:
    """Row indices of each user, users in order of first appearance (user ids are compared as strings)."""
    if isinstance(users, (pa.Array, pa.ChunkedArray)):
        return UserRows.from_column(users).as_dict()
    groups: dict[str, list[int]] = defaultdict(list)
    for row, user in enumerate(users):
        groups[str(user)].append(row)
    return dict(groups)


def _user_rows(rows_by_user: Mapping[str, Sequence[int]] | UserRows) -> UserRows:
    return rows_by_user if isinstance(rows_by_user, UserRows) else UserRows.from_mapping(rows_by_user)


# -------------------------------------------------------------------------------------------------------- episodes
@dataclass
class EpisodeArrays:
    """Episodes as flat arrays. Episode e is user `users[user[e]]`'s; its target rows are
    `targets[target_offsets[e]:target_offsets[e + 1]]` (flags in `target_in_context` alongside) and its context rows
    `contexts[context_offsets[e]:context_offsets[e + 1]]`. Rows index the dataset the episodes were drawn from."""

    users: list[str]
    user: np.ndarray  # (E,)
    targets: np.ndarray  # (sum of target counts,)
    target_offsets: np.ndarray  # (E + 1,)
    contexts: np.ndarray  # (sum of context sizes,)
    context_offsets: np.ndarray  # (E + 1,)
    target_in_context: np.ndarray  # (sum of target counts,) bool

    def __len__(self) -> int:
        return len(self.user)

    def episode(self, index: int) -> Episode:
        t0, t1 = self.target_offsets[index : index + 2]
        c0, c1 = self.context_offsets[index : index + 2]
        return Episode(
            self.users[self.user[index]],
            self.targets[t0:t1].tolist(),
            self.contexts[c0:c1].tolist(),
            self.target_in_context[t0:t1].tolist(),
        )

    def to_episodes(self) -> list[Episode]:
        return [self.episode(i) for i in range(len(self))]


def _numpy(values: array) -> np.ndarray:
    """A view of an int64 `array` (which it keeps alive; the array must not grow any more)."""
    return np.frombuffer(values, dtype=np.int64) if len(values) else np.zeros(0, dtype=np.int64)


def _offsets(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


class _EpisodeWriter:
    """Collects drawn episodes as positions within their user's rows (Python arrays of int64, no object per row);
    [`finish`] turns them into dataset rows. The draw loops call the bound `append` / `extend` methods directly."""

    def __init__(self):
        self.user, self.targets, self.target_lengths = array("q"), array("q"), array("q")
        self.context, self.context_lengths = array("q"), array("q")

    def methods(self):
        """`append` of `user`, `extend` of `targets`, `append` of `target_lengths`, `extend` of `context` (positions
        within the user's rows, or in training slots of the targets), `append` of `context_lengths`."""
        return (
            self.user.append,
            self.targets.extend,
            self.target_lengths.append,
            self.context.extend,
            self.context_lengths.append,
        )

    def finish(self, groups: UserRows, context_in_targets: bool) -> EpisodeArrays:
        user = _numpy(self.user)
        target_lengths, context_lengths = _numpy(self.target_lengths), _numpy(self.context_lengths)
        target_offsets, context_offsets = _offsets(target_lengths), _offsets(context_lengths)
        index = np.repeat(groups.offsets[user], target_lengths)  # position in `groups.rows` of every target
        index += _numpy(self.targets)
        targets = groups.rows[index]
        in_context = np.zeros(len(targets), dtype=bool)
        if context_in_targets:  # context slots -> positions in `targets`
            index = np.repeat(target_offsets[:-1], context_lengths)
            index += _numpy(self.context)
            contexts = targets[index]
            in_context[index] = True
        else:
            index = np.repeat(groups.offsets[user], context_lengths)
            index += _numpy(self.context)
            contexts = groups.rows[index]
        return EpisodeArrays(groups.users, user, targets, target_offsets, contexts, context_offsets, in_context)


def _complement(taken: list[int], picks: list[int]) -> list[int]:
    """The `picks`-th positions (in increasing order) of `range(n)` without the sorted positions `taken`: what
    indexing the user's rows without the taken ones (`[r for r in rows if r not in taken]`) gave."""
    out = []
    for position in picks:
        for t in taken:
            if t > position:
                break
            position += 1
        out.append(position)
    return out


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


def draw_train_episodes(
    groups: UserRows,
    num_targets: int,
    min_context: int,
    max_context: int,
    too_few_pairs: str = "skip",
    num_passes: int = 1,
    seed: int = 0,
) -> tuple[EpisodeArrays, list[str]]:
    """[`build_train_episodes`] as arrays (what the trainers use)."""
    rng = random.Random(seed)
    shuffle, sample, choice = rng.shuffle, rng.sample, rng.choice
    slots = range(num_targets)
    writer, skipped = _EpisodeWriter(), []
    add_user, add_targets, add_target_count, add_context, add_context_size = writer.methods()
    for index, (user, n) in enumerate(zip(groups.users, groups.counts.tolist(), strict=True)):
        if n < num_targets and not _handle_too_few(user, n, num_targets, too_few_pairs, "one episode"):
            skipped.append(user)
            continue
        context_sizes = _balanced_sizes(min_context, max_context, rng)
        positions = range(n)
        for _ in range(num_passes):
            if n < num_targets:  # "replace": sample with replacement
                chunks = [[choice(positions) for _ in slots]]
            else:
                order = list(positions)
                shuffle(order)
                chunks = [order[i : i + num_targets] for i in range(0, n, num_targets)]
                last = chunks[-1]
                if len(last) < num_targets:  # top up from this user's other pairs
                    last += _complement(sorted(last), sample(range(n - len(last)), num_targets - len(last)))
            for targets in chunks:
                size = next(context_sizes)
                add_user(index)
                add_targets(targets)
                add_target_count(num_targets)
                add_context(sorted(sample(slots, size)))
                add_context_size(size)
    return writer.finish(groups, context_in_targets=True), skipped


def build_train_episodes(
    rows_by_user: Mapping[str, Sequence[int]] | UserRows,
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
    episodes, skipped = draw_train_episodes(
        _user_rows(rows_by_user), num_targets, min_context, max_context, too_few_pairs, num_passes, seed
    )
    return episodes.to_episodes(), skipped


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of the training episodes of `epoch` when they are redrawn every epoch: `seed` itself for epoch 0 (the
    first epoch trains on the episodes drawn without redrawing), else a hash of both, the same in every process and
    Python run (unlike `hash`), and far from `seed + 1`, which another run may use."""
    if epoch == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}/{epoch}".encode()).digest()[:8], "little")


def draw_eval_episodes(
    groups: UserRows,
    context_sizes: Sequence[int],
    num_targets: int,
    too_few_pairs: str = "skip",
    seed: int = 0,
) -> tuple[EpisodeArrays, list[str]]:
    """[`build_eval_episodes`] as arrays (what the trainers use)."""
    rng = random.Random(seed)
    shuffle, sample, choice = rng.shuffle, rng.sample, rng.choice
    largest = max(context_sizes)
    writer, skipped = _EpisodeWriter(), []
    add_user, add_targets, add_target_count, add_context, add_context_size = writer.methods()
    for index, (user, n) in enumerate(zip(groups.users, groups.counts.tolist(), strict=True)):
        replace = n < largest + 1
        if replace:
            keep = _handle_too_few(user, n, largest + 1, too_few_pairs, f"{largest} unseen context pairs")
            if not keep or n < 2:  # even with replacement, unseen context needs one pair besides the target
                skipped.append(user)
                continue
        for size in context_sizes:
            order = list(range(n))
            shuffle(order)
            chunk = max(1, min(num_targets, n - (1 if replace else size)))
            for start in range(0, n, chunk):
                targets = order[start : start + chunk]
                others = range(n - len(targets))
                picks = [choice(others) for _ in range(size)] if replace else sample(others, size)
                add_user(index)
                add_targets(targets)
                add_target_count(len(targets))
                add_context(_complement(sorted(targets), picks))
                add_context_size(size)
    return writer.finish(groups, context_in_targets=False), skipped


def build_eval_episodes(
    rows_by_user: Mapping[str, Sequence[int]] | UserRows,
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
    episodes, skipped = draw_eval_episodes(_user_rows(rows_by_user), context_sizes, num_targets, too_few_pairs, seed)
    return episodes.to_episodes(), skipped


# ------------------------------------------------------------------------------------------------- held-out pairs
def heldout_mask(
    groups: UserRows, fraction: float, min_pairs: int, max_pairs: int, min_left: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Which of `groups.rows` [`split_heldout_rows`] holds out (a `(N,)` bool mask), and which users hold out pairs
    (a `(U,)` bool mask)."""
    rng = random.Random(seed)
    counts = groups.counts
    held = np.minimum(np.maximum(np.ceil(fraction * counts), min_pairs), max_pairs).astype(np.int64)
    holds = counts - held >= min_left
    holders = np.flatnonzero(holds)
    picked = array("q")
    for n, count in zip(counts[holders].tolist(), held[holders].tolist(), strict=True):
        picked.extend(rng.sample(range(n), count))
    mask = np.zeros(len(groups.rows), dtype=bool)
    mask[np.repeat(groups.offsets[holders], held[holders]) + _numpy(picked)] = True
    return mask, holds


def split_heldout_rows(
    rows_by_user: Mapping[str, Sequence[int]] | UserRows,
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
    groups = _user_rows(rows_by_user)
    mask, holds = heldout_mask(groups, fraction, min_pairs, max_pairs, min_left, seed)
    kept, heldout = {}, {}
    bounds = zip(groups.users, groups.offsets[:-1].tolist(), groups.offsets[1:].tolist(), holds.tolist(), strict=True)
    for user, a, b, holder in bounds:
        rows, held = groups.rows[a:b], mask[a:b]
        kept[user] = rows[~held].tolist()
        if holder:
            heldout[user] = rows[held].tolist()
    return kept, heldout


def skipped_users_message(skipped: Sequence[str], num_users: int, dataset_name: str) -> str:
    return (
        f"Skipped {len(skipped)} of {num_users} users of the {dataset_name} dataset with too few preference pairs "
        f"(too_few_pairs='skip'): {', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}"
    )


def log_skipped(skipped: list[str], rows_by_user: Mapping | UserRows, dataset_name: str) -> None:
    if skipped:
        logger.warning("%s", skipped_users_message(skipped, len(rows_by_user), dataset_name))


# Why pairs of a dataset can be removed before its episodes are drawn: the keys of a trainer's `np_dropped[name]`
# that count pairs, and what each means.
DROP_REASONS = {
    "pairs_too_long": "chosen or rejected longer than `max_length` tokens (filtered out by TRL's RewardTrainer)",
    "prompts_too_long": "a prompt of `max_length` tokens or more (filtered out by TRL's DPOTrainer)",
}


def dropped_pairs_message(dropped: Mapping[str, Any], dataset_name: str) -> str:
    """What [`DROP_REASONS`] removed from a dataset before its episodes were drawn, or `""` when nothing was."""
    reasons = [(reason, int(dropped.get(reason, 0))) for reason in DROP_REASONS]
    reasons = [(reason, count) for reason, count in reasons if count]
    if not reasons:
        return ""
    counts = "; ".join(f"{count} with {DROP_REASONS[reason]}" for reason, count in reasons)
    return (
        f"{sum(count for _, count in reasons)} pairs of the {dataset_name} dataset were removed before its episodes "
        f"were drawn: {counts}. Raise `max_length` to keep them."
    )


def log_dropped(dropped: Mapping[str, Any], num_users: int, dataset_name: str) -> None:
    """One warning for everything left out of a dataset's episodes: the pairs removed before they were drawn
    ([`DROP_REASONS`]) and the users skipped for too few pairs (`users_too_few_pairs`, with their
    `pairs_of_skipped_users` pairs); nothing when nothing was left out."""
    parts = [dropped_pairs_message(dropped, dataset_name)]
    skipped = dropped.get("users_too_few_pairs") or []
    if skipped:
        pairs = int(dropped.get("pairs_of_skipped_users", 0))
        parts.append(f"{skipped_users_message(skipped, num_users, dataset_name)} (their {pairs} pairs are left out).")
    message = " ".join(part for part in parts if part)
    if message:
        logger.warning("%s The counts are in the trainer's `np_dropped[%r]`.", message, dataset_name)
