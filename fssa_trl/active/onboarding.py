# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Simulated onboarding: new users who answer the suggested questions truthfully from their own pool, and the
held-out accuracy after each question, by strategy ([`simulate_onboarding`], [`OnboardingCurves`])."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from datasets import Dataset

from ..modeling.steerable import SteerableModel
from .selection import STRATEGIES, _answered, _candidate_form, suggest_queries


@dataclass
class OnboardingCurves:
    """Held-out accuracy of simulated new users after each question, per strategy: what [`simulate_onboarding`]
    returns. `records` holds one dict `{"strategy", "user", "seed", "questions", "accuracy"}` per point of a curve
    (`questions` from 0, the empty context, to the number asked)."""

    records: list[dict] = field(default_factory=list)
    name: str = "model"

    def __add__(self, other: OnboardingCurves) -> OnboardingCurves:
        return OnboardingCurves(self.records + other.records, self.name)

    @property
    def strategies(self) -> list[str]:
        return list(dict.fromkeys(r["strategy"] for r in self.records))

    @property
    def max_questions(self) -> int:
        return max(r["questions"] for r in self.records)

    def accuracies(self, strategy: str, questions: int) -> np.ndarray:
        """Accuracy of every simulated (user, seed) after `questions` questions."""
        values = [r["accuracy"] for r in self.records if r["strategy"] == strategy and r["questions"] == questions]
        if not values:
            raise KeyError(f"No result for strategy={strategy!r} after {questions} questions.")
        return np.array(values)

    def mean(self, strategy: str, questions: int) -> float:
        """Mean accuracy over users and seeds."""
        return float(self.accuracies(strategy, questions).mean())

    def std(self, strategy: str, questions: int) -> float:
        """Standard deviation of the accuracy over users and seeds."""
        return float(self.accuracies(strategy, questions).std())

    def questions_to_match(self, strategy: str, reference: str = "random", at: int = 10) -> int | None:
        """The fewest questions after which `strategy`'s mean accuracy reaches `reference`'s after `at` (`None` if it
        never does within the curve)."""
        target = self.mean(reference, at)
        for questions in range(self.max_questions + 1):
            if self.mean(strategy, questions) >= target - 1e-12:
                return questions
        return None

    def table(self, questions: Sequence[int] = (0, 1, 2, 3, 5, 10)) -> str:
        """Markdown table of mean ± std accuracy (%) by strategy and number of questions."""
        questions = [q for q in questions if q <= self.max_questions]
        lines = ["| strategy | " + " | ".join(f"{q} q" for q in questions) + " |", "|---" * (len(questions) + 1) + "|"]
        for strategy in self.strategies:
            cells = [f"{100 * self.mean(strategy, q):.1f} ± {100 * self.std(strategy, q):.1f}" for q in questions]
            lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_json(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"name": self.name, "records": self.records}, f, indent=2)

    def plot(self, path: str | None = None, title: str | None = None, ax=None) -> None:
        """Mean held-out accuracy against questions asked, one line per strategy, shaded ± one standard deviation over
        users and seeds; saved as a PNG at `path` (or drawn on `ax`, then not saved)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = None
        if ax is None:
            fig, ax = plt.subplots(figsize=(5, 3.6))
        questions = list(range(self.max_questions + 1))
        for strategy in self.strategies:
            mean = np.array([100 * self.mean(strategy, q) for q in questions])
            std = np.array([100 * self.std(strategy, q) for q in questions])
            ax.plot(questions, mean, marker="o", ms=3, label=strategy)
            ax.fill_between(questions, mean - std, mean + std, alpha=0.15)
        ax.set_xlabel("questions asked")
        ax.set_ylabel("held-out accuracy (%)")
        ax.set_title(title or self.name)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
        if fig is not None:
            fig.tight_layout()
            fig.savefig(path, dpi=120)
            plt.close(fig)


def split_users(dataset: Dataset, pool_fraction: float = 0.5, seed: int = 0, user_column: str = "user_id"):
    """Each user's rows split at random into a question pool (`pool_fraction`) and held-out pairs: `(pool, heldout)`."""
    rng = np.random.default_rng(seed)
    pool, heldout = [], []
    users = np.array(dataset[user_column])
    for user in dict.fromkeys(users.tolist()):
        rows = rng.permutation(np.flatnonzero(users == user))
        cut = int(round(pool_fraction * len(rows)))
        pool += rows[:cut].tolist()
        heldout += rows[cut:].tolist()
    return dataset.select(sorted(pool)), dataset.select(sorted(heldout))


