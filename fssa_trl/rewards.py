# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Reward functions for TRL's online trainers (`GRPOTrainer`, `RLOOTrainer`): pass one as `reward_funcs=`.

- [`SteerableRewardFunction`]: a steerable reward model scores each completion for the user of its row, whose context
  comes from a dataset column or from a user id looked up in a table;
- [`RewardModelFunction`]: a plain sequence-classification reward model (e.g. one user's model exported from a
  steerable one), tokenized exactly as TRL's `RewardTrainer` tokenized its training data.

Both are plain callables, not `nn.Module`s: TRL scores an `nn.Module` (or a path) in `reward_funcs` itself, with
`prompt + completion` tokenized without special tokens and without the EOS that `RewardTrainer` appends to every
training text. A reward model pools at the last non-pad token, the EOS in training, so that path reads the reward at
another token and the rewards change (measured on a two-user task: pairwise accuracy 1.0 with the EOS, 0.65 without).
The functions here build every text with [`reward_input_ids`] instead, so a reward is exactly what
`score(prompt, completion, ...)` returns.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .modeling.reward_model import ContextFreeRewardModel, SteerableRewardModel
from .modeling.steerable import Context, SteerableModel, load_pretrained_model

# What TRL passes a reward function besides `prompts`, `completions` and the dataset columns.
_TRL_ARGUMENTS = ("completion_ids", "trainer_state", "log_extra", "log_metric", "environments")


def _check_formats(prompts: Sequence, completions: Sequence) -> None:
    """Prompts and completions must be both plain text or both conversations (lists of messages)."""
    if len(prompts) != len(completions):
        raise ValueError(f"Got {len(prompts)} prompts but {len(completions)} completions.")
    for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        if isinstance(prompt, str) != isinstance(completion, str):
            raise ValueError(
                f"Row {i} mixes formats: prompt is {type(prompt).__name__}, completion is "
                f"{type(completion).__name__}. Give both as text, or both as conversations (lists of "
                "{'role', 'content'} messages), as TRL does."
            )


def _freeze(value: Any) -> Hashable:
    """A hashable copy of a context (lists of dicts of text or vectors), equal for equal contents."""
    if isinstance(value, Mapping):
        return tuple(sorted((key, _freeze(item)) for key, item in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(item) for item in value)
    return value


class _RewardFunction:
    """What both reward functions share: the name TRL logs (`rewards/<name>/mean`) and the output TRL expects."""

    def __init__(self, name: str, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
        # TRL names a callable by its `__name__` (`trl.trainer.utils.get_callable_name`).
        self.__name__ = name
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.__name__!r})"


