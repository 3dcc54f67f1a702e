# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Inference-time steerable reward models: score responses for one user from a handful of that user's choices.

- [`SteerableLoRARewardModel`]: a sequence-classification model whose gated LoRA layers follow z (`NPRewardTrainer`);
- [`SteerableEmbeddingRewardModel`]: r(x, y, z) by a decoder on frozen embeddings (`NPEmbeddingRewardTrainer`);
- [`ContextFreeRewardModel`]: any plain reward model, which ignores the context (a baseline for `evaluate_few_shot`).

`SteerableRewardModel.from_pretrained(path)` loads either steerable kind, following the saved `model_type`.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..data.collator import right_pad
from ..data.embeddings import TextEmbedder
from .config import EmbeddingRewardModelConfig, LoRARewardModelConfig, RewardModelConfig
from .embedding_model import NPEmbeddingRewardModel
from .gated_lora import LoRAModulator
from .inputs import as_batch, as_vectors, check_batch_size, check_texts
from .np_modules import NPModules
from .steerable import Context, SteerableModel, embedder_from_config, load_gated_peft_model, require_file


def reward_input_ids(tokenizer, prompt, response) -> list[int]:
    """Token ids of (prompt, response) exactly as TRL's `RewardTrainer` prepares them: conversations through the
    chat template, plain text as `prompt + response + eos`."""
    if isinstance(response, list):
        return tokenizer.apply_chat_template(list(prompt or []) + response, tokenize=True, return_dict=True)[
            "input_ids"
        ]
    text = (prompt or "") + response
    if tokenizer.eos_token and not text.endswith(tokenizer.eos_token):
        text += tokenizer.eos_token
    return tokenizer(text=text)["input_ids"]


