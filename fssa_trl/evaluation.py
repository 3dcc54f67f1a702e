# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Few-shot evaluation: accuracy on unseen pairs by context size and user, computed with the `evaluate` library."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import datasets
import evaluate
import torch

from .data.episodes import TOO_FEW_PAIRS_POLICIES, build_eval_episodes, group_rows_by_user
from .data.validation import arrow_column, check_preference_dataset
from .modeling.inputs import check_batch_size

logger = logging.getLogger(__name__)


class FewShotAccuracy(evaluate.Metric):
    """Pairwise accuracy: the fraction of pairs whose chosen response gets the higher reward.

    Inputs: `predictions`, the index of the response the model prefers (0: chosen, 1: rejected), and `references`,
    the index the user preferred (always 0 in a chosen/rejected dataset). Defined in code, so it needs no download.
    """

    def _info(self):
        return evaluate.MetricInfo(
            description="Accuracy of a reward model on unseen preference pairs.",
            citation="",
            inputs_description="predictions, references: index of the preferred response",
            features=datasets.Features(
                {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
            ),
        )

    def _compute(self, predictions, references):
        correct = sum(int(p == r) for p, r in zip(predictions, references, strict=True))
        return {"accuracy": correct / max(1, len(predictions)), "num_pairs": len(predictions)}


@dataclass
class FewShotResults:
    """Accuracy on unseen pairs by user and context size: a table to print, save as JSON, and plot.

    `records` holds one dict `{"user", "context_size", "accuracy", "num_pairs"}` per user and context size;
    `skipped_users` one dict `{"user", "num_pairs", "reason"}` per user of the dataset left out of every context size
    (too few pairs), so that a table over fewer users than the dataset has says so.
    """

    records: list[dict] = field(default_factory=list)
    name: str = "model"
    skipped_users: list[dict] = field(default_factory=list)

    @property
    def users(self) -> list[str]:
        return list(dict.fromkeys(r["user"] for r in self.records))

    @property
    def context_sizes(self) -> list[int]:
        return sorted({r["context_size"] for r in self.records})

    def accuracy(self, context_size: int, user: str | None = None) -> float:
        """Accuracy at `context_size` for `user`, or over all pairs of all users when `user` is `None`."""
        rows = [r for r in self.records if r["context_size"] == context_size and user in (None, r["user"])]
        if not rows:
            raise KeyError(f"No result for user={user!r}, context_size={context_size}.")
        pairs = sum(r["num_pairs"] for r in rows)
        return sum(r["accuracy"] * r["num_pairs"] for r in rows) / pairs

    def to_dict(self) -> dict:
        return {"name": self.name, "records": self.records, "skipped_users": self.skipped_users}

    def to_json(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)

    @classmethod
    def from_json(cls, path: str) -> FewShotResults:
        with open(path, encoding="utf-8") as f:
            return cls(**json.load(f))

    def __str__(self) -> str:
        sizes = self.context_sizes
        width = max([len("user"), *(len(u) for u in self.users), len("all users")]) + 2
        lines = [f"{self.name}: accuracy (%) on unseen pairs by context size"]
        lines.append("user".ljust(width) + "".join(f"{s:>8}" for s in sizes))
        for user in [*self.users, None]:
            label = "all users" if user is None else user
            lines.append(label.ljust(width) + "".join(f"{100 * self.accuracy(s, user):8.1f}" for s in sizes))
        return "\n".join(lines + _skipped_lines(self.skipped_users))


def _skipped_lines(skipped: list[dict]) -> list[str]:
    """`not evaluated: ...` lines, one per reason, naming up to five users each."""
    by_reason: dict[str, list[str]] = defaultdict(list)
    for entry in skipped:
        by_reason[entry["reason"]].append(str(entry["user"]))
    lines = []
    for reason, users in by_reason.items():
        shown = ", ".join(users[:5]) + (", ..." if len(users) > 5 else "")
        lines.append(f"not evaluated: {len(users)} user{'s' if len(users) > 1 else ''} ({shown}): {reason}")
    return lines


def plot_few_shot(results: Sequence[FewShotResults], path: str, title: str | None = None) -> None:
    """Accuracy against context size, one panel per user, one line per model; saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    users = list(dict.fromkeys(u for r in results for u in r.users))
    fig, axes = plt.subplots(1, len(users), figsize=(4.2 * len(users), 3.4), squeeze=False, sharey=True)
    for ax, user in zip(axes[0], users, strict=True):
        for result in results:
            if user not in result.users:
                continue
            sizes = result.context_sizes
            ax.plot(sizes, [100 * result.accuracy(s, user) for s in sizes], marker="o", label=result.name)
        ax.axhline(50, color="grey", lw=0.8, ls=":")
        ax.set_title(f"user: {user}")
        ax.set_xlabel("context pairs")
        ax.set_xticks(results[0].context_sizes)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy on unseen pairs (%)")
    axes[0][-1].legend(loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _target_rewards(model, dataset, episodes, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(chosen, rejected) rewards of every episode's targets under the latent of its context."""
    prompts = list(dataset["prompt"]) if "prompt" in dataset.column_names else [""] * len(dataset)
    embedded_targets = model.scores_embeddings  # responses given to `score` as precomputed embeddings
    if embedded_targets:
        chosen_col, rejected_col = list(dataset["chosen_embedding"]), list(dataset["rejected_embedding"])
    else:
        chosen_col, rejected_col = list(dataset["chosen"]), list(dataset["rejected"])

    def scores(rows, latent):
        targets_p = [prompts[i] for i in rows]
        chosen = model.score(targets_p, [chosen_col[i] for i in rows], latent=latent, batch_size=batch_size)
        rejected = model.score(targets_p, [rejected_col[i] for i in rows], latent=latent, batch_size=batch_size)
        return chosen, rejected

    if model.is_context_free:  # score every pair once
        chosen, rejected = scores(list(range(len(dataset))), None)
        return [(chosen[e.target_rows], rejected[e.target_rows]) for e in episodes]

    if model.embedder is None:  # contexts as precomputed embeddings
        context_chosen, context_rejected = list(dataset["chosen_embedding"]), list(dataset["rejected_embedding"])

        def context_of(rows):
            return [{"chosen_embedding": context_chosen[i], "rejected_embedding": context_rejected[i]} for i in rows]

    else:

        def context_of(rows):
            return [{"prompt": prompts[i], "chosen": chosen_col[i], "rejected": rejected_col[i]} for i in rows]

    return [scores(e.target_rows, model.latent(context_of(e.context_rows))) for e in episodes]


def _check_arguments(context_sizes, num_targets, too_few_pairs, batch_size, num_draws) -> list[int]:
    """The distinct context sizes, in order; a `ValueError` names a bad argument."""
    if too_few_pairs not in TOO_FEW_PAIRS_POLICIES:
        raise ValueError(f"`too_few_pairs` must be one of {TOO_FEW_PAIRS_POLICIES}, got {too_few_pairs!r}.")
    sizes = list(context_sizes)
    bad = [s for s in sizes if isinstance(s, bool) or not isinstance(s, int) or s < 0]
    if not sizes or bad:
        raise ValueError(f"`context_sizes` must be a non-empty list of ints >= 0, got {sizes!r}.")
    for name, value in (("num_targets", num_targets), ("num_draws", num_draws)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be an int >= 1, got {value!r}.")
    check_batch_size(batch_size)
    return list(dict.fromkeys(sizes))  # a size given twice would score the same pairs twice


def _skipped_users(skipped: list[str], rows_by_user: dict, largest: int, too_few_pairs: str) -> list[dict]:
    """`{"user", "num_pairs", "reason"}` of each skipped user, logged once per evaluation."""
    if too_few_pairs == "replace":
        reason = "a single pair: no unseen context pair besides the target, even with too_few_pairs='replace'"
    else:
        reason = (
            f"at most {largest} pairs, fewer than the {largest + 1} that {largest} context pairs and an unseen target "
            "need (too_few_pairs='skip'; 'replace' draws contexts with replacement)"
        )
    entries = [{"user": user, "num_pairs": len(rows_by_user[user]), "reason": reason} for user in skipped]
    if entries:
        logger.warning(
            "Few-shot evaluation left out %d of %d users at every context size (kept in `FewShotResults.skipped_users`): "
            "%s",
            len(entries),
            len(rows_by_user),
            "; ".join(_skipped_lines(entries)),
        )
    return entries


def evaluate_few_shot(
    model,
    dataset: datasets.Dataset,
    context_sizes: Sequence[int] = (0, 1, 3, 5, 10),
    num_targets: int = 16,
    user_column: str = "user_id",
    too_few_pairs: str = "skip",
    seed: int = 0,
    batch_size: int = 16,
    name: str | None = None,
    num_draws: int = 1,
) -> FewShotResults:
    """Accuracy on unseen pairs by context size and user.

    For every user and context size C, the user's pairs are cut into chunks of at most `num_targets` targets, and
    each chunk is scored under the latent inferred from C other pairs of the same user (never from the targets). So
    every pair is scored once per context size. Accuracy is computed with an `evaluate` metric ([`FewShotAccuracy`]).

    The dataset is checked as the trainers check theirs (a missing column, an empty or `None` text, a NaN embedding
    raise a `ValueError` naming the column and the row) before anything is scored.

    Args:
        model ([`SteerableRewardModel`], [`SteerablePolicy`] or an NP trainer): the model; a trainer is evaluated
            through `trainer.steerable_model()`. A [`ContextFreeRewardModel`] wrapping a plain reward model gives a
            baseline.
        dataset (`Dataset`): preference pairs (`prompt`, `chosen`, `rejected`, the user column); with precomputed
            embeddings, `chosen_embedding` and `rejected_embedding`.
        context_sizes (`Sequence[int]`): context sizes to evaluate; a size given twice is evaluated once.
        num_targets (`int`): targets per context draw.
        user_column (`str`): the user column.
        too_few_pairs (`str`): users with at most `max(context_sizes)` pairs: `"skip"` leaves them out of every
            context size (so that every size averages over the same users), `"replace"` draws their contexts with
            replacement (a user with a single pair is still left out), `"error"` raises. Users left out are listed in
            `FewShotResults.skipped_users` (and its JSON and table) and logged once.
        seed (`int`): seed of the context draws.
        batch_size (`int`): sequences per forward pass.
        name (`str`, *optional*): label of the results (in tables and plots).
        num_draws (`int`): independent context draws per target chunk (each pair is scored `num_draws` times per
            context size); more draws average out which few pairs happened to form a context.

    Returns:
        [`FewShotResults`]
    """
    if hasattr(model, "steerable_model"):
        model = model.steerable_model()
    sizes = _check_arguments(context_sizes, num_targets, too_few_pairs, batch_size, num_draws)
    if user_column not in dataset.column_names:
        raise ValueError(f"The dataset has no user column {user_column!r}; set `user_column`.")
    check_preference_dataset(
        dataset,
        dataset_name="evaluation",
        user_column=user_column,
        precomputed_embeddings=not model.is_context_free and model.embedder is None,
        text_required=not model.scores_embeddings,
    )
    rows_by_user = group_rows_by_user(arrow_column(dataset, user_column))
    episodes = []
    for draw in range(num_draws):
        drawn, skipped = build_eval_episodes(rows_by_user, sizes, num_targets, too_few_pairs, seed + draw)
        episodes += drawn
    skipped_users = _skipped_users(skipped, rows_by_user, max(sizes), too_few_pairs)
    was_training = model.model.training
    model.model.eval()
    predictions: dict[tuple[str, int], list[int]] = defaultdict(list)
    for episode, (chosen, rejected) in zip(
        episodes, _target_rewards(model, dataset, episodes, batch_size), strict=True
    ):
        predictions[(episode.user, len(episode.context_rows))] += (chosen <= rejected).int().tolist()
    model.model.train(was_training)
    metric = FewShotAccuracy()
    records = []
    for (user, size), preds in predictions.items():
        result = metric.compute(predictions=preds, references=[0] * len(preds))
        records.append({"user": user, "context_size": size, **result})
    order = {user: i for i, user in enumerate(rows_by_user)}
    records.sort(key=lambda r: (order[r["user"]], r["context_size"]))
    return FewShotResults(records, name or type(model.model).__name__, skipped_users)
