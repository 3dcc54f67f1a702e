# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""What every NP trainer does the same way: validate the data, turn pairs into episodes, collate context sets, log
accuracy by context size, save and restore the NP modules. Mixed in before the Trainer class."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.data_loader import BatchSamplerShard, DataLoaderShard
from datasets import Dataset
from torch import nn

from ..data.collator import CONTEXT_KEYS, DataCollatorForContextSets
from ..data.embeddings import ContextEmbeddingStore
from ..data.episode_dataset import (
    EPISODE_COLUMNS,
    RedrawnEpisodes,
    build_episode_dataset,
    is_episode_dataset,
    split_heldout,
)
from ..data.episodes import DROP_REASONS, group_rows_by_user
from ..data.validation import check_preference_dataset
from ..model_card import PAPER, few_shot_metrics, steerable_model_card_of
from ..modeling.config import FSSA_CONFIG_NAME, ContextEmbeddingConfig, LatentEncoderConfig, SteerableConfig
from ..modeling.inputs import EMBEDDING_KEYS, TEXT_KEYS
from ..modeling.np_modules import (
    FSSA_WEIGHTS_NAME,
    PRIOR_SHIFT_KEY,
    load_np_weights,
    np_state_dict,
    save_np_modules,
)
from ..modeling.steerable import PriorCalibration
from .callbacks import HELDOUT_PREFIX, HeldoutEvaluationCallback
from .checkpoints import (
    CheckpointLayout,
    IncompleteCheckpointWarning,
    incomplete_checkpoint_message,
    resolve_checkpoint,
    write_files_atomically,
)
from .np_dpo_config import NPDPOConfig
from .np_embedding_reward_config import NPEmbeddingRewardConfig
from .np_reward_config import NPRewardConfig

# Which trainer each NP config belongs to, for the error when a config reaches the wrong one.
TRAINER_OF_CONFIG = {
    NPRewardConfig: "NPRewardTrainer",
    NPEmbeddingRewardConfig: "NPEmbeddingRewardTrainer",
    NPDPOConfig: "NPDPOTrainer",
}


