# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Inference-time steerable policy: generate for one user from a handful of that user's choices."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..data.collator import right_pad
from ..data.embeddings import TextEmbedder
from .config import PolicyConfig
from .gated_lora import LoRAModulator
from .inputs import as_batch, check_batch_size, check_text, check_texts
from .np_modules import NPModules
from .steerable import Context, SteerableModel, load_gated_peft_model


class SteerablePolicy(SteerableModel):
    r"""A few-shot steerable policy trained by [`NPDPOTrainer`]: `generate(prompts, context=ctx)` generates for the
    user whose choices `ctx` (a list of `{"prompt", "chosen", "rejected"}` dicts) are given; `context=[]` or `None`
    is an unknown user (the population prior). `latent(ctx)` returns that user's z, and `generate(prompts,
    latent=z)` generates at any z, e.g. between two users (the paper's continuum of behavioural modes).

    Inputs follow the rules of [`SteerableRewardModel.score`]: a single string is a batch of one, a context is
    checked (keys, values) and used whole, `latent` replaces `context` (never both); an empty completion is scored,
    an empty prompt cannot be generated from.

    Example:

    ```python
    >>> from fssa_trl import SteerablePolicy
    >>> policy = SteerablePolicy.from_pretrained("np-dpo")
    >>> z_a, z_b = policy.latent(context_a), policy.latent(context_b)
    >>> policy.generate(["Tell me about Paris."], context=context_a, max_new_tokens=64)
    >>> policy.generate(["Tell me about Paris."], latent=0.5 * (z_a + z_b), do_sample=True, num_return_sequences=4)
    ```
    """

    config_class = PolicyConfig

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        fssa_config: PolicyConfig,
        embedder: TextEmbedder | None = None,
        modulator: LoRAModulator | None = None,
    ):
        super().__init__(model, tokenizer, fssa_config, embedder)
        self.modulator = modulator if modulator is not None else LoRAModulator(model, fssa_config.adapter_name)

    @classmethod
    def _from_folder(cls, path, config, modules: NPModules, base_model_name_or_path, dtype):
        from transformers import AutoModelForCausalLM

        model, tokenizer, embedder = load_gated_peft_model(
            path, AutoModelForCausalLM, config, modules, base_model_name_or_path, dtype
        )
        return cls(model, tokenizer, config, embedder)

    def _modulation(self, latent: torch.Tensor | None):
        """The modulation for `latent` `(latent_dim,)` (one user) or `(B, latent_dim)` (one per prompt)."""
        if latent is None:
            return None
        param = next(self.np_modules.hypernetwork.parameters())
        latent = latent.to(param.device, param.dtype)
        return self.np_modules.hypernetwork(latent.view(-1, latent.shape[-1]))

    def _prompt_texts(self, prompts: Sequence) -> list[str]:
        texts = []
        for prompt in prompts:
            if isinstance(prompt, str):
                texts.append(prompt)
            else:  # conversational
                texts.append(self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True))
        return texts

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence,
        context: Context = None,
        latent: torch.Tensor | None = None,
        skip_special_tokens: bool = True,
        **generate_kwargs: Any,
    ) -> list[str]:
        """Generate completions of `prompts` for the user described by `context` (or at `latent`).

        `prompts` is a list of non-empty texts or conversations (one string: a batch of one); `latent` is one z
        `(latent_dim,)` or one per prompt `(len(prompts), latent_dim)`. `generate_kwargs` go to `transformers`'
        `generate` (sampling, beam search, `num_return_sequences`, ...). Returns the decoded new text,
        `len(prompts) * num_return_sequences` strings, grouped by prompt.
        """
        prompts = as_batch(prompts, "prompts")
        if not prompts:
            raise ValueError("`prompts` is empty: there is nothing to generate from.")
        for i, prompt in enumerate(prompts):
            check_text(prompt, f"`prompts[{i}]`", allow_empty=False)
        latent = self._user_latent(context, latent, rows=len(prompts))
        tokenizer = self.tokenizer
        side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        try:
            encoded = tokenizer(
                self._prompt_texts(prompts), return_tensors="pt", padding=True, add_special_tokens=False
            )
        finally:
            tokenizer.padding_side = side
        encoded = {k: v.to(self._device()) for k, v in encoded.items()}
        generate_kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
        with self.modulator.apply(self._modulation(latent)):
            output = self.model.generate(**encoded, **generate_kwargs)
        new_tokens = output[:, encoded["input_ids"].shape[1] :]
        return tokenizer.batch_decode(new_tokens, skip_special_tokens=skip_special_tokens)

    def _completion_batch(self, prompts: Sequence, completions: Sequence):
        """Right-padded `[prompt + completion + eos]` ids with a completion mask, tokenized as TRL's DPOTrainer does."""
        rows, masks = [], []
        for prompt, completion in zip(prompts, completions, strict=True):
            prompt_text = self._prompt_texts([prompt])[0]
            if isinstance(completion, str):
                full = prompt_text + completion
                if self.tokenizer.eos_token and not full.endswith(self.tokenizer.eos_token):
                    full += self.tokenizer.eos_token
            else:
                full = self.tokenizer.apply_chat_template(list(prompt) + list(completion), tokenize=False)
            prompt_ids = self.tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
            ids = self.tokenizer(full, add_special_tokens=False)["input_ids"]
            start = 0
            while start < min(len(prompt_ids), len(ids)) and prompt_ids[start] == ids[start]:
                start += 1
            rows.append(ids)
            masks.append([0] * start + [1] * (len(ids) - start))
        input_ids = right_pad(rows, self.tokenizer.pad_token_id)
        attention = right_pad([[1] * len(r) for r in rows])
        completion = right_pad(masks)
        return input_ids, attention, completion

    def _sequence_log_probs(self, input_ids, attention, completion) -> torch.Tensor:
        device = self._device()
        logits = self.model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits[:, :-1]
        token_logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, input_ids[:, 1:, None].to(device))[..., 0]
        return (token_logps * completion[:, 1:].to(device)).sum(dim=1).cpu()

    @torch.no_grad()
    def log_probs(
        self, prompts: Sequence, completions: Sequence, context: Context = None, latent=None, batch_size: int = 8
    ) -> torch.Tensor:
        """Sum of log pi(completion | prompt, z) over the completion tokens, `(N,)`; no context and no latent gives the
        population prior's policy."""
        check_batch_size(batch_size)
        prompts, completions = check_texts(prompts, completions, ("prompts", "completions"))
        latent = self._user_latent(context, latent)
        return self._batched(prompts, completions, self._modulation(latent), batch_size)

    def _batched(self, prompts, completions, modulation, batch_size) -> torch.Tensor:
        out = []
        for start in range(0, len(prompts), batch_size):
            batch = self._completion_batch(
                prompts[start : start + batch_size], completions[start : start + batch_size]
            )
            if modulation is None:  # the reference: base model, adapters (and so modulation) off
                with self.model.disable_adapter():
                    out.append(self._sequence_log_probs(*batch))
            else:
                with self.modulator.apply(modulation):
                    out.append(self._sequence_log_probs(*batch))
        return torch.cat(out)

    @torch.no_grad()
    def score(
        self, prompts: Sequence, responses: Sequence, context: Context = None, latent=None, batch_size: int = 8
    ) -> torch.Tensor:
        """DPO's implicit reward for the user: beta * (log pi(y | x, z) - log pi_ref(y | x)), `(N,)`.

        This is what [`evaluate_few_shot`] compares between chosen and rejected responses.
        """
        check_batch_size(batch_size)
        prompts, responses = check_texts(prompts, responses)
        return self._scores_at(prompts, responses, self._user_latent(context, latent), batch_size)

    def _scores_at(self, prompts, responses, latent: torch.Tensor, batch_size: int) -> torch.Tensor:
        policy = self._batched(prompts, responses, self._modulation(latent), batch_size)
        return self.fssa_config.beta * (policy - self.reference_log_probs(prompts, responses, batch_size))

    def export(
        self,
        output_dir: str,
        context: Context = None,
        latent: torch.Tensor | None = None,
        merge: bool = False,
        *,
        base_model_name_or_path: str | None = None,
    ) -> str:
        """Write one user's policy (given by `context` or `latent`) as a PEFT adapter for `AutoModelForCausalLM`
        (`merge=True`: full weights) that loads and generates without fssa_trl. See [`export_user`].

        Example:

        ```python
        >>> policy.export("policy-alice", context=alice_choices)
        >>> # without fssa_trl: AutoPeftModelForCausalLM.from_pretrained("policy-alice")
        ```
        """
        from .export import export_user

        return export_user(self, output_dir, context, latent, merge, base_model_name_or_path=base_model_name_or_path)

    @torch.no_grad()
    def reference_log_probs(self, prompts: Sequence, responses: Sequence, batch_size: int = 8) -> torch.Tensor:
        """log pi_ref(y | x) `(N,)`: the base model with adapters (and so modulation) off. It does not depend on the
        user, and the base is frozen, so each (prompt, response) is computed once per instance and then reused (an
        evaluation scores every pair once per context size)."""
        check_batch_size(batch_size)
        prompts, responses = check_texts(prompts, responses)
        cache = self.__dict__.setdefault("_reference_cache", {})
        keys = [(repr(p), repr(r)) for p, r in zip(prompts, responses, strict=True)]
        missing = list(dict.fromkeys(k for k in keys if k not in cache))
        if missing:
            index = {k: i for i, k in enumerate(keys)}
            rows = [index[k] for k in missing]
            values = self._batched([prompts[i] for i in rows], [responses[i] for i in rows], None, batch_size)
            cache.update(zip(missing, values, strict=True))
        return torch.stack([cache[k] for k in keys])
