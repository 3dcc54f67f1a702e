# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""What the two LoRA trainers (`NPRewardTrainer`, `NPDPOTrainer`) add to [`NPTrainerMixin`]: gated LoRA layers built
by PEFT, the latent encoder and hypernetwork attached to the PEFT model, TRL's tokenization followed by episodes, and
the per-step scope of the LoRA gates."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from importlib.metadata import version

import torch
from packaging.version import Version
from peft import PeftModel
from torch import nn

from ..data.embeddings import ContextEmbeddingStore, embedding_dim, make_embedder
from ..data.episode_dataset import add_text_keys, is_episode_dataset
from ..data.validation import TEXT_KEY_COLUMNS
from ..modeling.config import HypernetworkConfig, RewardDecoderConfig
from ..modeling.gated_lora import LoRAModulator, gated_lora_config
from ..modeling.hypernetwork import Modulation
from ..modeling.np_modules import EpisodeLatents, NPModules, encode_episodes
from ..modeling.reward_head import preference_log_likelihood
from .np_trainer_mixin import NPTrainerMixin

# DeepSpeed ZeRO-3 broke non-reentrant activation checkpointing of models with frozen parameters (LoRA) until 0.19.3
# (deepspeedai/DeepSpeed#8148): the recompute in backward re-partitioned frozen weights that torch's checkpoint still
# held, and backward failed with `CheckpointError: ... saved {'shape': [32]} vs recomputed {'shape': [0]}`.
MIN_DEEPSPEED_FOR_NON_REENTRANT = "0.19.3"
ZERO3_CHECKPOINTING_DOCS = 'BENCHMARKS.md, section "ZeRO-3 with gradient checkpointing"'


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
    @classmethod
    def _np_peft_config(cls, peft_config, args=None, quantization_config=None, model=None):
        """The user's LoRA config, copied with the gated layer registered (`None` when the model is a PeftModel).

        Refuses, before any weight is loaded, a quantized base model (PEFT builds its own LoRA layers for bitsandbytes
        layers, which the hypernetwork cannot gate: only `nn.Linear` and `Conv1D` projections are gated), then a
        `model` that is not a `PeftModel` without a `peft_config` (there would be no LoRA layer to gate; TRL's
        DPOTrainer would first load a second copy as the reference, from the model's name, which an in-memory model
        does not have).
        Checks the gradient checkpointing TRL will set up for the PEFT model ([`_np_check_checkpointing`]).
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
        if peft_config is None and model is not None and not isinstance(model, PeftModel):
            given = f"the model name or path {model!r}" if isinstance(model, str) else f"a `{type(model).__name__}`"
            raise ValueError(
                f"{cls.__name__} gates the LoRA layers of a PEFT adapter, but got `peft_config=None` and {given}: pass "
                "`peft_config=LoraConfig(...)` with the base model (as in the class docstring), or a `PeftModel` as "
                "`model`."
            )
        if args is not None:
            cls._np_check_checkpointing(args)
        return None if peft_config is None else gated_lora_config(peft_config)

    def _np_setup(self, saved_config_class, head: nn.Module | None = None, **saved_fields) -> None:
        """Build the NP modules on the PEFT model (before the optimizer exists), the saved config, the episodes of
        every dataset and the context-set collator."""
        args = self.args
        if not isinstance(self.model, PeftModel):
            raise ValueError(
                f"{type(self).__name__} modulates LoRA adapters: pass `peft_config=LoraConfig(...)` with the base model."
            )
        if self.is_fsdp_enabled:
            self._np_check_fsdp_version(self.accelerator.state.fsdp_plugin)
        self._np_non_reentrant_checkpointing()
        modulator = LoRAModulator(self.model, "default", head_module=head)
        embedder = make_embedder(
            args.context_embedding,
            self.model,
            self.processing_class,
            args.context_embedding_pooling,
            args.context_max_length,
            args.embedding_batch_size,
        )
        store = ContextEmbeddingStore(embedder, cache_dir=args.embedding_cache_dir, distributed=True)
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
            max_context=args.max_context,
            **saved_fields,
        )
        dtype = next((p.dtype for p in self.model.parameters() if p.requires_grad), torch.float32)
        self.model.fssa_np = NPModules.from_config(self.fssa_config).to(device=args.device, dtype=dtype)
        self._modulator, self._store = modulator, store
        self._np_zero3_leaf_modules()
        self._np_episode_datasets()

    @staticmethod
    def _np_check_fsdp_version(fsdp_plugin) -> None:
        """The LoRA trainers support FSDP2 only (per-parameter sharding: the NP modules run on the root's gathered
        weights, see `_np_fsdp2_gather_root`); FSDP1's flat parameters are neither supported nor tested."""
        fsdp_version = getattr(fsdp_plugin, "fsdp_version", None)
        if fsdp_version != 2:
            raise ValueError(
                f"FSDP version {fsdp_version} is not supported by the fssa_trl LoRA trainers: they need FSDP2. Set "
                "`fsdp_version: 2` in the accelerate config's `fsdp_config` (see "
                "recipes/accelerate_configs/fsdp2.yaml), or `fsdp_config={'version': 2}` in the training arguments."
            )

    # ----------------------------------------------------------------------------------- gradient checkpointing
    # The gates enter the checkpointed decoder layers from outside the checkpointed function's inputs. Non-reentrant
    # checkpointing (torch's saved-tensor hooks) differentiates through them into the hypernetwork; reentrant
    # checkpointing recomputes with its own `autograd.backward` over the function's inputs only, so the hypernetwork
    # would get no gradient from the layers. TRL forces reentrant checkpointing for PEFT under ZeRO-3 (trl#6356, a
    # workaround for the DeepSpeed bug fixed in 0.19.3), which these two methods undo. Remove them once TRL forces it
    # only for DeepSpeed < 0.19.3 (the TRL comment: "Can be removed once [the DeepSpeed fix] is merged and released").
    @staticmethod
    def _np_zero3_checkpointing(args) -> bool:
        """Whether TRL forces `use_reentrant=True` on this run: gradient checkpointing of a PEFT model (always, here)
        under DeepSpeed ZeRO-3, TRL's own condition."""
        plugin = getattr(args, "deepspeed_plugin", None)
        return bool(args.gradient_checkpointing) and plugin is not None and plugin.zero_stage == 3

    @classmethod
    def _np_check_checkpointing(cls, args) -> None:
        """Before TRL's `__init__`: refuse reentrant checkpointing, and under ZeRO-3 a DeepSpeed that cannot run the
        non-reentrant one; there, drop `use_reentrant=False` from the kwargs TRL reads, so that TRL does not warn that
        it forces `True` ([`_np_non_reentrant_checkpointing`] sets `False` again after TRL's `__init__`)."""
        if not args.gradient_checkpointing:
            return
        kwargs = args.gradient_checkpointing_kwargs or {}
        if kwargs.get("use_reentrant"):
            raise ValueError(
                "Reentrant gradient checkpointing does not propagate gradients to the hypernetwork, whose gates enter "
                "the checkpointed layers from outside. Set `gradient_checkpointing_kwargs={'use_reentrant': False}` "
                "(or leave `use_reentrant` unset) or `gradient_checkpointing=False`."
            )
        if not cls._np_zero3_checkpointing(args):
            return
        deepspeed_version = version("deepspeed")
        if Version(deepspeed_version) < Version(MIN_DEEPSPEED_FOR_NON_REENTRANT):
            minimum = MIN_DEEPSPEED_FOR_NON_REENTRANT
            raise ValueError(
                f"Gradient checkpointing under DeepSpeed ZeRO-3 with LoRA needs deepspeed>={minimum} (found "
                f"{deepspeed_version}): the hypernetwork's gates need non-reentrant checkpointing, which older "
                "DeepSpeed breaks for frozen weights (`CheckpointError: Recomputed values ... have different "
                f"metadata`, deepspeedai/DeepSpeed#8148). Run `pip install 'deepspeed>={minimum}'`, or set "
                "`gradient_checkpointing=False`, which keeps every layer's activations for backward: see the "
                f"reproduction and the memory it costs in {ZERO3_CHECKPOINTING_DOCS}."
            )
        kwargs.pop("use_reentrant", None)

    def _np_non_reentrant_checkpointing(self) -> None:
        """After TRL's `__init__` (which enabled checkpointing on the model): under ZeRO-3, set back the
        `use_reentrant=False` that TRL forced to `True`, in the arguments and on the model."""
        args = self.args
        if self._np_zero3_checkpointing(args):
            # TRL writes `gradient_checkpointing_kwargs`, `Trainer` reads `activation_checkpointing_kwargs` (new name).
            # Both hold one dict, unless the user gave none: then TRL's new dict is only under the old name.
            kwargs = {**(args.activation_checkpointing_kwargs or {}), **(args.gradient_checkpointing_kwargs or {})}
            kwargs["use_reentrant"] = False
            args.activation_checkpointing_kwargs = args.gradient_checkpointing_kwargs = kwargs
            # As `Trainer.__init__` enables it (every other key goes to `torch.utils.checkpoint.checkpoint`).
            checkpoint_kwargs = dict(kwargs)
            every_n_layers = checkpoint_kwargs.pop("every_n_layers", 1)
            offload = checkpoint_kwargs.pop("offload", False)
            self.model.activation_checkpointing_enable(
                checkpoint_kwargs, every_n_layers=every_n_layers, offload=offload
            )
        if args.gradient_checkpointing and (args.gradient_checkpointing_kwargs or {}).get("use_reentrant"):
            raise ValueError(  # refused before TRL's __init__ unless TRL set it: a TRL that forces it elsewhere
                "Gradient checkpointing was set up reentrant (`use_reentrant=True`, set by TRL for this configuration)"
                ", which does not propagate gradients to the hypernetwork, whose gates enter the checkpointed layers "
                "from outside. Set `gradient_checkpointing=False`."
            )

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
        if is_episode_dataset(dataset):  # already episodes
            return dataset
        if "chosen_ids" not in columns and TEXT_KEY_COLUMNS[0] not in columns:  # raw pairs
            if (
                self._store is not None
            ):  # a dataset given after __init__ (e.g. to `evaluate`); __init__ checked its own
                self._np_check_dataset(args, dataset, dataset_name)
            if args.context_embedding != "precomputed":
                dataset = add_text_keys(dataset, processing_class)
            pairs = len(dataset)
            dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            # TRL's length filter removes pairs (the only rows it removes): counted, and logged with the episodes.
            self.np_dropped[dataset_name] = {self._np_length_filter: pairs - len(dataset)}
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
        batch = self._np_fsdp2_gather_root(batch)
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

    def _np_fsdp2_gather_root(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Under FSDP2, gather the parameters of the root's shard group, which holds the NP modules, before they run,
        and cast the batch's floating-point tensors to their dtype (FSDP2's `MixedPrecisionPolicy.param_dtype`, as FSDP
        casts the inputs of `forward`); returns the batch.

        FSDP2 gathers a shard group when its module's `forward` is called, and the NP modules run outside the model's
        `forward` (on sharded weights: "aten.addmm got mixed torch.Tensor and DTensor"). Shard groups of their own do
        not work either: the first group called becomes FSDP's root ("FSDP requires running forward through the root
        module first"). The `model(...)` call that follows finds the group gathered; it is resharded after backward as
        usual, and the NP modules' gradients are reduced with the rest of the root's.
        """
        if not self.is_fsdp_enabled:
            return batch
        from torch.distributed.fsdp import FSDPModule

        if not isinstance(self.model, FSDPModule):  # FSDP1, or not prepared yet
            return batch
        self.model.unshard()
        dtype = next(self.np_modules.parameters()).dtype
        return {key: value.to(dtype) if value.is_floating_point() else value for key, value in batch.items()}

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
        # FSDP loaded its own checkpoint of the trainable weights (`pytorch_model_fsdp*`), the NP modules with them,
        # into sharded parameters, which `fssa_np.safetensors` cannot be copied into.
        if not self.is_fsdp_enabled:
            self._np_load(resume_from_checkpoint)
