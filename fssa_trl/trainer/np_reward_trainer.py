# Copyright 2026 The fssa_trl developers. Apache-2.0.
from __future__ import annotations

import logging
import os
from typing import Any

import torch
from datasets import Dataset
from torch import nn
from transformers import AutoModel, AutoTokenizer
from trl import RewardTrainer
from peft import PeftModel

from .. import __version__
from ..data.collator import CONTEXT_KEYS, DataCollatorForContextSets
from ..modeling.embedding_model import NPEmbeddingRewardConfig, NPEmbeddingRewardModel, encode_episodes
from ..modeling.hypernetwork import LoRAModulator, Modulation
from ..modeling.np_modules import NPModules
from ..modeling.reward_head import preference_log_likelihood
from .np_common import (
    EPISODE_COLUMNS,
    TEXT_KEY_COLUMNS,
    add_text_keys,
    build_store,
    check_preference_dataset,
    embedding_dim,
    encoder_kwargs,
    load_np_into,
    log_unseen_accuracy,
    make_embedder,
    save_np,
    to_episode_dataset,
)
from .np_reward_config import NPRewardConfig

logger = logging.getLogger(__name__)

TOKEN_COLUMNS = ("chosen_ids", "rejected_ids", "margin")


def placeholder_tokenizer():
    """`RewardTrainer` needs a tokenizer for its pad-token plumbing even when no text is tokenized (frozen backbone on
    precomputed embeddings); this two-token tokenizer stands in for it."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1}, unk_token="<pad>"))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>")


def reward_head_module(model: nn.Module) -> nn.Module:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name in ("score", "classifier"):
        if hasattr(base, name):
            return getattr(base, name)
    raise ValueError("`condition_reward_head=True` needs a sequence-classification model with a `score` head.")


class NPRewardTrainer(RewardTrainer):
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
        if train_dataset is None:
            raise ValueError("`train_dataset` is required")
        # Validate every dataset before any model is loaded or text embedded.
        check_preference_dataset(train_dataset, args, "train")
        eval_sets = eval_dataset if isinstance(eval_dataset, dict) else {"eval": eval_dataset}
        for name, dataset in eval_sets.items():
            if dataset is not None:
                check_preference_dataset(dataset, args, name)

        self._np_ready = False  # datasets become episodes once the NP modules and the embedder exist
        self._store = None
        self._modulator = None
        if args.frozen_backbone:
            if peft_config is not None:
                raise ValueError("`frozen_backbone=True` trains only the NP modules: drop `peft_config`.")
            embedder, processing_class = self._frozen_backbone_embedder(model, args, processing_class)
            self._store = build_store(args, embedder)
            dim = embedding_dim(self._store, embedder, train_dataset)
            decoder = dict(
                embedding_dim=dim,
                latent_dim=args.latent_dim,
                hidden_dim=args.decoder_hidden_dim,
                num_layers=args.decoder_num_layers,
                head=args.reward_head,
            )
            np_kwargs = {"encoder": encoder_kwargs(args, dim), "decoder": decoder}
            model = NPEmbeddingRewardModel(NPEmbeddingRewardConfig(np_modules=np_kwargs))
            args.gradient_checkpointing = False  # no backbone runs during training: nothing to checkpoint
            args.activation_checkpointing = False  # its name since transformers 5.24 (the one Trainer.train reads)

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
            self._attach_np_modules(train_dataset)
        self._np_ready = True
        self.train_dataset = self._prepare_dataset(self.train_dataset, self.processing_class, args, "train")
        if isinstance(self.eval_dataset, dict):
            self.eval_dataset = {
                k: self._prepare_dataset(v, self.processing_class, args, k) for k, v in self.eval_dataset.items()
            }
        elif self.eval_dataset is not None:
            self.eval_dataset = self._prepare_dataset(self.eval_dataset, self.processing_class, args, "eval")
        if not isinstance(self.data_collator, DataCollatorForContextSets):
            self.data_collator = DataCollatorForContextSets(
                embeddings=lambda: self._store.table,
                target_collator=None if args.frozen_backbone else self.data_collator,
                include_target_embeddings=args.frozen_backbone or args.latent_type == "gaussian",
            )

    # ----------------------------------------------------------------------------------------------- construction
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
                kwargs = {k: v for k, v in (args.model_init_kwargs or {}).items() if k not in ("num_labels",)}
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

    def _attach_np_modules(self, train_dataset: Dataset) -> None:
        """Attach the latent encoder and the LoRA hypernetwork to the PEFT model, before the optimizer exists."""
        args = self.args
        if not isinstance(self.model, PeftModel):
            raise ValueError(
                "NPRewardTrainer modulates LoRA adapters: pass `peft_config=LoraConfig(task_type='SEQ_CLS', ...)` or a "
                "PeftModel, or set `frozen_backbone=True` to train on frozen embeddings."
            )
        kwargs = (args.gradient_checkpointing_kwargs or {}) if args.gradient_checkpointing else {}
        if kwargs.get("use_reentrant"):
            raise ValueError(
                "Reentrant gradient checkpointing does not propagate gradients to the hypernetwork, whose gates enter "
                "the checkpointed layers from outside. Set `gradient_checkpointing_kwargs={'use_reentrant': False}` "
                "or `gradient_checkpointing=False` (TRL forces `use_reentrant=True` under DeepSpeed ZeRO-3 with PEFT)."
            )
        head = reward_head_module(self.model) if args.condition_reward_head else None
        self._modulator = LoRAModulator(self.model, "default", head_module=head)
        self._store = build_store(args, make_embedder(args, self.model, self.processing_class))
        dim = embedding_dim(self._store, self._store.embedder, train_dataset)
        hidden = self.model.config.get_text_config().hidden_size if head is not None else None
        hypernetwork = dict(
            latent_dim=args.latent_dim,
            num_layers=self._modulator.num_layers,
            rank=self._modulator.rank,
            hidden_dim=args.hypernetwork_hidden_dim,
            head_dim=hidden,
        )
        modules = NPModules(encoder=encoder_kwargs(args, dim), hypernetwork=hypernetwork)
        self.model.fssa_np = modules.to(args.device)

    # ----------------------------------------------------------------------------------------------------- data
    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if "target_in_context" in dataset.column_names:
            return dataset
        prepared = "chosen_ids" in dataset.column_names or TEXT_KEY_COLUMNS[0] in dataset.column_names
        if not prepared:  # raw data: check it and keep the texts to embed
            check_preference_dataset(dataset, args, dataset_name)
            if args.context_embedding != "precomputed":
                dataset = add_text_keys(dataset, processing_class)
            if not args.frozen_backbone:
                dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        if not self._np_ready:
            return dataset
        return to_episode_dataset(dataset, self._store, args, dataset_name, TOKEN_COLUMNS)

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = [*TOKEN_COLUMNS, *EPISODE_COLUMNS]

    # ----------------------------------------------------------------------------------------------------- loss
    @property
    def np_modules(self) -> NPModules:
        return self.model.fssa_np

    def _rewards(self, model, inputs: dict[str, Any], batch: dict[str, torch.Tensor]):
        """Rewards of chosen and rejected targets `(N,)`, their variances (DPL) and the KL term."""
        if self.args.frozen_backbone:
            outputs = model(**batch)
            return outputs, outputs.chosen, outputs.rejected, outputs.chosen_var, outputs.rejected_var, outputs.kl
        latents = encode_episodes(self.np_modules, batch, self.model.training)
        modulation = self.np_modules.hypernetwork(latents.z_rows)  # (N, ...) one row per target pair
        heads = None if modulation.head is None else torch.cat([modulation.head, modulation.head])
        # Rows of the batch are [chosen targets; rejected targets]. The modulation stays set through backward(), so
        # the gradient-checkpointing recompute sees it too; training_step clears it afterwards.
        self._modulator.set(Modulation(torch.cat([modulation.gates, modulation.gates]), heads))
        inputs["use_cache"] = False
        outputs = model(**inputs)
        chosen, rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
        return outputs, chosen, rejected, None, None, latents.kl

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        batch = {key: inputs.pop(key) for key in CONTEXT_KEYS if key in inputs}
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
            self._metrics[mode]["accuracy"].append(self.accelerator.gather_for_metrics(correct.float().mean()).mean().item())
            margins = self.accelerator.gather_for_metrics((chosen - rejected).mean())
            self._metrics[mode]["margin"].append(margins.mean().item())
            if kl is not None:
                self._metrics[mode]["kl"].append(self.accelerator.gather_for_metrics(kl.detach()).mean().item())
            log_unseen_accuracy(self, mode, correct, batch)
        return (loss, outputs) if return_outputs else loss

    def training_step(self, *args, **kwargs):
        try:
            return super().training_step(*args, **kwargs)
        finally:
            if self._modulator is not None:
                self._modulator.clear()

    def prediction_step(self, *args, **kwargs):
        try:
            return super().prediction_step(*args, **kwargs)
        finally:
            if self._modulator is not None:
                self._modulator.clear()

    # ------------------------------------------------------------------------------------------ save and restore
    def fssa_config(self) -> dict[str, Any]:
        """What [`SteerableRewardModel.from_pretrained`] needs besides the weights (written to fssa_config.json)."""
        args = self.args
        embedder = self._store.embedder
        return {
            "fssa_trl_version": __version__,
            "kind": "reward",
            "mode": "embedding" if args.frozen_backbone else "lora",
            "context_embedding": {
                "source": args.context_embedding,
                "name_or_path": None if embedder is None else str(embedder.name),
                "pooling": args.context_embedding_pooling,
                "max_length": args.context_max_length,
            },
            "condition_reward_head": args.condition_reward_head,
            "reward_head": args.reward_head,
            "adapter_name": "default",
        }

    def _save(self, output_dir: str | None = None, state_dict=None):
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.frozen_backbone:
            super()._save(output_dir, state_dict=state_dict)  # PEFT adapter, tokenizer, training args
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        save_np(output_dir, self.model, state_dict, self.fssa_config())
        if self.args.frozen_backbone and self._store.embedder is not None:
            self.processing_class.save_pretrained(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if not self.args.frozen_backbone:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_np_into(self.model, resume_from_checkpoint)

    def steerable_model(self):
        """The model being trained, as a [`SteerableRewardModel`] (shares weights, embedder and hooks)."""
        from ..modeling.reward_model import SteerableRewardModel

        return SteerableRewardModel(
            self.model, self.processing_class, self.fssa_config(), self._store.embedder, self._modulator
        )
