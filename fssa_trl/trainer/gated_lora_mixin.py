# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""What the two LoRA trainers (`NPRewardTrainer`, `NPDPOTrainer`) add to [`NPTrainerMixin`]: gated LoRA layers built
by PEFT, the latent encoder and hypernetwork attached to the PEFT model, TRL's tokenization followed by episodes, and
the per-step scope of the LoRA gates."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from peft import PeftModel
from torch import nn

from ..data.embeddings import ContextEmbeddingStore, embedding_dim, make_embedder
from ..data.episode_dataset import add_text_keys
from ..data.validation import TEXT_KEY_COLUMNS
from ..modeling.config import HypernetworkConfig, RewardDecoderConfig
from ..modeling.gated_lora import LoRAModulator, gated_lora_config
from ..modeling.hypernetwork import Modulation
from ..modeling.np_modules import EpisodeLatents, NPModules, encode_episodes
from ..modeling.reward_head import preference_log_likelihood
from .np_trainer_mixin import NPTrainerMixin


class GatedLoRATrainerMixin(NPTrainerMixin):
    """Mixed in before `trl.RewardTrainer` / `trl.DPOTrainer`. The trainer calls, in its `__init__`:

    1. [`_np_check_datasets`] and [`_np_peft_config`] before `super().__init__` (TRL then builds the PEFT model with
       gated LoRA layers and tokenizes the datasets through [`_prepare_dataset`]);
    2. [`_np_setup`] after it: embedder, latent encoder, hypernetwork, saved config, episodes and collator.

    The gates of a batch are entered by `compute_loss` into the scope of the current training or prediction step
    ([`np_step`]) and leave with it, after `backward()`: gradient checkpointing recomputes the gated layers during
    `backward()`, which the Trainer runs after `compute_loss` has returned.
    """

    _modulator: LoRAModulator | None = None
    _np_gate_scope: contextlib.ExitStack | None = None

    # ------------------------------------------------------------------------------------------------ construction
    @staticmethod
    def _np_peft_config(peft_config, args=None, quantization_config=None):
        """The user's LoRA config, copied with the gated layer registered (`None` when the model is a PeftModel).

        Refuses a quantized base model before any weight is loaded: PEFT builds its own LoRA layers for bitsandbytes
        layers, which the hypernetwork cannot gate (only `nn.Linear` and `Conv1D` projections are gated).
        """
        init_kwargs = getattr(args, "model_init_kwargs", None)
        if quantization_config is None and isinstance(init_kwargs, dict):
            quantization_config = init_kwargs.get("quantization_config")
        if quantization_config is not None:
            raise ValueError(
                "A quantized base model (`quantization_config`, e.g. from `--load_in_4bit` or `--load_in_8bit`) cannot "
                "be gated: fssa_trl modulates LoRA layers of full-precision `nn.Linear` projections, and PEFT builds "
                "different LoRA layers on bitsandbytes weights. Load the base model unquantized (for example "
                "`--dtype bfloat16`) and drop the quantization flags."
            )
        return None if peft_config is None else gated_lora_config(peft_config)

    def _np_setup(self, saved_config_class, head: nn.Module | None = None, **saved_fields) -> None:
        """Build the NP modules on the PEFT model (before the optimizer exists), the saved config, the episodes of
        every dataset and the context-set collator."""
        args = self.args
        if not isinstance(self.model, PeftModel):
            raise ValueError(
                f"{type(self).__name__} modulates LoRA adapters: pass `peft_config=LoraConfig(...)` with the base model."
            )
        checkpointing = (args.gradient_checkpointing_kwargs or {}) if args.gradient_checkpointing else {}
        if checkpointing.get("use_reentrant"):
            raise ValueError(
                "Reentrant gradient checkpointing does not propagate gradients to the hypernetwork, whose gates enter "
                "the checkpointed layers from outside. Set `gradient_checkpointing_kwargs={'use_reentrant': False}` "
                "or `gradient_checkpointing=False` (TRL forces `use_reentrant=True` under DeepSpeed ZeRO-3 with PEFT)."
            )
        modulator = LoRAModulator(self.model, "default", head_module=head)
        embedder = make_embedder(
            args.context_embedding,
            self.model,
            self.processing_class,
            args.context_embedding_pooling,
            args.context_max_length,
            args.embedding_batch_size,
        )
        store = ContextEmbeddingStore(embedder, cache_dir=args.embedding_cache_dir)
        hypernetwork = HypernetworkConfig(
            latent_dim=args.latent_dim,
            num_layers=modulator.num_layers,
            rank=modulator.rank,
            hidden_dim=args.hypernetwork_hidden_dim,
            head_dim=self.model.config.get_text_config().hidden_size if head is not None else None,
            init_std=args.hypernetwork_init_std,
        )
        dim = embedding_dim(embedder, self.train_dataset)
        decoder = None
        if args.context_btl_weight > 0:
            decoder = RewardDecoderConfig(
                embedding_dim=dim,
                latent_dim=args.latent_dim,
                hidden_dim=args.context_decoder_hidden_dim,
                num_layers=2,
                head="btl",
                conditioning="film",
            )
        self.fssa_config = saved_config_class(
            encoder=self._np_encoder_config(args, dim),
            context_embedding=self._np_context_embedding_config(args, store),
            hypernetwork=hypernetwork,
            decoder=decoder,
            **saved_fields,
        )
        dtype = next((p.dtype for p in self.model.parameters() if p.requires_grad), torch.float32)
        self.model.fssa_np = NPModules.from_config(self.fssa_config).to(device=args.device, dtype=dtype)
        self._modulator, self._store = modulator, store
        self._np_zero3_leaf_modules()
        self._np_episode_datasets()

    def _np_episode_datasets(self) -> None:
        """Turn the datasets TRL tokenized in `__init__` into episodes, and wrap TRL's collator."""
        args = self.args
        self.train_dataset = self._prepare_dataset(self.train_dataset, self.processing_class, args, "train")
        if isinstance(self.eval_dataset, dict):
            self.eval_dataset = {
                k: self._prepare_dataset(v, self.processing_class, args, k) for k, v in self.eval_dataset.items()
            }
        elif self.eval_dataset is not None:
            self.eval_dataset = self._prepare_dataset(self.eval_dataset, self.processing_class, args, "eval")
        # q(z | targets) of the NP ELBO, and the targets of the auxiliary NP-BTL loss
        include_targets = args.latent_type == "gaussian" or args.context_btl_weight > 0
        self.data_collator = self._np_collator(self._store, self.data_collator, include_targets)

    # ------------------------------------------------------------------------------------------------------- data
    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        """TRL's tokenization of raw pairs (keeping the texts to embed), then, once the NP modules exist, episodes."""
        columns = dataset.column_names
        if "target_in_context" in columns:  # already episodes
            return dataset
        if "chosen_ids" not in columns and TEXT_KEY_COLUMNS[0] not in columns:  # raw pairs
            if (
                self._store is not None
            ):  # a dataset given after __init__ (e.g. to `evaluate`); __init__ checked its own
                self._np_check_dataset(args, dataset, dataset_name)
            if args.context_embedding != "precomputed":
                dataset = add_text_keys(dataset, processing_class)
            dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        if self._store is None:  # called from TRL's __init__: episodes are built in `_np_setup`
            return dataset
        return self._np_episodes(dataset, self._store, args, dataset_name, self._np_token_columns)

    # ------------------------------------------------------------------------------------------------------- steps
    @property
    def np_modules(self) -> NPModules:
        return self.model.fssa_np

    @contextlib.contextmanager
    def np_step(self) -> Iterator[None]:
        """The lifetime of the LoRA gates that `compute_loss` sets: one training step (forward, backward, and the
        gradient-checkpointing recompute inside backward) or one prediction step. Nested calls share the outer scope.
        Wrap a hand-made `compute_loss(...).backward()` in it."""
        if self._np_gate_scope is not None:
            yield
            return
        with contextlib.ExitStack() as scope:
            self._np_gate_scope = scope
            try:
                yield
            finally:
                self._np_gate_scope = None

    def training_step(self, *args, **kwargs):
        with self.np_step():
            return super().training_step(*args, **kwargs)

    def prediction_step(self, *args, **kwargs):
        with self.np_step():
            return super().prediction_step(*args, **kwargs)

    def _np_modulate(self, batch: dict[str, torch.Tensor]) -> EpisodeLatents:
        """Encode the episodes and enter one modulation per row of `[chosen targets; rejected targets]` into the
        current step's scope."""
        if self._np_gate_scope is None:
            raise RuntimeError(
                f"{type(self).__name__}.compute_loss sets LoRA gates that must outlive it (the gradient-checkpointing "
                "recompute in backward() reads them): call it inside `with trainer.np_step(): ...` (training_step and "
                "prediction_step do)."
            )
        latents = encode_episodes(self.np_modules.encoder, batch, self.model.training)
        decoder = self.np_modules.decoder
        if decoder is not None:  # auxiliary NP-BTL: the targets' choices from their context embeddings and z
            mask = batch["target_mask"]
            chosen, _ = decoder(batch["target_chosen_embeddings"][mask], latents.z_rows)
            rejected, _ = decoder(batch["target_rejected_embeddings"][mask], latents.z_rows)
            latents.btl_loss = -preference_log_likelihood(chosen, rejected).mean()
        modulation = self.np_modules.hypernetwork(latents.z_rows)
        heads = None if modulation.head is None else torch.cat([modulation.head, modulation.head])
        gates = torch.cat([modulation.gates, modulation.gates])
        self._np_gate_scope.enter_context(self._modulator.apply(Modulation(gates, heads)))
        return latents

    def _np_latent_losses(self, mode: str, latents: EpisodeLatents) -> torch.Tensor | int:
        """The terms the NP modules add to the trainer's loss, logged: the KL of a Gaussian latent (`kl`) and the
        auxiliary NP-BTL loss (`context_btl_loss`)."""
        extra = 0
        for name, value, weight in (
            ("kl", latents.kl, self.args.kl_weight),
            ("context_btl_loss", latents.btl_loss, self.args.context_btl_weight),
        ):
            if value is not None:
                extra = extra + weight * value
                self._metrics[mode][name].append(self.accelerator.gather_for_metrics(value.detach()).mean().item())
        return extra

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        self._np_flush_accuracy("train" if self.model.training else "eval")
        super().log(logs, start_time)

    # ------------------------------------------------------------------------------------------ save and restore
    def _save(self, output_dir: str | None = None, state_dict=None):
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        super()._save(output_dir, state_dict=state_dict)  # PEFT adapter, tokenizer, training args
        self._np_save(output_dir, state_dict)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._np_load(resume_from_checkpoint)
