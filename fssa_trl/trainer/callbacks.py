# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Held-out evaluation during training, and the warning it exists for: a model that memorises its training pairs
instead of reading the user from the context looks like a steerable model on every training metric."""

from __future__ import annotations

import contextlib
import dataclasses
import random
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

HELDOUT_PREFIX = "heldout"
# How far the training 0-shot accuracy must exceed chance and the held-out 0-shot accuracy, at how many held-out
# evaluations in a row, for a `MemorisationWarning` (see `memorisation_evidence`).
MEMORISATION_GAP = 0.1
MEMORISATION_EVALUATIONS = 3


class MemorisationWarning(UserWarning):
    """Raised (once per training run) by [`HeldoutEvaluationCallback`] when the model ranks the training pairs it has
    seen better than held-out pairs while context does not help on the held-out pairs."""


@contextlib.contextmanager
def preserved_rng_state() -> Iterator[None]:
    """Restore the Python, NumPy and torch (CPU and CUDA) random states on exit.

    An evaluation inside the training loop draws from them (each DataLoader iterator takes a seed from torch's RNG);
    training then draws different dropout masks and Gaussian latents than it would have without the evaluation, and
    a run would depend on how often it is evaluated.
    """
    state = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.random.set_rng_state(state[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def memorisation_evidence(
    log_history: list[dict[str, Any]],
    largest_context: int,
    threshold: float,
    gap: float = MEMORISATION_GAP,
    evaluations: int = MEMORISATION_EVALUATIONS,
) -> dict[str, float] | None:
    """The numbers behind a [`MemorisationWarning`], or `None` when the logs do not show memorisation.

    Each held-out evaluation in `log_history` is paired with the last training log before it. Memorisation is shown
    when, at each of the last `evaluations` held-out evaluations in a row,

    - the held-out context gain, `heldout_accuracy_ctx{largest_context} - heldout_accuracy_ctx0`, is below
      `threshold`: context does not help on pairs the model never saw, and
    - the training `accuracy_ctx0` (0-shot accuracy on pairs the model has seen) exceeds both chance (0.5) and
      `heldout_accuracy_ctx0` by more than `gap`: the model knows its training pairs, not its users.

    The second condition keeps a population whose users all agree (context useless, but 0-shot accuracy as high on
    held-out pairs as on training pairs) from being reported, and `gap` and the run of `evaluations` keep the noise
    of small logging windows (a training `accuracy_ctx0` pooled over a few 0-shot episodes) from being reported.
    """
    low, high = f"{HELDOUT_PREFIX}_accuracy_ctx0", f"{HELDOUT_PREFIX}_accuracy_ctx{largest_context}"
    train_accuracy, streak, evidence = None, 0, None
    for entry in log_history:
        if "accuracy_ctx0" in entry:
            train_accuracy = entry["accuracy_ctx0"]
        if low not in entry or high not in entry:
            continue
        gain = entry[high] - entry[low]
        memorising = train_accuracy is not None and gain < threshold and train_accuracy > max(0.5, entry[low]) + gap
        streak = streak + 1 if memorising else 0
        evidence = dict(
            step=entry.get("step"), train_accuracy=train_accuracy, heldout_ctx0=entry[low], heldout_gain=gain
        )
    return evidence if streak >= evaluations else None


class HeldoutEvaluationCallback(TrainerCallback):
    """Evaluates an NP trainer's held-out episodes (`trainer.heldout_dataset`) at every step at which the trainer
    logs, as `trainer.evaluate(..., metric_key_prefix="heldout")`, and raises a [`MemorisationWarning`] once when
    [`memorisation_evidence`] finds memorisation in the logs.

    The evaluation leaves training as it found it: the model back in training mode, the random states restored, the
    Trainer's pending log, evaluation and save of the step untouched. So a run gives the same weights with or without
    it, and resumes exactly. The warning reads `state.log_history`, which a resumed run restores.

    With several processes (DDP, DeepSpeed ZeRO-3) every process runs the evaluation at the same step, as ZeRO-3's
    collective parameter gathers need, and evaluates every held-out batch (`NPTrainerMixin.get_eval_dataloader`), so
    every process logs the same held-out metrics.

    NP trainers add it themselves when they hold out pairs (`heldout_fraction`); set `trainer.heldout_dataset = None`
    before `train()` to skip the evaluations.

    Args:
        trainer: the NP trainer.
        largest_context (`int`): the context size whose held-out accuracy is compared with 0-shot.
        threshold (`float`): see [`memorisation_evidence`]; `0` never warns.
    """

    def __init__(self, trainer, largest_context: int, threshold: float):
        self.trainer = trainer
        self.largest_context = largest_context
        self.threshold = threshold
        self._evaluated_step = None
        self._warned = False

    def on_step_end(self, args, state, control, **kwargs):
        return self._evaluate(state, control)

    def on_epoch_end(self, args, state, control, **kwargs):  # `logging_strategy="epoch"`
        return self._evaluate(state, control)

    def _evaluate(self, state, control):
        # `DefaultFlowCallback`, first in the list, has already decided whether the Trainer logs at this step.
        trainer = self.trainer
        if not control.should_log or trainer.heldout_dataset is None or state.global_step == self._evaluated_step:
            return control
        self._evaluated_step = state.global_step
        flags = dataclasses.asdict(control)  # `evaluate` clears `should_log` and `should_evaluate`
        training = trainer.model.training
        try:
            with preserved_rng_state():
                trainer.evaluate(trainer.heldout_dataset, metric_key_prefix=HELDOUT_PREFIX)
        finally:
            for model in {id(m): m for m in (trainer.model, trainer.model_wrapped)}.values():
                model.train(training)
            for name, value in flags.items():
                setattr(control, name, value)
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._warned or self.threshold <= 0 or not state.is_world_process_zero:
            return
        evidence = memorisation_evidence(state.log_history, self.largest_context, self.threshold)
        if evidence is not None:
            self._warned = True
            warnings.warn(self._message(args, evidence), MemorisationWarning, stacklevel=2)

    def _message(self, args, evidence: dict[str, float]) -> str:
        tries = [
            "more distinct pairs per user",
            "fewer epochs (`num_train_epochs`), with more `episode_passes` for as many distinct contexts",
            "a lower `learning_rate`",
        ]
        if hasattr(args, "context_btl_weight"):
            tries.append("a larger `context_btl_weight` (trains the encoder to read the context directly)")
        if getattr(args, "context_pair_features", None) != "difference":
            tries.append('`context_pair_features="difference"` (the odd encoder)')
        if getattr(args, "bounded_latent", None) is False:
            tries.append("`bounded_latent=True` (z in (-1, 1))")
        if getattr(args, "aggregation", None) == "mean":
            tries.append('`aggregation="shrunk_mean"`')
        if getattr(args, "condition_reward_head", None) is False:
            tries.append("`condition_reward_head=True` (the latent also steers the reward head)")
        tries.append(
            "checking that the context embeddings tell the users apart (`context_embedding`, `context_max_length`)"
        )
        return (
            f"The model seems to memorise its training pairs instead of reading the context (step "
            f"{evidence['step']}): without context it ranks {evidence['train_accuracy']:.0%} of the training pairs it "
            f"has seen correctly but {evidence['heldout_ctx0']:.0%} of held-out pairs of the same users, and "
            f"{self.largest_context} context pairs change held-out accuracy by only {evidence['heldout_gain']:+.1%} "
            f"(under `memorisation_warning_threshold`={self.threshold}) at consecutive held-out evaluations. "
            f"Training metrics will look like steering while new pairs are not steered. Try: {'; '.join(tries)}."
        )
