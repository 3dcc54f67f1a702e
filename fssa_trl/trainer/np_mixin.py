# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""The part of NPRewardTrainer and NPDPOTrainer that is the same: episodes, NP modules on a PEFT model, the
per-example LoRA modulation, metrics, saving and restoring. Mixed in before the TRL trainer class."""

from __future__ import annotations

import os
from typing import Any

import torch
from peft import PeftModel
from torch import nn

from .. import __version__
from ..data.collator import CONTEXT_KEYS, DataCollatorForContextSets
from ..modeling.embedding_model import EpisodeLatents, encode_episodes
from ..modeling.hypernetwork import LoRAModulator, Modulation
from ..modeling.np_modules import NPModules
from .np_common import (
    EPISODE_COLUMNS,
    TEXT_KEY_COLUMNS,
    add_text_keys,
    build_store,
    check_preference_dataset,
    embedding_dim,
    encoder_kwargs,
    load_np_into,
    make_embedder,
    save_np,
    to_episode_dataset,
)


class NPTrainerMixin:
    """Shared machinery of the NP trainers. The concrete trainer sets `_np_kind` and `_np_token_columns`, calls
    [`_np_check_datasets`] before `super().__init__` and [`_np_finish_init`] after it."""

    _np_kind: str = ""
    _np_token_columns: tuple[str, ...] = ()
    _np_needs_prompt: bool = False

    # ------------------------------------------------------------------------------------------------ construction
    def _np_check_datasets(self, args, train_dataset, eval_dataset) -> None:
        """Validate every dataset before any model is loaded or text embedded; set the pre-init state."""
        if train_dataset is None:
            raise ValueError("`train_dataset` is required")
        check_preference_dataset(train_dataset, args, "train", self._np_needs_prompt)
        eval_sets = eval_dataset if isinstance(eval_dataset, dict) else {"eval": eval_dataset}
        for name, dataset in eval_sets.items():
            if dataset is not None:
                check_preference_dataset(dataset, args, name, self._np_needs_prompt)
        self._np_ready = False  # datasets become episodes once the NP modules and the embedder exist
        self._store = None
        self._modulator = None

    def _np_attach_lora_modules(self, train_dataset, head: nn.Module | None = None) -> None:
        """Attach the latent encoder and the LoRA hypernetwork to the PEFT model, before the optimizer exists."""
        args = self.args
        if not isinstance(self.model, PeftModel):
            raise ValueError(
                f"{type(self).__name__} modulates LoRA adapters: pass `peft_config=LoraConfig(...)` or a PeftModel."
            )
        kwargs = (args.gradient_checkpointing_kwargs or {}) if args.gradient_checkpointing else {}
        if kwargs.get("use_reentrant"):
            raise ValueError(
                "Reentrant gradient checkpointing does not propagate gradients to the hypernetwork, whose gates enter "
                "the checkpointed layers from outside. Set `gradient_checkpointing_kwargs={'use_reentrant': False}` "
                "or `gradient_checkpointing=False` (TRL forces `use_reentrant=True` under DeepSpeed ZeRO-3 with PEFT)."
            )
        self._modulator = LoRAModulator(self.model, "default", head_module=head)
        self._store = build_store(args, make_embedder(args, self.model, self.processing_class))
        dim = embedding_dim(self._store.embedder, train_dataset)
        hypernetwork = dict(
            latent_dim=args.latent_dim,
            num_layers=self._modulator.num_layers,
            rank=self._modulator.rank,
            hidden_dim=args.hypernetwork_hidden_dim,
            head_dim=self.model.config.get_text_config().hidden_size if head is not None else None,
        )
        modules = NPModules(encoder=encoder_kwargs(args, dim), hypernetwork=hypernetwork)
        dtype = next((p.dtype for p in self.model.parameters() if p.requires_grad), torch.float32)
        self.model.fssa_np = modules.to(device=args.device, dtype=dtype)

    def _np_finish_init(self, target_collator_needed: bool, include_target_embeddings: bool) -> None:
        """Turn the prepared datasets into episodes and wrap the collator."""
        args = self.args
        if self.is_deepspeed_enabled and any(isinstance(m, nn.MultiheadAttention) for m in self.model.modules()):
            from deepspeed.utils import set_z3_leaf_modules

            # ZeRO-3 gathers parameters per module when it is called; nn.MultiheadAttention reads out_proj.weight
            # without calling out_proj, which stays partitioned ("mat2 must be a matrix"). Leaves are gathered whole.
            set_z3_leaf_modules(self.model, [nn.MultiheadAttention])
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
                target_collator=self.data_collator if target_collator_needed else None,
                include_target_embeddings=include_target_embeddings,
            )

    # -------------------------------------------------------------------------------------------------------- data
    def _np_tokenize(self, dataset, processing_class, args, dataset_name):
        """TRL's own preparation of a raw pair dataset (overridden by the frozen-backbone path)."""
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        columns = dataset.column_names
        if "target_in_context" in columns:
            return dataset
        prepared = "chosen_ids" in columns or TEXT_KEY_COLUMNS[0] in columns
        if not prepared:  # raw data: check it, keep the texts to embed, let TRL tokenize it
            check_preference_dataset(dataset, args, dataset_name, self._np_needs_prompt)
            if args.context_embedding != "precomputed":
                dataset = add_text_keys(dataset, processing_class)
            dataset = self._np_tokenize(dataset, processing_class, args, dataset_name)
        if not self._np_ready:
            return dataset
        return to_episode_dataset(dataset, self._store, args, dataset_name, self._np_token_columns)

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = [*self._np_token_columns, *EPISODE_COLUMNS]

    # ------------------------------------------------------------------------------------------------------- loss
    @property
    def np_modules(self) -> NPModules:
        return self.model.fssa_np

    @staticmethod
    def _np_pop_context(inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Remove the context-set keys from the batch: models swallow unknown kwargs silently."""
        return {key: inputs.pop(key) for key in CONTEXT_KEYS if key in inputs}

    def _np_modulate(self, batch: dict[str, torch.Tensor]) -> EpisodeLatents:
        """Encode the episodes and set one modulation per row of `[chosen targets; rejected targets]`.

        The modulation stays set through `backward()`, so the gradient-checkpointing recompute sees the same gates;
        `training_step` and `prediction_step` clear it afterwards.
        """
        latents = encode_episodes(self.np_modules, batch, self.model.training)
        modulation = self.np_modules.hypernetwork(latents.z_rows)
        heads = None if modulation.head is None else torch.cat([modulation.head, modulation.head])
        self._modulator.set(Modulation(torch.cat([modulation.gates, modulation.gates]), heads))
        return latents

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
        """What `from_pretrained` needs besides the weights (written to `fssa_config.json`)."""
        args = self.args
        embedder = self._store.embedder
        return {
            "fssa_trl_version": __version__,
            "kind": self._np_kind,
            "mode": "lora",
            "adapter_name": "default",
            "context_embedding": {
                "source": args.context_embedding,
                "name_or_path": None if embedder is None else str(embedder.name),
                "pooling": args.context_embedding_pooling,
                "max_length": args.context_max_length,
            },
        }

    def _save(self, output_dir: str | None = None, state_dict=None):
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        super()._save(output_dir, state_dict=state_dict)  # PEFT adapter, tokenizer, training args
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            save_np(output_dir, self.model, state_dict, self.fssa_config())

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_np_into(self.model, resume_from_checkpoint)