def _pairs_of(model: SteerableModel, dataset: Dataset) -> list[dict]:
    """The rows of `dataset` as pairs in the form `model` scores: texts (with the prompt, if any) or embeddings."""
    columns = list(_candidate_form(model))
    if "prompt" in dataset.column_names and not model.scores_embeddings:
        columns.insert(0, "prompt")
    return dataset.select_columns(columns).to_list()


def _accuracy(model: SteerableModel, rows: list[dict], context: list, batch_size: int) -> float:
    """Fraction of `rows` whose chosen response gets the higher reward under the latent of `context`."""
    a_name, b_name = _candidate_form(model)
    latent = None if model.is_context_free else model.latent(context)
    prompts = [r.get("prompt", "") for r in rows]
    chosen = model.score(prompts, [r[a_name] for r in rows], latent=latent, batch_size=batch_size)
    rejected = model.score(prompts, [r[b_name] for r in rows], latent=latent, batch_size=batch_size)
    return float((chosen > rejected).double().mean())


def simulate_onboarding(
    model: SteerableModel,
    pool: Dataset,
    heldout: Dataset,
    strategies: Sequence[str] = STRATEGIES,
    num_questions: int = 10,
    seed: int = 0,
    user_column: str = "user_id",
    num_samples: int = 32,
    batch_size: int = 16,
    name: str | None = None,
) -> OnboardingCurves:
    """Onboard every user of `heldout` from an empty context, one question at a time.

    For each user and strategy, [`suggest_queries`] picks one pair of that user's rows of `pool` (shown with the two
    responses in a random order), the simulated user answers it as labelled (`chosen` is their true preference), the
    pair joins the context and leaves the pool; after each question the model, with that context, is scored on the
    user's `heldout` pairs (accuracy: the chosen response gets the higher reward).

    Args:
        model ([`SteerableRewardModel`] or [`SteerablePolicy`]): the model.
        pool (`Dataset`): the questions that may be asked, with the user column (and embedding columns for a model
            on precomputed embeddings).
        heldout (`Dataset`): the pairs accuracy is measured on (never asked).
        strategies (`Sequence[str]`): strategies of [`suggest_queries`] to compare.
        num_questions (`int`): questions per user (fewer if the pool runs out).
        seed (`int`): seed of the orientations shown, the samples of z and `"random"`.
        user_column (`str`): the user column.
        num_samples, batch_size: as in [`suggest_queries`].
        name (`str`, *optional*): label of the curves.

    Returns:
        [`OnboardingCurves`]

    Example:

    ```python
    >>> pool, heldout = split_users(test_dataset, pool_fraction=0.5, seed=0)  # per user: questions / held-out
    >>> curves = simulate_onboarding(rm, pool, heldout, ("bald", "random"), num_questions=10)
    >>> print(curves.table()); curves.plot("onboarding.png")
    >>> curves.questions_to_match("bald", "random", at=10)  # questions BALD needs for random's accuracy after 10
    ```
    """
    records = []
    pool_users, heldout_users = np.array(pool[user_column]), np.array(heldout[user_column])
    for u, user in enumerate(dict.fromkeys(heldout_users.tolist())):
        truth = _pairs_of(model, pool.select(np.flatnonzero(pool_users == user)))
        targets = _pairs_of(model, heldout.select(np.flatnonzero(heldout_users == user)))
        flips = np.random.default_rng([seed, u]).random(len(truth)) < 0.5
        shown = [_answered(model, pair, not flip) for pair, flip in zip(truth, flips, strict=True)]
        for strategy in strategies:
            remaining, context = list(range(len(truth))), []
            for questions in range(num_questions + 1):
                accuracy = _accuracy(model, targets, context, batch_size)
                records.append(
                    {"strategy": strategy, "user": user, "seed": seed, "questions": questions, "accuracy": accuracy}
                )
                if questions == num_questions or not remaining:  # an exhausted pool: the curve stays flat
                    continue
                ask = suggest_queries(
                    model,
                    [shown[i] for i in remaining],
                    context,
                    strategy=strategy,
                    num_samples=num_samples,
                    seed=seed * 1000 + questions,
                    batch_size=batch_size,
                )
                context.append(truth[remaining.pop(ask.indices[0])])
    return OnboardingCurves(records, name or type(model).__name__)
