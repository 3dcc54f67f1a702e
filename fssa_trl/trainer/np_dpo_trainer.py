# Copyright 2026 The fssa_trl developers. Apache-2.0.
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from datasets import Dataset
from trl import DPOTrainer

from .np_common import log_unseen_accuracy
from .np_dpo_config import NPDPOConfig
from .np_mixin import NPTrainerMixin


class NPDPOTrainer(NPTrainerMixin, DPOTrainer):
    r"""Conditioned DPO (NP-DPO of [Few-shot Steerable Alignment](https://huggingface.co/papers/2412.13998)), a
    [`~trl.DPOTrainer`].

    Each training example is one user's episode: target preference pairs plus a context subset of them. A
    neural-process encoder maps the context to a latent z, and a hypernetwork turns z into per-example rank-wise gates
    of every LoRA layer, so the policy is pi(y | x, z). The loss is TRL's own DPO loss (any `loss_type`) on the
    targets; the reference is the base model with adapters and modulation off (no second copy of the weights). After
    training, [`SteerablePolicy`] generates for a user from a handful of that user's choices.

    Args:
        model (`str`, [`~transformers.PreTrainedModel`] or [`~peft.PeftModel`]): the causal LM, as in
            [`~trl.DPOTrainer`].
        ref_model (`None`): must be `None`; the reference is the base model with adapters disabled.
        args ([`NPDPOConfig`], *optional*): the configuration.
        train_dataset ([`~datasets.Dataset`]): preference pairs with the column `args.user_column`.
        eval_dataset: as `train_dataset`; evaluation episodes use contexts disjoint from their targets and log
            `eval_accuracy_ctx{C}` (implicit-reward accuracy on unseen pairs by context size).
        peft_config ([`~peft.LoraConfig`], *optional*): the LoRA adapter the hypernetwork modulates (required unless
            `model` is a `PeftModel`).

    Other arguments are those of [`~trl.DPOTrainer`].

    Example:

    ```python
    >>> from datasets import load_dataset
    >>> from peft import LoraConfig
    >>> from fssa_trl import NPDPOConfig, NPDPOTrainer

    >>> dataset = load_dataset("json", data_files="preferences.jsonl", split="train")  # prompt/chosen/rejected/user_id
    >>> trainer = NPDPOTrainer(
    ...     model="Qwen/Qwen2.5-0.5B-Instruct",
    ...     args=NPDPOConfig(output_dir="np-dpo", num_targets=8, max_context=6, beta=0.05),
    ...     train_dataset=dataset,
    ...     peft_config=LoraConfig(r=16, target_modules="all-linear"),
    ... )
    >>> trainer.train()
    ```
    """

    _tag_names = ["trl", "dpo", "fssa-trl", "np-dpo"]
    _name = "NP-DPO"
    _np_kind = "policy"
    _np_token_columns = ("prompt_ids", "chosen_ids", "rejected_ids", "ref_chosen_logps", "ref_rejected_logps")

    def __init__(
        self,
        model,
        ref_model=None,
        args: NPDPOConfig | None = None,
        data_collator=None,
        train_dataset: Dataset | None = None,
        eval_dataset=None,
        processing_class=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
    ):
        if args is None:
            args = NPDPOConfig(output_dir="np-dpo-model")
        elif not isinstance(args, NPDPOConfig):
            raise TypeError(f"`args` must be an `NPDPOConfig`, got {type(args).__name__}.")
        if ref_model is not None:
            raise ValueError(
                "NPDPOTrainer uses the base model with adapters and modulation off as the reference, without a second "
                "copy of the weights: pass `ref_model=None`."
            )
        self._np_check_datasets(args, train_dataset, eval_dataset)
        super().__init__(
            model=model,
            ref_model=None,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            quantization_config=quantization_config,
            peft_config=peft_config,
        )
        self._np_attach_lora_modules(train_dataset)
        self._np_finish_init(target_collator_needed=True, include_target_embeddings=args.latent_type == "gaussian")

    @contextlib.contextmanager
    def _capture_log_probs(self) -> Iterator[list[torch.Tensor]]:
        """Collect the per-token log-probs of the forward passes TRL's `_compute_loss` makes (policy first, then the
        reference unless precomputed), for the accuracy-by-context-size metric. Read-only: outputs are unchanged."""
        captured: list[torch.Tensor] = []

        def hook(module, args, output):
            log_probs = getattr(output, "log_probs", None)
            if log_probs is not None:
                captured.append(log_probs.detach())

        handle = self.model.register_forward_hook(hook)
        try:
            yield captured
        finally:
            handle.remove()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        batch = self._np_pop_context(inputs)
        latents = self._np_modulate(batch)
        with self._capture_log_probs() as captured:
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = result if return_outputs else (result, None)
        if latents.kl is not None:
            loss = loss + self.args.kl_weight * latents.kl
            self._metrics[mode]["kl"].append(self.accelerator.gather_for_metrics(latents.kl.detach()).mean().item())
        with torch.no_grad():
            self._log_unseen_accuracy(mode, captured, inputs, batch)
        return (loss, outputs) if return_outputs else loss

    def _log_unseen_accuracy(self, mode, captured, inputs, batch) -> None:
        """Implicit-reward accuracy (beta * log-ratio of chosen > of rejected) on unseen targets, by context size."""
        seq_len = inputs["completion_mask"].shape[1] - 1
        policy = captured[0][:, -seq_len:].sum(dim=1)
        if self.precompute_ref_logps:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_chosen, ref_rejected = captured[1][:, -seq_len:].sum(dim=1).chunk(2)
        chosen, rejected = policy.chunk(2)
        correct = (chosen - ref_chosen) > (rejected - ref_rejected)
        log_unseen_accuracy(self, mode, correct, batch)

    def steerable_model(self):
        """The policy being trained, as a [`SteerablePolicy`] (shares weights, embedder and hooks)."""
        from ..modeling.policy import SteerablePolicy

        return SteerablePolicy(
            self.model, self.processing_class, self.fssa_config(), self._store.embedder, self._modulator
        )

    def fssa_config(self):
        return {**super().fssa_config(), "beta": self.args.beta}
