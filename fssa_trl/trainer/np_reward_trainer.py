# Copyright 2026 The fssa_trl developers. Apache-2.0.
from __future__ import annotations

import torch
from datasets import Dataset
from trl import RewardTrainer

from ..modeling.config import LoRARewardModelConfig
from ..modeling.reward_model import SteerableLoRARewardModel, reward_head_module
from .gated_lora_mixin import GatedLoRATrainerMixin
from .np_reward_config import NPRewardConfig


class NPRewardTrainer(GatedLoRATrainerMixin, RewardTrainer):
    r"""Few-shot steerable LoRA reward model trainer (NP-BTL of
    [Few-shot Steerable Alignment](https://huggingface.co/papers/2412.13998)), a [`~trl.RewardTrainer`].

    The training data is a standard TRL preference dataset with a user column. Each training example is an episode of
    one user's target pairs plus a context subset of them; a neural-process encoder turns the context into a latent z,
    a hypernetwork turns z into per-example rank-wise gates of every LoRA layer, and the loss is TRL's own
    Bradley-Terry loss on the targets, p(a > b | x, z) = sigmoid(r(x, a, z) - r(x, b, z)) (with `margin` and
    `center_rewards_coefficient` as in TRL), plus the KL term of a Gaussian latent. For the paper's frozen-embedding
    reward model use [`NPEmbeddingRewardTrainer`].

    Args:
        model (`str`, [`~transformers.PreTrainedModel`]): the sequence-classification base, as in
            [`~trl.RewardTrainer`].
        args ([`NPRewardConfig`], *optional*): the configuration.
        train_dataset ([`~datasets.Dataset`]): preference pairs with the column `args.user_column`.
        eval_dataset: as `train_dataset`; evaluation episodes use contexts disjoint from their targets. Without one,
            `heldout_fraction` of each user's training pairs are held out and evaluated at every log
            (`heldout_accuracy_ctx{C}`), with a `MemorisationWarning` when the model memorises its pairs.
        peft_config ([`~peft.LoraConfig`]): the LoRA adapter the hypernetwork gates; the reward head must train
            (`task_type="SEQ_CLS"` or `modules_to_save=["score"]`). Required unless `model` is a `PeftModel`.

    Other arguments are those of [`~trl.RewardTrainer`].

    Bad input raises a `ValueError` here, before anything is trained (see [`check_preference_dataset`]). TRL removes
    pairs whose chosen or rejected text is longer than `max_length` tokens; the trainer counts them, and the users
    then skipped for too few pairs, in [`np_dropped`] (e.g. `trainer.np_dropped["train"]["pairs_too_long"]`) and
    logs them in one warning per dataset.

    Example:

    ```python
    >>> from datasets import load_dataset
    >>> from peft import LoraConfig
    >>> from fssa_trl import NPRewardConfig, NPRewardTrainer

    >>> dataset = load_dataset("json", data_files="preferences.jsonl", split="train")  # prompt/chosen/rejected/user_id
    >>> trainer = NPRewardTrainer(
    ...     model="Qwen/Qwen2.5-0.5B-Instruct",
    ...     args=NPRewardConfig(output_dir="np-rm", num_targets=16, max_context=10),
    ...     train_dataset=dataset,
    ...     peft_config=LoraConfig(task_type="SEQ_CLS", r=16),
    ... )
    >>> trainer.train()
    ```
    """

    _tag_names = ["trl", "reward-trainer", "fssa-trl", "np-btl"]
    _name = "NP-BTL Reward"
    _np_token_columns = ("chosen_ids", "rejected_ids", "margin")
    _np_length_filter = "pairs_too_long"  # what TRL's RewardTrainer filters out: a key of `np_dropped[name]`

    def __init__(
        self,
        model,
        args: NPRewardConfig | None = None,
        data_collator=None,
        train_dataset: Dataset | None = None,
        eval_dataset=None,
        processing_class=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        optimizer_cls_and_kwargs=None,
        preprocess_logits_for_metrics=None,
        quantization_config=None,
        peft_config=None,
    ):
        args = self._np_args(args, NPRewardConfig, "np-reward-model")
        self._np_check_datasets(args, train_dataset, eval_dataset)
        train_dataset = self._np_set_aside_calibration_pairs(args, train_dataset)
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
            quantization_config=quantization_config,
            peft_config=self._np_peft_config(peft_config, args, quantization_config, model),
        )
        head = reward_head_module(self.model)
        if not any(p.requires_grad for p in head.parameters()):
            raise ValueError(
                "The reward head (`score`) is frozen, so it would stay at its random initialisation and not be saved "
                "with the adapter. Use `LoraConfig(task_type='SEQ_CLS', ...)` or add `modules_to_save=['score']` to "
                "your LoraConfig."
            )
        self._np_setup(
            LoRARewardModelConfig,
            head=head if args.condition_reward_head else None,
            condition_reward_head=args.condition_reward_head,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """TRL's `RewardTrainer.compute_loss` on the targets under the episode's gates (TRL owns the loss, `margin`,
        `center_rewards_coefficient` and its metrics), plus the KL term of a Gaussian latent and the accuracy on
        unseen targets by context size."""
        mode = "train" if self.model.training else "eval"
        batch = self._np_pop_context(inputs)
        latents = self._np_modulate(batch)
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        loss = loss + self._np_latent_losses(mode, latents)
        with torch.no_grad():
            chosen, rejected = outputs.logits.detach().squeeze(-1).chunk(2)
            self._np_count_unseen_accuracy(mode, chosen > rejected, batch)
        return (loss, outputs) if return_outputs else loss

    def steerable_model(self) -> SteerableLoRARewardModel:
        """The model being trained, as a [`SteerableLoRARewardModel`] (shares weights, embedder and gates)."""
        return SteerableLoRARewardModel(
            self.model, self.processing_class, self.fssa_config, self._store.embedder, self._modulator
        )