class SteerableRewardFunction(_RewardFunction):
    r"""A steerable reward model as a reward function of TRL's `GRPOTrainer` or `RLOOTrainer`: each completion is
    scored for the user of its row, `score(prompt, completion, context=user_context)`.

    TRL calls a reward function with `prompts=`, `completions=` and every other dataset column as a keyword argument
    (one value per completion). The user's context, a list of `{"prompt", "chosen", "rejected"}` pairs, comes from
    either

    - the column `context_column` of each row (the default, when `contexts` is not given), or
    - the column `user_column`, a user id looked up in the table `contexts` given here (`{user_id: pairs}`).

    In each call the latent z of every distinct user (every distinct context) is inferred once, and that user's rows
    are scored together at z, `batch_size` at a time. Latents are not kept between calls; the embeddings of context
    texts are (the model embeds each distinct text once), so a user's later latents cost only the encoder.

    Texts are built as in reward training ([`reward_input_ids`]): plain text as `prompt + completion + eos`
    (TRL decodes completions without special tokens, so the EOS is the reward model's own, added whether or not the
    policy stopped), conversations through the chat template. An empty context or `None` scores for an unknown user
    (the population prior).

    Args:
        model ([`SteerableRewardModel`] or `str`): a steerable reward model (LoRA or frozen-embedding, e.g.
            `trainer.steerable_model()`), or a folder saved by an NP reward trainer, loaded with
            [`SteerableRewardModel.from_pretrained`].
        context_column (`str`, *optional*, defaults to `"context"`): the column holding each row's context; read when
            `contexts` is `None`.
        user_column (`str`, *optional*, defaults to `"user_id"`): the column holding each row's user id; read when
            `contexts` is given.
        contexts (`Mapping`, *optional*): the context table, user id -> that user's pairs.
        batch_size (`int`, *optional*, defaults to `16`): sequences per forward pass.
        name (`str`, *optional*, defaults to `"steerable_reward"`): the name TRL logs, as `rewards/<name>/mean`.
        dtype (`torch.dtype`, *optional*): dtype to load `model` in, when it is a path.
        device (`str` or `torch.device`, *optional*): where to load `model`, when it is a path.

    Example:

    ```python
    >>> from trl import GRPOConfig, GRPOTrainer
    >>> from fssa_trl.rewards import SteerableRewardFunction
    >>> reward = SteerableRewardFunction("np-rm", contexts={"alice": alice_pairs, "bob": bob_pairs})
    >>> reward(prompts=["Q: 2+2? A: "] * 2, completions=["4.", "Four."], user_id=["alice", "bob"])
    [0.8312, -0.2150]
    >>> trainer = GRPOTrainer(model=policy, reward_funcs=reward, args=GRPOConfig(...), train_dataset=user_prompts)
    ```
    """

    def __init__(
        self,
        model: SteerableRewardModel | str,
        context_column: str = "context",
        user_column: str = "user_id",
        contexts: Mapping[Hashable, Context] | None = None,
        batch_size: int = 16,
        name: str = "steerable_reward",
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ):
        super().__init__(name, batch_size)
        if isinstance(model, (str, os.PathLike)):
            model = SteerableRewardModel.from_pretrained(str(model), dtype=dtype, device=device)
        if not isinstance(model, SteerableModel):
            raise TypeError(
                f"`model` must be a SteerableRewardModel or the path of one, got {type(model).__name__}. Wrap a plain "
                "reward model with `RewardModelFunction(model, tokenizer)`."
            )
        if model.is_context_free:
            raise ValueError(
                "This reward model ignores the user's context: use `RewardModelFunction(model, tokenizer)` for it."
            )
        if model.scores_embeddings:
            raise ValueError(
                "This reward model was trained on precomputed embeddings, so it cannot score generated text: train it "
                "with a `context_embedding` encoder (or `'base'`) to use it as an online reward."
            )
        self.model = model
        self.context_column = context_column
        self.user_column = user_column
        self.contexts = contexts

    def __call__(self, prompts: Sequence, completions: Sequence, **columns: Any) -> list[float]:
        """One reward per completion. `columns` are the dataset columns TRL passes (one value per completion); the
        others it passes (`completion_ids`, `trainer_state`, ...) are ignored."""
        _check_formats(prompts, completions)
        rows_by_user: dict[Hashable, list[int]] = {}
        context_of: dict[Hashable, Context] = {}
        for row, (key, context) in enumerate(self._user_contexts(len(prompts), columns)):
            rows_by_user.setdefault(key, []).append(row)
            context_of.setdefault(key, context)
        rewards = torch.empty(len(prompts))
        for key, rows in rows_by_user.items():
            latent = self.model.latent(context_of[key])
            rewards[rows] = self.model.score(
                [prompts[i] for i in rows], [completions[i] for i in rows], latent=latent, batch_size=self.batch_size
            ).float()
        return rewards.tolist()

    def _user_contexts(self, num_rows: int, columns: Mapping[str, Any]) -> list[tuple[Hashable, Context]]:
        """(grouping key, context) of each row: the user id in table mode, the context's contents otherwise."""
        if self.contexts is not None:
            users = self._column(self.user_column, num_rows, columns)
            out = []
            for user in users:
                if user not in self.contexts:
                    known = sorted(map(repr, self.contexts))
                    shown = ", ".join(known[:5]) + (", ..." if len(known) > 5 else "")
                    raise ValueError(
                        f"User {user!r} (column '{self.user_column}') is not in the context table passed as "
                        f"`contexts=`, which has {len(known)} users ({shown}). Add that user's pairs to `contexts`, "
                        f"or score it as an unknown user with `contexts[{user!r}] = []`."
                    )
                out.append((user, self.contexts[user]))
            return out
        out = []
        for i, context in enumerate(self._column(self.context_column, num_rows, columns)):
            if context is not None and not isinstance(context, (list, tuple)):
                raise ValueError(
                    f"Row {i} of the column '{self.context_column}' is a {type(context).__name__}: each row's context "
                    "must be a list of {'prompt', 'chosen', 'rejected'} pairs (empty or None: an unknown user)."
                )
            out.append((_freeze(context), context))
        return out

    def _column(self, column: str, num_rows: int, columns: Mapping[str, Any]) -> Sequence:
        if column not in columns:
            available = sorted(k for k in columns if k not in _TRL_ARGUMENTS)
            if self.contexts is not None:
                fix = (
                    f"Add a '{column}' column of user ids to the dataset, or pass `user_column=` naming the column "
                    "that holds them."
                )
            else:
                fix = (
                    f"Add a '{column}' column holding each row's context (a list of "
                    "{'prompt', 'chosen', 'rejected'} pairs), pass `context_column=` naming the column that holds "
                    "it, or pass `contexts={user_id: pairs}` to look each row's user id (column `user_column`) up in "
                    "a table."
                )
            raise ValueError(
                f"{self.__name__} reads the column '{column}', which the batch does not have (columns: {available}). "
                f"{fix} TRL passes dataset columns to reward functions only with `remove_unused_columns=False` (the "
                "GRPOConfig and RLOOConfig default)."
            )
        values = columns[column]
        if len(values) != num_rows:
            raise ValueError(f"The column '{column}' has {len(values)} values for {num_rows} completions.")
        return values


