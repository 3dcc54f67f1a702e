# Copyright 2026 The fssa_trl developers. Apache-2.0.
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from datasets import Dataset
from trl import DPOTrainer

from ..modeling.config import PolicyConfig
from ..modeling.policy import SteerablePolicy
from .gated_lora_mixin import GatedLoRATrainerMixin
from .np_dpo_config import NPDPOConfig


class NPDPOTrainer(GatedLoRATrainerMixin, DPOTrainer):
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
            `eval_accuracy_ctx{C}` (implicit-reward accuracy on unseen pairs by context size). Without one,
            `heldout_fraction` of each user's training pairs are held out and evaluated at every log
            (`heldout_accuracy_ctx{C}`), with a `MemorisationWarning` when the model memorises its pairs.
        peft_config ([`~peft.LoraConfig`], *optional*): the LoRA adapter the hypernetwork modulates (required unless
            `model` is a `PeftModel`).

    Other arguments are those of [`~trl.DPOTrainer`].

    Bad input raises a `ValueError` here, before anything is trained (see [`check_preference_dataset`]). TRL removes
    pairs whose prompt has `max_length` tokens or more (`truncation_mode="keep_start"`); the trainer counts them, and
    the users then skipped for too few pairs, in [`np_dropped`] (e.g. `trainer.np_dropped["train"]["prompts_too_long"]`)
    and logs them in one warning per dataset.

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
    _np_token_columns = ("prompt_ids", "chosen_ids", "rejected_ids", "ref_chosen_logps", "ref_rejected_logps")
    _np_length_filter = "prompts_too_long"  # what TRL's DPOTrainer filters out: a key of `np_dropped[name]`

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
        args = self._np_args(args, NPDPOConfig, "np-dpo-model")
        if ref_model is not None:
            raise ValueError(
                "NPDPOTrainer uses the base model with adapters and modulation off as the reference, without a second "
                "copy of the weights: pass `ref_model=None`."
            )
        self._np_check_datasets(args, train_dataset, eval_dataset)
        train_dataset = self._np_set_aside_calibration_pairs(args, train_dataset)
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
            peft_config=self._np_peft_config(peft_config, args, quantization_config, model),
        )
        self._np_setup(PolicyConfig, beta=args.beta)

    @contextlib.contextmanager
    def _capture_log_probs(self) -> Iterator[dict[str, torch.Tensor]]:
        """Collect the per-token log-probs of the forward passes TRL's `_compute_loss` makes, for the accuracy-by-
        context-size metric: `"policy"` for the pass that ran with the gates active, `"reference"` for the one with
        adapters off (or TRL's "ref" adapter). Each pass is identified by the state of the gated layers when it runs,
        not by its position among TRL's private forward calls. Read-only: outputs are unchanged."""
        captured: dict[str, torch.Tensor] = {}

        def hook(module, args, output):
            log_probs = getattr(output, "log_probs", None)
            if log_probs is not None:
                captured["policy" if self._modulator.gates_active() else "reference"] = log_probs.detach()

        handle = self.model.register_forward_hook(hook)
        try:
            yield captured
        finally:
            handle.remove()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """TRL's `DPOTrainer.compute_loss` (any `loss_type`) on the targets under the episode's gates; the reference
        pass runs with adapters, hence gates, off. Adds the KL term of a Gaussian latent and the implicit-reward
        accuracy on unseen targets by context size."""
        mode = "train" if self.model.training else "eval"
        batch = self._np_pop_context(inputs)
        latents = self._np_modulate(batch)
        with self._capture_log_probs() as captured:
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = result if return_outputs else (result, None)
        loss = loss + self._np_latent_losses(mode, latents)
        with torch.no_grad():
            self._log_implicit_reward_accuracy(mode, captured, inputs, batch)
        return (loss, outputs) if return_outputs else loss

    def _log_implicit_reward_accuracy(self, mode, captured, inputs, batch) -> None:
        """Implicit-reward accuracy (log-ratio of chosen > of rejected) on unseen targets, by context size."""
        if "policy" not in captured:
            raise RuntimeError("TRL's DPO loss ran no forward pass with the LoRA gates active: nothing to measure.")
        seq_len = inputs["completion_mask"].shape[1] - 1
        policy = captured["policy"][:, -seq_len:].sum(dim=1)
        if self.precompute_ref_logps:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_chosen, ref_rejected = captured["reference"][:, -seq_len:].sum(dim=1).chunk(2)
        chosen, rejected = policy.chunk(2)
        correct = (chosen - ref_chosen) > (rejected - ref_rejected)
        self._np_count_unseen_accuracy(mode, correct, batch)

    def steerable_model(self) -> SteerablePolicy:
        """The policy being trained, as a [`SteerablePolicy`] (shares weights, embedder and gates)."""
        return SteerablePolicy(
            self.model, self.processing_class, self.fssa_config, self._store.embedder, self._modulator
        )
