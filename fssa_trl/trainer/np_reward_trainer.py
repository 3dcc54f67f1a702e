# Copyright 2026 The fssa_trl developers. Apache-2.0.
from __future__ import annotations

import logging
import os
from typing import Any

import torch
from datasets import Dataset
from transformers import AutoModel, AutoTokenizer, set_seed
from trl import RewardTrainer

from ..modeling.embedding_model import NPEmbeddingRewardConfig, NPEmbeddingRewardModel
from ..modeling.reward_head import preference_log_likelihood
from ..modeling.reward_model import reward_head_module
from .np_common import (
    build_store,
    embedding_dim,
    encoder_kwargs,
    load_np_into,
    log_unseen_accuracy,
    make_embedder,
    save_np,
)
from .np_mixin import NPTrainerMixin
from .np_reward_config import NPRewardConfig

logger = logging.getLogger(__name__)


def placeholder_tokenizer():
    """`RewardTrainer` needs a tokenizer for its pad-token plumbing even when no text is tokenized (frozen backbone on
    precomputed embeddings); this two-token tokenizer stands in for it."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1}, unk_token="<pad>"))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>")


class NPRewardTrainer(NPTrainerMixin, RewardTrainer):
    r"""Few-shot steerable reward model trainer (NP-BTL of
    [Few-shot Steerable Alignment](https://huggingface.co/papers/2412.13998)), a [`~trl.RewardTrainer`].

    The training data is a standard TRL preference dataset with a user column. Each training example is an episode of
    one user's target pairs plus a context subset of them; a neural-process encoder turns the context into a latent z,
    and the loss is the heterogeneous Bradley-Terry-Luce likelihood p(a > b | x, z) = sigmoid(r(x, a, z) - r(x, b, z)):

    - with LoRA (`peft_config`), z drives a hypernetwork that gates every LoRA layer rank-wise, per example;
    - with `frozen_backbone=True`, responses are embedded once and r = MLP([e(x, y), z]) (the paper's setting).

    Args:
        model (`str`, [`~transformers.PreTrainedModel`] or [`~peft.PeftModel`], *optional*):
            As in [`~trl.RewardTrainer`]. With `frozen_backbone=True` it is the frozen backbone that embeds texts
            (`context_embedding="base"`), and may be `None` for precomputed embeddings or a separate encoder.
        args ([`NPRewardConfig`], *optional*): the configuration.
        train_dataset ([`~datasets.Dataset`]): preference pairs with the column `args.user_column`.
        eval_dataset: as `train_dataset`; evaluation episodes use contexts disjoint from their targets.
        peft_config ([`~peft.LoraConfig`], *optional*): the LoRA adapter the hypernetwork modulates (required unless
            `frozen_backbone=True` or `model` is already a `PeftModel`).

    Other arguments are those of [`~trl.RewardTrainer`].

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
    _np_kind = "reward"
    _np_token_columns = ("chosen_ids", "rejected_ids", "margin")

    def __init__(
        self,
        model=None,
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
        if args is None:
            args = NPRewardConfig(output_dir="np-reward-model")
        elif not isinstance(args, NPRewardConfig):
            raise TypeError(f"`args` must be an `NPRewardConfig`, got {type(args).__name__}.")
        self._np_check_datasets(args, train_dataset, eval_dataset)
        if args.frozen_backbone:
            if peft_config is not None:
                raise ValueError("`frozen_backbone=True` trains only the NP modules: drop `peft_config`.")
            model, processing_class = self._frozen_backbone_model(model, args, processing_class, train_dataset)

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
            peft_config=peft_config,
        )
        if not args.frozen_backbone:
            if not any(p.requires_grad for p in reward_head_module(self.model).parameters()):
                raise ValueError(
                    "The reward head (`score`) is frozen, so it would stay at its random initialisation and not be "
                    "saved with the adapter. Use `LoraConfig(task_type='SEQ_CLS', ...)` or add "
                    "`modules_to_save=['score']` to your LoraConfig."
                )
            head = reward_head_module(self.model) if args.condition_reward_head else None
            self._np_attach_lora_modules(train_dataset, head=head)
        self._np_finish_init(
            target_collator_needed=not args.frozen_backbone,
            include_target_embeddings=args.frozen_backbone or args.latent_type == "gaussian",
        )

    # ------------------------------------------------------------------------------------------------ construction
    def _frozen_backbone_model(self, model, args: NPRewardConfig, processing_class, train_dataset):
        """The fast path: the frozen embedder (kept in the embedding store) and the NP reward model to train."""
        embedder, processing_class = self._frozen_backbone_embedder(model, args, processing_class)
        args.model_init_kwargs = None  # consumed by the embedder; the trained model is built here
        self._store = build_store(args, embedder)
        dim = embedding_dim(embedder, train_dataset)
        decoder = dict(
            embedding_dim=dim,
            latent_dim=args.latent_dim,
            hidden_dim=args.decoder_hidden_dim,
            num_layers=args.decoder_num_layers,
            head=args.reward_head,
        )
        np_kwargs = {"encoder": encoder_kwargs(args, dim), "decoder": decoder}
        # No backbone runs during training: nothing to checkpoint (`gradient_checkpointing` mirrors the new name).
        args.activation_checkpointing = args.gradient_checkpointing = False
        set_seed(args.seed)  # as RewardTrainer does before building a model from a name: `seed` fixes the init
        return NPEmbeddingRewardModel(NPEmbeddingRewardConfig(np_modules=np_kwargs)), processing_class

    @staticmethod
    def _frozen_backbone_embedder(model, args: NPRewardConfig, processing_class):
        """The frozen embedder and tokenizer of the fast path."""
        if args.context_embedding == "precomputed":
            if model is not None:
                raise ValueError(
                    "With `frozen_backbone=True` and `context_embedding='precomputed'` no model runs: pass `model=None`."
                )
            return None, processing_class or placeholder_tokenizer()
        if args.context_embedding == "base":
            if model is None:
                raise ValueError(
                    "`frozen_backbone=True` with `context_embedding='base'` embeds with `model`: pass the backbone "
                    "(name, path or model), or set `context_embedding` to an encoder name or 'precomputed'."
                )
            if isinstance(model, str):
                name = model
                kwargs = {k: v for k, v in (args.model_init_kwargs or {}).items() if v is not None}
                kwargs.pop("num_labels", None)
                model = AutoModel.from_pretrained(model, **kwargs)
            else:
                name = model.config._name_or_path
            model = model.to(args.device).eval().requires_grad_(False)
            processing_class = processing_class or AutoTokenizer.from_pretrained(name)
            embedder = make_embedder(args, model, processing_class)
            embedder.name = name
            return embedder, processing_class
        if model is not None:
            raise ValueError(
                f"With `frozen_backbone=True` the encoder {args.context_embedding!r} embeds everything: pass "
                "`model=None`, or set `context_embedding='base'` to embed with `model`."
            )
        embedder = make_embedder(args, None, None)
        embedder.model.to(args.device)
        return embedder, processing_class or embedder.tokenizer

    # ----------------------------------------------------------------------------------------------------- data
    def _np_tokenize(self, dataset, processing_class, args, dataset_name):
        if args.frozen_backbone:  # nothing to tokenize: targets are scored from their cached embeddings
            return dataset
        return super()._np_tokenize(dataset, processing_class, args, dataset_name)

    # ----------------------------------------------------------------------------------------------------- loss
    def _rewards(self, model, inputs: dict[str, Any], batch: dict[str, torch.Tensor]):
        """Rewards of chosen and rejected targets `(N,)`, their variances (DPL) and the KL term."""
        if self.args.frozen_backbone:
            outputs = model(**batch)
            return outputs, outputs.chosen, outputs.rejected, outputs.chosen_var, outputs.rejected_var, outputs.kl
        latents = self._np_modulate(batch)
        inputs["use_cache"] = False
        outputs = model(**inputs)
        chosen, rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
        return outputs, chosen, rejected, None, None, latents.kl

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        batch = self._np_pop_context(inputs)
        margin = inputs.pop("margin", None)
        outputs, chosen, rejected, chosen_var, rejected_var, kl = self._rewards(model, inputs, batch)
        loss = -preference_log_likelihood(chosen, rejected, chosen_var, rejected_var, margin).mean()
        if kl is not None:
            loss = loss + self.args.kl_weight * kl
        if self.args.center_rewards_coefficient is not None:
            loss = loss + self.args.center_rewards_coefficient * torch.mean((chosen + rejected) ** 2)

        if mode == "train" and "attention_mask" in inputs:
            num_tokens = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
            self._total_train_tokens += num_tokens // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        with torch.no_grad():
            rewards = self.accelerator.gather(torch.cat([chosen, rejected]).detach())
            self._metrics[mode]["min_reward"].append(rewards.min().item())
            self._metrics[mode]["mean_reward"].append(rewards.mean().item())
            self._metrics[mode]["max_reward"].append(rewards.max().item())
            correct = chosen > rejected
            self._metrics[mode]["accuracy"].append(
                self.accelerator.gather_for_metrics(correct.float().mean()).mean().item()
            )
            margins = self.accelerator.gather_for_metrics((chosen - rejected).mean())
            self._metrics[mode]["margin"].append(margins.mean().item())
            if kl is not None:
                self._metrics[mode]["kl"].append(self.accelerator.gather_for_metrics(kl.detach()).mean().item())
            log_unseen_accuracy(self, mode, correct, batch)
        return (loss, outputs) if return_outputs else loss

    # ------------------------------------------------------------------------------------------ save and restore
    def fssa_config(self) -> dict[str, Any]:
        config = super().fssa_config()
        config.update(
            mode="embedding" if self.args.frozen_backbone else "lora",
            condition_reward_head=self.args.condition_reward_head,
            reward_head=self.args.reward_head,
        )
        return config

    def _save(self, output_dir: str | None = None, state_dict=None):
        if not self.args.frozen_backbone:
            return super()._save(output_dir, state_dict)
        # Frozen backbone: the NP modules are the whole trained model; the backbone is referenced by name.
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            save_np(output_dir, self.model, state_dict, self.fssa_config())
            if self._store.embedder is not None:
                self.processing_class.save_pretrained(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if not self.args.frozen_backbone:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_np_into(self.model, resume_from_checkpoint)

    def steerable_model(self):
        """The model being trained, as a [`SteerableRewardModel`] (shares weights, embedder and hooks)."""
        from ..modeling.reward_model import SteerableRewardModel

        return SteerableRewardModel(
            self.model, self.processing_class, self.fssa_config(), self._store.embedder, self._modulator
        )