class RewardModelFunction(_RewardFunction):
    r"""A plain reward model (a transformers or PEFT sequence-classification model with one label, or a folder holding
    one) as a reward function of TRL's `GRPOTrainer` or `RLOOTrainer`, with texts tokenized as in reward training.

    Use it for a reward model trained by TRL's `RewardTrainer`, or for one user's model exported from a steerable one:
    it needs no fssa_trl module at load time.

    Why not pass the model or its path to the trainer directly: TRL then scores `prompt + completion` tokenized with
    `add_special_tokens=False` and no EOS, while `RewardTrainer` trained on `prompt + response + eos` (plain text) and
    the model pools at the last non-pad token, the EOS. Without it the reward is read one token earlier, on a
    position the reward model was never trained to score (measured on a two-user task: pairwise accuracy 1.0 with the
    EOS, 0.65 without). Tokenizers that add a BOS (Llama-style) lose it too. This function builds every text with
    [`reward_input_ids`], as `RewardTrainer` did; the two paths agree only when the pad token is the EOS (the appended
    EOS then counts as padding) and the tokenizer adds no special tokens. The model loads as TRL loads a
    path (`AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)`, a PEFT adapter folder included),
    from safetensors only: a model or adapter saved only as pickled `.bin` files is refused.

    Args:
        model (`nn.Module` or `str`): the reward model, or its folder (or Hub id).
        tokenizer (`PreTrainedTokenizerBase`, *optional*): its tokenizer; by default loaded from `model`'s folder
            (or from the model's `config._name_or_path`).
        batch_size (`int`, *optional*, defaults to `16`): sequences per forward pass.
        name (`str`, *optional*): the name TRL logs, as `rewards/<name>/mean`; by default the last part of the path
            (TRL's name for a path) or `"reward_model"`.
        dtype (`torch.dtype`, *optional*): dtype to load `model` in, when it is a path.
        device (`str` or `torch.device`, *optional*): where to load `model`, when it is a path.

    Example:

    ```python
    >>> from trl import GRPOTrainer
    >>> from fssa_trl.rewards import RewardModelFunction
    >>> reward = RewardModelFunction("rm-alice")  # not reward_funcs="rm-alice": that path drops the EOS
    >>> reward(prompts=["Q: 2+2? A: "], completions=["4."])
    [0.8312]
    >>> trainer = GRPOTrainer(model=policy, reward_funcs=reward, args=GRPOConfig(...), train_dataset=prompts)
    ```
    """

    def __init__(
        self,
        model: nn.Module | str,
        tokenizer=None,
        batch_size: int = 16,
        name: str | None = None,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ):
        path = None
        if isinstance(model, (str, os.PathLike)):
            from transformers import AutoModelForSequenceClassification

            path = str(model)
            where = "the reward model given as `model`"
            fix = "Pass a folder or a Hub id holding a sequence-classification model (or adapter) in safetensors."
            model = load_pretrained_model(
                AutoModelForSequenceClassification, path, where, fix, num_labels=1, dtype=dtype
            )
            if device is not None:
                model.to(device)
            model.eval()
        if name is None:
            name = os.path.basename(os.path.normpath(path)) if path is not None else "reward_model"
        super().__init__(name, batch_size)
        if isinstance(model, SteerableRewardModel):
            raise TypeError(
                "`model` is a steerable reward model: use `SteerableRewardFunction(model, ...)`, which scores each "
                "completion for its row's user."
            )
        if getattr(getattr(model, "config", None), "num_labels", 1) != 1:
            raise ValueError(f"A reward model has one label; this model has {model.config.num_labels}.")
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path or model.config._name_or_path)
        self._set_pad_token(model, tokenizer)
        self.model = ContextFreeRewardModel(model, tokenizer)

    @staticmethod
    def _set_pad_token(model: nn.Module, tokenizer) -> None:
        """The pad token as `RewardTrainer` sets it when the model has none: the tokenizer's, else its EOS (the model
        locates the last non-pad token with `config.pad_token_id`)."""
        config = model.config.get_text_config()
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ValueError("The tokenizer has neither a pad token nor an EOS token: set `tokenizer.pad_token`.")
            tokenizer.pad_token = tokenizer.eos_token
        if config.pad_token_id is None:
            config.pad_token_id = tokenizer.pad_token_id

    def __call__(self, prompts: Sequence, completions: Sequence, **columns: Any) -> list[float]:
        """One reward per completion; the other arguments TRL passes (dataset columns, `completion_ids`, ...) are
        ignored."""
        _check_formats(prompts, completions)
        return self.model.score(list(prompts), list(completions), batch_size=self.batch_size).float().tolist()