class NPTrainerMixin:
    """Shared machinery of [`NPRewardTrainer`], [`NPEmbeddingRewardTrainer`] and [`NPDPOTrainer`].

    A trainer sets `_np_token_columns` (the per-pair columns its target collator reads) and, once its NP modules
    exist, `_store` (the context embeddings) and `fssa_config` (what `save_model` writes as `fssa_config.json`). It
    builds its episodes with [`_np_episodes`] after `Trainer.__init__` (which sets `eval_dataset`): without an
    `eval_dataset`, that also sets `heldout_dataset`, the evaluation episodes of the pairs held out of training.
    """

    _np_token_columns: tuple[str, ...] = ()
    # Class defaults: set by the trainer once its NP modules exist (episodes can be built from then on).
    _store: ContextEmbeddingStore | None = None
    fssa_config: SteerableConfig | None = None
    heldout_dataset = None  # evaluation episodes of the held-out training pairs, if any
    _np_metric_prefix = "eval"  # `metric_key_prefix` of the evaluation in progress
    # The method paper, in TRL's form (`_BaseTrainer._paper`); replaces DPOTrainer's, whose objective NP-DPO conditions.
    _paper = PAPER

    # ------------------------------------------------------------------------------------------------------ args
    @classmethod
    def _np_args(cls, args, config_class, default_output_dir: str):
        """`args`, or a default `config_class` when `None`; another config raises a `TypeError` naming the trainer it
        belongs to."""
        if args is None:
            return config_class(output_dir=default_output_dir)
        if isinstance(args, config_class):
            return args
        owner = next((name for kind, name in TRAINER_OF_CONFIG.items() if isinstance(args, kind)), None)
        hint = f" An `{type(args).__name__}` configures `{owner}`: use that trainer." if owner else ""
        raise TypeError(
            f"`args` of {cls.__name__} must be an `{config_class.__name__}`, got `{type(args).__name__}`.{hint}"
        )

    # ------------------------------------------------------------------------------------------------------ data
    @classmethod
    def _np_check_dataset(cls, args, dataset, dataset_name: str, text_required: bool = True) -> None:
        """[`check_preference_dataset`]; `margin` is checked where the trainer's loss reads it."""
        precomputed, margin_used = args.context_embedding == "precomputed", "margin" in cls._np_token_columns
        check_preference_dataset(dataset, dataset_name, args.user_column, precomputed, text_required, margin_used)

    @classmethod
    def _np_check_datasets(cls, args, train_dataset, eval_dataset, text_required: bool = True) -> None:
        """Validate every dataset before any model is loaded or text embedded."""
        if train_dataset is None:
            raise ValueError(f"`train_dataset` is required: {cls.__name__} trains on preference pairs of users.")
        cls._np_check_dataset(args, train_dataset, "train", text_required)
        eval_sets = eval_dataset if isinstance(eval_dataset, dict) else {"eval": eval_dataset}
        for name, dataset in eval_sets.items():
            if dataset is not None:
                cls._np_check_dataset(args, dataset, name, text_required)

    def _np_episodes(
        self, dataset, store: ContextEmbeddingStore, args, dataset_name: str, token_columns=(), context_sizes=None
    ):
        """Episodes of a (possibly tokenized) pair dataset: training episodes for "train", evaluation ones (at
        `context_sizes`, default `args.eval_context_sizes`) otherwise. For "train" without an `eval_dataset`, the
        held-out pairs (`heldout_fraction`) are set aside first (see [`_np_hold_out`]). What is left out (users with
        too few pairs, after the pairs removed before, e.g. by TRL's length filter) goes to [`np_dropped`], and is
        logged once."""
        training = dataset_name == "train"
        # The pairs removed before (by `_prepare_dataset`) stay; the users are counted anew.
        dropped = {k: v for k, v in self.np_dropped.get(dataset_name, {}).items() if k in DROP_REASONS}
        self.np_dropped[dataset_name] = dropped
        if training and args.heldout_fraction > 0 and self.eval_dataset is None:
            dataset = self._np_hold_out(dataset, store, args, token_columns)
        return build_episode_dataset(
            dataset,
            store,
            dataset_name,
            training=training,
            user_column=args.user_column,
            num_targets=args.num_targets,
            min_context=args.min_context,
            max_context=args.max_context,
            eval_context_sizes=args.eval_context_sizes if context_sizes is None else context_sizes,
            too_few_pairs=args.too_few_pairs,
            episode_passes=args.episode_passes,
            seed=args.seed,
            token_columns=token_columns,
            redraw=training and args.redraw_episodes,
            dropped=dropped,
        )

    @property
    def np_dropped(self) -> dict[str, dict[str, Any]]:
        """What was left out of each dataset's episodes, by dataset name ("train", "eval", "heldout", ...), each also
        logged once as a warning: `pairs_too_long` (NPRewardTrainer: chosen or rejected longer than `max_length`
        tokens, which TRL's RewardTrainer filters out) or `prompts_too_long` (NPDPOTrainer: prompts of `max_length`
        tokens or more, which TRL's DPOTrainer filters out), then `users_too_few_pairs` (the users skipped, under
        `too_few_pairs="skip"`, for fewer pairs than one episode needs, counted after those removals) and
        `pairs_of_skipped_users`. For example `{"train": {"pairs_too_long": 3, "users_too_few_pairs": ["C"],
        "pairs_of_skipped_users": 5}}`."""
        return self.__dict__.setdefault("_np_dropped", {})

    def _np_hold_out(self, dataset, store: ContextEmbeddingStore, args, token_columns=()):
        """The training pairs without the held-out ones. These become `self.heldout_dataset`, evaluation episodes at
        context sizes 0 and `max_context` (the largest the model trains with: the gain over 0-shot is the steering
        the model learnt), evaluated when the trainer logs by a [`HeldoutEvaluationCallback`] added here."""
        dataset, heldout = split_heldout(
            dataset,
            args.user_column,
            args.heldout_fraction,
            min_pairs=args.max_context + 1,
            max_pairs=args.heldout_max_pairs_per_user,
            min_left=args.num_targets,
            seed=args.seed,
        )
        if heldout is not None:
            sizes = sorted({0, args.max_context})
            self.heldout_dataset = self._np_episodes(heldout, store, args, HELDOUT_PREFIX, token_columns, sizes)
            self.remove_callback(HeldoutEvaluationCallback)
            self.add_callback(HeldoutEvaluationCallback(self, args.max_context, args.memorisation_warning_threshold))
        return dataset

    def _get_train_sampler(self, train_dataset=None):
        """As the Trainer's, except for episodes redrawn every epoch (`redraw_episodes`): their own sampler, which
        indexes the epoch the Trainer sets (see [`RedrawnEpisodeSampler`]), shuffled from `data_seed` (else `seed`)
        as accelerate's seedable sampler shuffles, or in order with `train_sampling_strategy="sequential"`."""
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if not isinstance(dataset, RedrawnEpisodes):
            return super()._get_train_sampler(train_dataset)
        strategy = self.args.train_sampling_strategy
        if strategy not in ("random", "sequential"):
            raise ValueError(
                f"`redraw_episodes=True` samples episodes at random or in order, not by length: got "
                f"`train_sampling_strategy={strategy!r}`. Use 'random' (the default) or 'sequential'."
            )
        seed = self.args.seed if self.args.data_seed is None else self.args.data_seed
        return dataset.sampler(seed, shuffle=strategy == "random")

    def get_train_dataloader(self):
        """As the Trainer's; with redrawn episodes, their sampler is also registered as the loader's sampler, as
        accelerate registers its own seedable sampler (`prepare_data_loader`). Otherwise, with several processes and
        a resumed epoch (a `SkipBatchSampler` around the `BatchSamplerShard`), `DataLoaderShard.set_epoch` would not
        reach it, and the resumed epoch would draw epoch 0's episodes."""
        dataloader = super().get_train_dataloader()
        if isinstance(self.train_dataset, RedrawnEpisodes):
            if not isinstance(dataloader, DataLoaderShard):
                raise ValueError(
                    f"`redraw_episodes=True` needs accelerate's `DataLoaderShard`, which passes the epoch to the "
                    f"episode sampler; got a {type(dataloader).__name__}. Do not set "
                    "`accelerator_config.dispatch_batches=True`."
                )
            # With several processes the loader's batch sampler is a BatchSamplerShard around the BatchSampler.
            batch_sampler = dataloader.batch_sampler
            dataloader.set_sampler(getattr(batch_sampler, "batch_sampler", batch_sampler).sampler)
        return dataloader

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = [*self._np_token_columns, *EPISODE_COLUMNS]

    @staticmethod
    def _np_collator(store: ContextEmbeddingStore, target_collator, include_target_embeddings: bool):
        return DataCollatorForContextSets(
            embeddings=lambda: store.vectors,
            target_collator=target_collator,
            include_target_embeddings=include_target_embeddings,
        )

    @staticmethod
    def _np_pop_context(inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Remove the context-set keys from the batch: models swallow unknown kwargs silently."""
        return {key: inputs.pop(key) for key in CONTEXT_KEYS if key in inputs}

    # ------------------------------------------------------------------------------------------------- modules
    @staticmethod
    def _np_encoder_config(args, embedding_dim: int) -> LatentEncoderConfig:
        return LatentEncoderConfig(
            embedding_dim=embedding_dim,
            latent_dim=args.latent_dim,
            hidden_dim=args.encoder_hidden_dim,
            aggregation=args.aggregation,
            latent_type=args.latent_type,
            num_heads=args.aggregation_num_heads,
            pair_features=args.context_pair_features,
            bounded=args.bounded_latent,
        )

    @staticmethod
    def _np_context_embedding_config(args, store: ContextEmbeddingStore) -> ContextEmbeddingConfig:
        source = args.context_embedding if args.context_embedding in ("base", "precomputed") else "encoder"
        return ContextEmbeddingConfig(
            source=source,
            name_or_path=None if store.embedder is None else str(store.embedder.name),
            pooling=args.context_embedding_pooling,
            max_length=args.context_max_length,
        )

    def _np_zero3_leaf_modules(self) -> None:
        if self.is_deepspeed_enabled and any(isinstance(m, nn.MultiheadAttention) for m in self.model.modules()):
            from deepspeed.utils import set_z3_leaf_modules

            # ZeRO-3 gathers parameters per module when it is called; nn.MultiheadAttention reads out_proj.weight
            # without calling out_proj, which stays partitioned ("mat2 must be a matrix"). Leaves are gathered whole.
            set_z3_leaf_modules(self.model, [nn.MultiheadAttention])

    # ----------------------------------------------------------------------------------------------- metrics
    def _np_count_unseen_accuracy(self, mode: str, correct: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        """Count, per context size, the unseen targets of a batch and how many of them are ranked correctly.

        The counts accumulate on the device, with no device sync and a handful of ops per step; [`_np_flush_accuracy`]
        (called by `log`) reduces them over processes once and logs `accuracy_unseen` and `accuracy_ctx{C}`, pooled
        over the steps since the last log.
        """
        num_sizes = max(self.args.max_context, *self.args.eval_context_sizes) + 1
        sizes = batch["target_context_size"].clamp(max=num_sizes - 1)
        bins = torch.where(batch["target_unseen"], sizes, num_sizes)  # seen targets go to a spill bin
        key = bins * 2 + correct  # (bin, correct) -> one index
        counts = self._np_accuracy_counts.get(mode)
        if counts is None:
            counts = self._np_accuracy_counts[mode] = torch.zeros(
                2 * (num_sizes + 1), dtype=torch.long, device=key.device
            )
        counts.index_add_(0, key, torch.ones_like(key))

    @property
    def _np_accuracy_counts(self) -> dict[str, torch.Tensor]:
        return self.__dict__.setdefault("_np_accuracy_counts_by_mode", {})

    def _np_flush_accuracy(self, mode: str) -> None:
        """Reduce the accumulated counts of `mode` over processes and append the accuracies to `self._metrics[mode]`.
        Every process calls it (from `log`), also one that counted nothing, so that the reduction matches."""
        num_sizes = max(self.args.max_context, *self.args.eval_context_sizes) + 1
        counts = self._np_accuracy_counts.pop(mode, None)
        if counts is None:
            counts = torch.zeros(2 * (num_sizes + 1), dtype=torch.long, device=self.args.device)
        misses, hits = self.accelerator.reduce(counts, reduction="sum").view(-1, 2)[:num_sizes].T.tolist()
        total = sum(misses) + sum(hits)
        if total == 0:
            return
        self._metrics[mode]["accuracy_unseen"].append(sum(hits) / total)
        for size, (miss, hit) in enumerate(zip(misses, hits, strict=True)):
            if miss + hit:
                self._metrics[mode][f"accuracy_ctx{size}"].append(hit / (miss + hit))

    def _np_pop_metrics(self, mode: str, prefix: str) -> dict[str, float]:
        """The step metrics of `mode` averaged since the last log (TRL's convention), keys prefixed, then cleared."""
        metrics = {f"{prefix}{key}": sum(values) / len(values) for key, values in self._metrics[mode].items()}
        self._metrics[mode].clear()
        return metrics

    def get_eval_dataloader(self, eval_dataset=None):
        """As the Trainer's, except that with several processes every process evaluates every batch.

        An evaluation episode has as many targets as its user's pairs allow, so a batch shard of one process can
        hold more target pairs than another's, and TRL's `compute_loss` gathers per-pair tensors (the rewards) with
        `accelerator.gather`, which needs one shape on every process: it failed (gloo: "Received data size doesn't
        match expected size"; NCCL may hang), as soon as the shards differed, e.g. at the held-out evaluations.
        Evaluating the same batches everywhere also runs the same forward calls on every process (ZeRO-3 gathers
        parameters collectively), counts each episode once instead of the shards' padding twice, and gives every
        process the same metrics, those of one process (the loss up to the weighting of a short last batch). The
        price is that evaluation is not sped up by more processes.
        """
        dataloader = super().get_eval_dataloader(eval_dataset)
        if self.accelerator.num_processes > 1:
            shard = getattr(dataloader, "batch_sampler", None)
            if not isinstance(shard, BatchSamplerShard):
                raise ValueError(
                    f"{type(self).__name__} evaluates on several processes by giving each the whole evaluation set, "
                    f"which needs accelerate's `BatchSamplerShard`; got a {type(dataloader).__name__} with "
                    f"{type(shard).__name__}. Do not set `accelerator_config.dispatch_batches=True`."
                )
            # A pass-through shard, as transformers' `Trainer._get_dataloader` makes for its rank-aware
            # `BatchRebalanceSampler`; without `even_batches`, a short last batch is not padded with repeats.
            shard.num_processes, shard.process_index, shard.split_batches, shard.even_batches = 1, 0, False, False
        return dataloader

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """As the Trainer's; the trainer's own metrics are logged under `metric_key_prefix` too (e.g.
        `heldout_accuracy_ctx0`), not always under `eval_`."""
        previous = self._np_metric_prefix, self.eval_dataset
        if isinstance(eval_dataset, Dataset) and is_episode_dataset(eval_dataset):
            # Episodes are evaluated as the trainer's own eval set is: passed to TRL's DPOTrainer.evaluate, they
            # would be prepared again (reference log-probs precomputed into columns they already carry).
            self.eval_dataset, eval_dataset = eval_dataset, None
        self._np_metric_prefix = metric_key_prefix
        try:
            return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        finally:
            self._np_metric_prefix, self.eval_dataset = previous

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if not self.model.training and self._np_metric_prefix != "eval":
            # TRL's `log` would prefix them with "eval_" whatever the evaluation's `metric_key_prefix`.
            logs.update(self._np_pop_metrics("eval", f"{self._np_metric_prefix}_"))
        super().log(logs, start_time)

    # ------------------------------------------------------------------------------------------ save and restore
    def _np_save(self, output_dir: str, state_dict) -> None:
        """Write `fssa_np.safetensors`, `fssa_config.json` and the model card, README.md (main process), after the
        trainer's own files (PEFT's `save_pretrained` writes a card of its own, which ours replaces). `state_dict` is
        the consolidated one under ZeRO-3 (gathered on every rank by `save_model`), else `None`.

        Each file is written atomically ([`write_files_atomically`]): a crash leaves the old file or the new one, whole.
        """
        if self.args.should_save:
            np_weights = np_state_dict(self.model, state_dict)
            if PRIOR_SHIFT_KEY not in np_weights:
                # ZeRO-3's consolidated state dict leaves frozen parameters out. `prior_shift` is zero there: the
                # calibration that sets it is refused under ZeRO-3 (`train`), so it is written as it is.
                np_weights[PRIOR_SHIFT_KEY] = torch.zeros(self.model.fssa_np.encoder.latent_dim)
            card = self._np_model_card(model_id=self.hub_model_id or self.args.hub_model_id or output_dir)

            def write(staging: str) -> None:
                save_np_modules(staging, np_weights, self.fssa_config)
                card.save(os.path.join(staging, "README.md"))

            write_files_atomically(output_dir, write)

    def _np_load(self, checkpoint: str) -> None:
        load_np_weights(self.model.fssa_np, checkpoint)

    def _load_best_model(self) -> None:
        """`load_best_model_at_end=True`: the Trainer restores only the weight files it knows (the adapter); the NP
        modules come from the best checkpoint's `fssa_np.safetensors`. DeepSpeed and FSDP restore them with the rest
        of their own checkpoint."""
        super()._load_best_model()
        if not (self.is_deepspeed_enabled or self.is_fsdp_enabled):
            self._np_load(self.state.best_model_checkpoint)

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, **kwargs):
        """As the Trainer's, resuming only from a complete checkpoint. `resume_from_checkpoint=True` takes the newest
        complete `checkpoint-N` of `output_dir`, with an [`IncompleteCheckpointWarning`] naming any newer incomplete
        one and its bad file (a crash while it was written); a path to an incomplete checkpoint raises a `ValueError`
        naming the file. See [`checkpoint_problem`] for what a complete checkpoint holds."""
        calibrate = self.args.prior_calibration_pairs > 0
        if calibrate and (self.is_fsdp_enabled or self._np_zero3()):
            raise ValueError(
                "`prior_calibration_pairs` fits the 0-shot prior on the whole model in each process, and DeepSpeed "
                "ZeRO-3 / FSDP shard its weights. Set `prior_calibration_pairs=0`, then calibrate the saved model: "
                "`SteerableModel.from_pretrained(output_dir).calibrate_prior(pairs)` and `save_pretrained`."
            )
        if resume_from_checkpoint is not None and resume_from_checkpoint is not False:
            resume_from_checkpoint = self._np_resume_checkpoint(resume_from_checkpoint)
        output = super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)
        if calibrate:
            self.calibrate_prior()
        return output

    def _np_zero3(self) -> bool:
        plugin = getattr(self.args, "deepspeed_plugin", None)
        return plugin is not None and plugin.zero_stage == 3

    def calibrate_prior(self, pairs=None) -> PriorCalibration:
        """Fit the trained model's 0-shot prior to `pairs` (default: the `prior_calibration_pairs` pairs set aside from
        the training set) with [`SteerableModel.calibrate_prior`], and log `prior_calibration_loss_before` /
        `prior_calibration_loss_after`. `train` calls it when `prior_calibration_pairs > 0`; the next `save_model`
        saves it."""
        model = self.steerable_model()
        if pairs is None:
            if self._np_calibration_set is None:
                raise ValueError(
                    "No pairs were set aside to calibrate the prior: set `prior_calibration_pairs`, or pass `pairs` "
                    "(choices of many users that the model did not train on)."
                )
            keys = EMBEDDING_KEYS if model.scores_embeddings else TEXT_KEYS
            pairs = self._np_calibration_set.select_columns(
                [k for k in keys if k in self._np_calibration_set.column_names]
            )
        result = model.calibrate_prior(pairs, batch_size=self.args.per_device_eval_batch_size)
        self.log(
            {"prior_calibration_loss_before": result.loss_before, "prior_calibration_loss_after": result.loss_after}
        )
        return result

    def _np_set_aside_calibration_pairs(self, args, dataset: Dataset | None) -> Dataset | None:
        """Remove `prior_calibration_pairs` pairs from the (checked, raw) training set, an equal share per user and at
        most a quarter of any user's pairs, drawn from `seed`, and keep them as `self._np_calibration_set`: the prior
        is fitted after training on pairs the model has not seen (on training pairs a model that memorised them
        explains them with the wrong latent). Returns the training set without them."""
        self._np_calibration_set = None
        if dataset is None or args.prior_calibration_pairs == 0:
            return dataset
        rows_of = group_rows_by_user(dataset[args.user_column])
        share = -(-args.prior_calibration_pairs // len(rows_of))
        generator = torch.Generator().manual_seed(args.seed)
        chosen = []
        for user in sorted(rows_of):
            order = torch.randperm(len(rows_of[user]), generator=generator)[: min(share, len(rows_of[user]) // 4)]
            chosen.extend(rows_of[user][i] for i in order.tolist())
        if not chosen:
            raise ValueError(
                f"`prior_calibration_pairs={args.prior_calibration_pairs}` found no pairs to set aside: each user gives "
                "at most a quarter of its pairs, and every user has fewer than 4. Set `prior_calibration_pairs=0`."
            )
        if len(chosen) < args.prior_calibration_pairs:
            warnings.warn(
                f"`prior_calibration_pairs={args.prior_calibration_pairs}`: set aside {len(chosen)} pairs, as each "
                "user gives at most a quarter of its pairs. Lower `prior_calibration_pairs` to silence this.",
                stacklevel=3,
            )
        keep = np.ones(len(dataset), dtype=bool)
        keep[chosen] = False
        self._np_calibration_set = dataset.select(np.flatnonzero(~keep))
        return dataset.select(np.flatnonzero(keep))

    def _np_checkpoint_layout(self) -> CheckpointLayout:
        """What a complete checkpoint of this run holds. Under FSDP with a sharded state dict, `save_model` does not
        call `_save`: FSDP's own checkpoint holds the NP modules, and there are no `fssa_np.safetensors`."""
        sharded = self.is_fsdp_enabled and "FULL_STATE_DICT" not in str(
            self.accelerator.state.fsdp_plugin.state_dict_type
        )
        return CheckpointLayout(
            own_files=() if sharded else (FSSA_WEIGHTS_NAME, FSSA_CONFIG_NAME),
            training_state=not self.args.save_only_model,
            engine="deepspeed" if self.is_deepspeed_enabled else "fsdp" if self.is_fsdp_enabled else None,
        )

    def _np_resume_checkpoint(self, resume_from_checkpoint: str | bool) -> str:
        """The checkpoint to resume from ([`resolve_checkpoint`]), the same on every process: each checks the files
        it sees, and processes that disagree (storage not shared, or not whole everywhere) would resume from
        different steps, so they raise together."""
        try:
            path, skipped = resolve_checkpoint(
                resume_from_checkpoint, self.args.output_dir, self._np_checkpoint_layout()
            )
            outcome = path
        except ValueError as error:
            path, skipped, outcome = None, [], error
        if self.accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            seen = sorted(set(gather_object([str(outcome)])))
            if len(seen) > 1:
                raise ValueError(
                    f"The processes disagree on the checkpoint to resume from: {seen}. Every process must see the "
                    "same, whole checkpoint files (shared storage, or `save_on_each_node=True` with one copy per node)."
                )
        if path is None:
            raise outcome
        if skipped and self.accelerator.is_main_process:
            warnings.warn(incomplete_checkpoint_message(path, skipped), IncompleteCheckpointWarning, stacklevel=3)
        return path

    # ------------------------------------------------------------------------------------------------ model card
    def create_model_card(
        self, model_name: str | None = None, dataset_name: str | None = None, tags: str | list[str] | None = None
    ) -> None:
        """Write the model card (see [`steerable_model_card`]) to `args.output_dir`: TRL's hook, called by
        `push_to_hub` and at every checkpoint. `save_model` writes the same card beside the weights."""
        if self.is_world_process_zero():
            card = self._np_model_card(model_name, dataset_name, tags)
            card.save(os.path.join(self.args.output_dir, "README.md"))

    def _np_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | None = None,
        tags: str | list[str] | None = None,
        model_id: str | None = None,
    ):
        """The card of the model being trained, with the last logged few-shot evaluation (`eval_accuracy_ctx{C}`,
        `heldout_accuracy_ctx{C}`) and a usage snippet that loads it, with a context, from `model_id` (default: the
        Hub repository, else `output_dir`)."""
        hub_id = self.hub_model_id or self.args.hub_model_id
        if model_name is None:
            model_name = hub_id.split("/")[-1] if hub_id else Path(self.args.output_dir).name
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        return steerable_model_card_of(
            self.model,
            self.fssa_config,
            model_name=model_name,
            model_id=model_id or hub_id or self.args.output_dir,
            few_shot=few_shot_metrics(self.state.log_history) or None,
            hub_model_id=hub_id,
            tags=[*self._tag_names, *tags, "generated_from_trainer"],
            dataset_name=dataset_name,
            trainer_name=self._name,
        )

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """As the Trainer's (`push_to_hub=True` with `hub_strategy` other than "end"), which copies the weight files
        it knows (config, weights, PEFT adapter) from the checkpoint into `output_dir` and uploads `output_dir`:
        `fssa_np.safetensors` and `fssa_config.json` are copied first, so that the upload is one consistent model."""
        args = self.args
        push = getattr(self, "push_in_progress", None)
        pending = push is not None and not push.is_done()
        # The Trainer's own conditions for pushing at all; outside them it copies nothing, and neither do we.
        if self.is_world_process_zero() and args.hub_strategy != "end" and (args.hub_always_push or not pending):
            for name in (FSSA_WEIGHTS_NAME, FSSA_CONFIG_NAME):
                source = os.path.join(checkpoint_folder, name)
                if os.path.isfile(source):
                    shutil.copy(source, os.path.join(args.output_dir, name))
        super()._push_from_checkpoint(checkpoint_folder)