def reward_head_module(model: nn.Module) -> nn.Module:
    """The reward head (`score` or `classifier`) of a sequence-classification model, inside PEFT or not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name in ("score", "classifier"):
        if hasattr(base, name):
            return getattr(base, name)
    raise ValueError("`condition_reward_head=True` needs a sequence-classification model with a `score` head.")


class SteerableRewardModel(SteerableModel, metaclass=abc.ABCMeta):
    r"""A few-shot steerable reward model: `score(prompts, responses, context=ctx)` gives one user's rewards, where
    `ctx` is a list of that user's choices `{"prompt", "chosen", "rejected"}` (no gradient step involved).

    This is the common interface; [`SteerableRewardModel.from_pretrained`] returns a [`SteerableLoRARewardModel`] or a
    [`SteerableEmbeddingRewardModel`], whichever the folder holds. Wrap a trainer's model with
    `trainer.steerable_model()`, and a plain reward model with [`ContextFreeRewardModel`].

    Example:

    ```python
    >>> from fssa_trl import SteerableRewardModel
    >>> rm = SteerableRewardModel.from_pretrained("np-rm")
    >>> ctx = [{"prompt": "Q: 2+2? A: ", "chosen": "4.", "rejected": "Four, because two plus two is four."}]
    >>> rm.score(["Q: capital of France? A: "] * 2, ["Paris.", "It is Paris, on the Seine."], context=ctx)
    tensor([ 0.8312, -0.4150])
    ```
    """

    config_class = RewardModelConfig

    def __new__(cls, *args, **kwargs):
        if cls is SteerableRewardModel:
            raise TypeError(
                "SteerableRewardModel is the common interface of the reward models: load one with "
                "`SteerableRewardModel.from_pretrained(path)`, take `trainer.steerable_model()`, or wrap a plain reward "
                "model in `ContextFreeRewardModel(model, tokenizer)`."
            )
        return super().__new__(cls)

    @abc.abstractmethod
    def score(
        self,
        prompts: Sequence,
        responses: Sequence,
        context: Context = None,
        latent: torch.Tensor | None = None,
        batch_size: int = 16,
    ) -> torch.Tensor:
        """One float reward per (prompt, response) for the user described by `context` (or by `latent`).

        Inputs are checked before anything is scored (a `ValueError` names the argument, the index and the fix):

        - `prompts`, `responses`: lists of one length of text or conversations (lists of `{"role", "content"}`
          messages), or one string each (a batch of one). A prompt may be `""` (none), and so may a response (a
          policy can generate an empty completion: it is scored as `prompt + eos`).
        - `context`: the user's choices, a list of `{"prompt", "chosen", "rejected"}` dicts (or a `Dataset` of
          them, or a dict of columns), with non-empty `chosen` and `rejected` as in training; other keys are
          ignored, a misspelt one (`"promt"`) raises. `[]` or `None` (with no `latent`): an unknown user, the
          population prior. Every pair is used, however many (see [`SteerableModel.latent`]).
        - `latent` `(latent_dim,)`: the user's z instead of `context` (passing both raises).
        - `batch_size`: sequences per forward pass, a positive int.

        Returns a float32 CPU tensor of shape `(N,)`.
        """

    def export(
        self,
        output_dir: str,
        context: Context = None,
        latent: torch.Tensor | None = None,
        merge: bool = False,
        *,
        base_model_name_or_path: str | None = None,
    ) -> str:
        """Write one user's reward model (given by `context` or `latent`) as a standard artifact that loads without
        fssa_trl: a PEFT adapter for `AutoModelForSequenceClassification` (`merge=True`: full weights) for a LoRA
        reward model, a sentence-transformers model whose single output is the reward for a frozen-embedding one.
        See [`export_user`].

        Example:

        ```python
        >>> rm.export("rm-alice", context=alice_choices)
        >>> # without fssa_trl: AutoPeftModelForSequenceClassification.from_pretrained("rm-alice", num_labels=1)
        ```
        """
        from .export import export_user

        return export_user(self, output_dir, context, latent, merge, base_model_name_or_path=base_model_name_or_path)

    def _token_rewards(
        self, prompts, responses, batch_size: int, gating: Callable[[int], contextlib.AbstractContextManager]
    ) -> torch.Tensor:
        """Rewards of a sequence-classification model, tokenized as TRL's RewardTrainer does; each batch of n
        sequences runs inside `gating(n)`."""
        device = self._device()
        ids = [reward_input_ids(self.tokenizer, p, r) for p, r in zip(prompts, responses, strict=True)]
        out = []
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            input_ids = right_pad(chunk, self.tokenizer.pad_token_id)
            mask = right_pad([[1] * len(x) for x in chunk])
            with gating(len(chunk)):
                logits = self.model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
            out.append(logits.squeeze(-1).float().cpu())
        return torch.cat(out)


class SteerableLoRARewardModel(SteerableRewardModel):
    """A LoRA reward model trained by [`NPRewardTrainer`]: the hypernetwork turns z into per-example gates of every
    LoRA layer (and, with `condition_reward_head`, a direction added to the reward head).

    Args:
        model (`PeftModel`): the sequence-classification PEFT model with gated LoRA layers and `model.fssa_np`.
        tokenizer: its tokenizer.
        fssa_config ([`LoRARewardModelConfig`]): the saved configuration.
        embedder ([`TextEmbedder`], *optional*): embeds context texts.
        modulator ([`LoRAModulator`], *optional*): applies the gates (built from `model` when not given).
    """

    config_class = LoRARewardModelConfig

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        fssa_config: LoRARewardModelConfig,
        embedder: TextEmbedder | None = None,
        modulator: LoRAModulator | None = None,
    ):
        super().__init__(model, tokenizer, fssa_config, embedder)
        if modulator is None:
            head = reward_head_module(model) if fssa_config.condition_reward_head else None
            modulator = LoRAModulator(model, fssa_config.adapter_name, head_module=head)
        self.modulator = modulator

    @classmethod
    def _from_folder(cls, path, config, modules: NPModules, base_model_name_or_path, dtype):
        from transformers import AutoModelForSequenceClassification

        model, tokenizer, embedder = load_gated_peft_model(
            path, AutoModelForSequenceClassification, config, modules, base_model_name_or_path, dtype, num_labels=1
        )
        return cls(model, tokenizer, config, embedder)

    @torch.no_grad()
    def score(self, prompts, responses, context=None, latent=None, batch_size=16) -> torch.Tensor:
        check_batch_size(batch_size)
        prompts, responses = check_texts(prompts, responses)
        return self._scores_at(prompts, responses, self._user_latent(context, latent), batch_size)

    def _scores_at(self, prompts, responses, latent: torch.Tensor, batch_size: int) -> torch.Tensor:
        param = next(self.np_modules.hypernetwork.parameters())
        latent = latent.to(param.device, param.dtype)

        def gating(n: int):
            return self.modulator.apply(self.np_modules.hypernetwork(latent.unsqueeze(0).expand(n, -1)))

        return self._token_rewards(prompts, responses, batch_size, gating)


class SteerableEmbeddingRewardModel(SteerableRewardModel):
    """A reward model on frozen embeddings trained by [`NPEmbeddingRewardTrainer`]: r = MLP([e(x, y), z]) or a FiLM
    decoder (`decoder.conditioning`).

    With an embedder, `score` embeds (prompt, response) texts; trained on precomputed embeddings (no embedder),
    `score` takes the response embeddings as `responses` and contexts as `chosen_embedding` / `rejected_embedding`
    vectors.

    Args:
        model ([`NPEmbeddingRewardModel`]): the trained NP modules.
        tokenizer: the backbone's tokenizer (`None` for precomputed embeddings).
        fssa_config ([`EmbeddingRewardModelConfig`]): the saved configuration.
        embedder ([`TextEmbedder`], *optional*): the frozen backbone.
    """

    config_class = EmbeddingRewardModelConfig

    @classmethod
    def _from_folder(cls, path, config, modules: NPModules, base_model_name_or_path, dtype):
        tokenizer = None
        if config.context_embedding.source != "precomputed":
            from transformers import AutoTokenizer

            require_file(path, "tokenizer_config.json", "the tokenizer")
            tokenizer = AutoTokenizer.from_pretrained(path)  # the tokenizer the trainer used, saved beside the weights
        if base_model_name_or_path is not None:
            if config.context_embedding.source == "precomputed":
                raise ValueError(
                    f"{path!r} was trained on precomputed embeddings: it has no backbone to replace with "
                    "`base_model_name_or_path`. Drop that argument."
                )
            config.context_embedding.name_or_path = base_model_name_or_path
        fix = (
            "Pass `base_model_name_or_path=` (in the CLI, `--base-model`): a local copy of the backbone, or a Hub id "
            "that can be reached (offline: one in the cache)."
        )
        embedder = embedder_from_config(config.context_embedding, tokenizer=tokenizer, fix=fix)
        return cls(NPEmbeddingRewardModel(modules), tokenizer, config, embedder)

    @property
    def scores_embeddings(self) -> bool:
        return self.embedder is None

    @torch.no_grad()
    def score(self, prompts, responses, context=None, latent=None, batch_size=16) -> torch.Tensor:
        check_batch_size(batch_size)
        if self.embedder is not None:
            prompts, responses = check_texts(prompts, responses)
            for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
                if not prompt_and_response_have_text(prompt, response):
                    raise ValueError(
                        f"`prompts[{i}]` with `responses[{i}]` has no text at all: a frozen-embedding reward model "
                        "embeds the prompt and response together and cannot embed nothing. Give one of them text."
                    )
        else:  # precomputed: responses are `(N, D)` embeddings (prompts only count)
            prompts = as_batch(prompts, "prompts")
            responses = as_vectors(responses, self.np_modules.encoder.embedding_dim, "`responses[{i}]`")
            if len(prompts) != len(responses):
                raise ValueError(f"Got {len(prompts)} prompts but {len(responses)} responses.")
            if not prompts:
                raise ValueError("`prompts` and `responses` are empty: there is nothing to score.")
        latent = self._user_latent(context, latent)
        return self._scores_at(prompts, self._scoring_inputs(prompts, responses), latent, batch_size)

    def _scoring_inputs(self, prompts, responses):
        """The `(N, D)` response embeddings: embedded texts, or the given embeddings (precomputed)."""
        return self.embed_pairs(prompts, responses) if self.embedder is not None else responses

    def _scores_at(self, prompts, responses, latent: torch.Tensor, batch_size: int) -> torch.Tensor:
        param = next(self.model.parameters())
        embeddings = responses.to(param.device, param.dtype)
        rewards, _ = self.np_modules.decoder(embeddings, latent.to(param).expand(len(embeddings), -1))
        return rewards.float().cpu()


class ContextFreeRewardModel(SteerableRewardModel):
    """Any plain reward model (e.g. trained by TRL's `RewardTrainer`) behind the steerable interface: it ignores the
    context, which makes it a baseline for [`evaluate_few_shot`].

    Args:
        model (`nn.Module`): a sequence-classification model with one label (PEFT or not).
        tokenizer: its tokenizer.
    """

    config_class = None
    is_context_free = True

    def __init__(self, model: nn.Module, tokenizer):
        super().__init__(model, tokenizer)

    @torch.no_grad()
    def score(self, prompts, responses, context=None, latent=None, batch_size=16) -> torch.Tensor:
        """Rewards of the wrapped model; `context` and `latent` are ignored (every user alike)."""
        check_batch_size(batch_size)
        prompts, responses = check_texts(prompts, responses)
        return self._token_rewards(prompts, responses, batch_size, lambda n: contextlib.nullcontext())

    def latent(self, context: Context = None) -> torch.Tensor:
        raise ValueError("A context-free reward model has no latent: it scores every user alike.")


def prompt_and_response_have_text(prompt, response) -> bool:
    """Whether a (prompt, response) holds any non-whitespace text (strings or conversations' contents)."""
    parts = [prompt, response]
    texts = [p for p in parts if isinstance(p, str)]
    texts += [m.get("content") or "" for p in parts if isinstance(p, list) for m in p]
    return any(isinstance(t, str) and t.strip() for t in texts)
