# Copyright 2026 The fssa_trl developers. Apache-2.0.
from __future__ import annotations

import dataclasses
from collections import defaultdict

import torch
from datasets import Dataset
from transformers import AutoModel, AutoTokenizer, Trainer, set_seed

from ..data.embeddings import ContextEmbeddingStore, TextEmbedder, embedding_dim, make_embedder
from ..data.episode_dataset import add_text_keys, is_episode_dataset
from ..modeling.config import EmbeddingRewardModelConfig, RewardDecoderConfig
from ..modeling.embedding_model import NPEmbeddingRewardModel
from ..modeling.np_modules import NPModules
from ..modeling.reward_head import preference_log_likelihood
from ..modeling.reward_model import SteerableEmbeddingRewardModel
from .np_embedding_reward_config import NPEmbeddingRewardConfig
from .np_trainer_mixin import NPTrainerMixin


class NPEmbeddingRewardTrainer(NPTrainerMixin, Trainer):
    r"""Few-shot steerable reward model on frozen embeddings (NP-BTL as in the reward experiments of
    [Few-shot Steerable Alignment](https://huggingface.co/papers/2412.13998)), a [`~transformers.Trainer`].

    Every (prompt, response) of the data is embedded once by a frozen backbone (or taken from precomputed
    `chosen_embedding` / `rejected_embedding` columns) and cached; only the NP modules train: the latent encoder maps an
    episode's context to z and the reward decoder scores r(x, y, z) = MLP([e(x, y), z]) (the paper's decoder,
    `decoder_conditioning="concat"`; `"film"` modulates the features of MLP(e(x, y)) by z). The loss is the
    heterogeneous Bradley-Terry-Luce likelihood (or the DPL head's, `reward_head="dpl"`), with `margin` and
    `center_rewards_coefficient` as in TRL's `RewardTrainer`, plus the KL term of a Gaussian latent. Metrics follow
    `RewardTrainer`'s names (`accuracy`, `margin`, `min/mean/max_reward`) plus `accuracy_unseen` and `accuracy_ctx{C}`.

    For LoRA reward models, which run the backbone in training, use [`NPRewardTrainer`].

    Args:
        model (`str` or [`~transformers.PreTrainedModel`], *optional*): the frozen backbone that embeds the texts
            (`context_embedding="base"`); `None` with precomputed embeddings or a separate encoder
            (`context_embedding="<encoder name or path>"`).
        args ([`NPEmbeddingRewardConfig`], *optional*): the configuration.
        data_collator (*optional*): defaults to [`DataCollatorForContextSets`] with target embeddings.
        train_dataset ([`~datasets.Dataset`]): preference pairs with the column `args.user_column` (text, or
            precomputed embedding columns).
        eval_dataset: as `train_dataset` (or a dict of them); evaluation episodes use contexts disjoint from their
            targets. Without one, `heldout_fraction` of each user's training pairs are held out and evaluated at
            every log (`heldout_accuracy_ctx{C}`), with a `MemorisationWarning` if the model memorises its pairs.
        processing_class (*optional*): the backbone's tokenizer (loaded from the backbone when not given).
        callbacks, optimizers, optimizer_cls_and_kwargs: as in [`~transformers.Trainer`].

    Bad input raises a `ValueError` here, before anything is trained (see [`check_preference_dataset`]); the users
    skipped for too few pairs are counted in [`np_dropped`] and logged in one warning per dataset.

    Example:

    ```python
    >>> from datasets import load_dataset
    >>> from fssa_trl import NPEmbeddingRewardConfig, NPEmbeddingRewardTrainer

    >>> dataset = load_dataset("json", data_files="preferences.jsonl", split="train")  # prompt/chosen/rejected/user_id
    >>> trainer = NPEmbeddingRewardTrainer(
    ...     model="sentence-transformers/all-MiniLM-L6-v2",
    ...     args=NPEmbeddingRewardConfig(output_dir="np-rm", num_targets=16, max_context=10),
    ...     train_dataset=dataset,
    ... )
    >>> trainer.train()
    ```
    """

    _tag_names = ["fssa-trl", "np-btl", "reward-model"]
    _name = "NP-BTL Reward (frozen embeddings)"  # in the model card, as TRL names its trainers
    _np_token_columns = ("margin",)

    def __init__(
        self,
        model=None,
        args: NPEmbeddingRewardConfig | None = None,
        data_collator=None,
        train_dataset: Dataset | None = None,
        eval_dataset=None,
        processing_class=None,
        callbacks=None,
        optimizers=(None, None),
        optimizer_cls_and_kwargs=None,
    ):
        args = self._np_args(args, NPEmbeddingRewardConfig, "np-embedding-reward-model")
        if args.include_num_input_tokens_seen != "no":
            raise ValueError(
                "`include_num_input_tokens_seen` counts the tokens the trained model reads, and "
                "NPEmbeddingRewardTrainer's reads none (it trains on cached embeddings): the count would be "
                "meaningless. Set `include_num_input_tokens_seen='no'`."
            )
        precomputed = args.context_embedding == "precomputed"
        self._np_check_datasets(args, train_dataset, eval_dataset, text_required=not precomputed)
        train_dataset = self._np_set_aside_calibration_pairs(args, train_dataset)
        embedder, processing_class = self._frozen_embedder(model, args, processing_class)
        store = ContextEmbeddingStore(embedder, cache_dir=args.embedding_cache_dir, distributed=True)
        dim = embedding_dim(embedder, train_dataset)
        fssa_config = EmbeddingRewardModelConfig(
            encoder=self._np_encoder_config(args, dim),
            context_embedding=self._np_context_embedding_config(args, store),
            decoder=RewardDecoderConfig(
                embedding_dim=dim,
                latent_dim=args.latent_dim,
                hidden_dim=args.decoder_hidden_dim,
                num_layers=args.decoder_num_layers,
                head=args.reward_head,
                conditioning=args.decoder_conditioning,
            ),
            max_context=args.max_context,
        )
        set_seed(args.seed)  # as TRL's trainers do before building a model: `seed` fixes the initialisation
        reward_model = NPEmbeddingRewardModel(NPModules.from_config(fssa_config))

        if data_collator is None:
            data_collator = self._np_collator(store, None, include_target_embeddings=True)
        super().__init__(
            model=reward_model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
        )
        self._store, self.fssa_config = store, fssa_config
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        # `Trainer.prediction_step` calls `compute_loss` only with these (as in TRL's RewardTrainer).
        self.can_return_loss = True
        self.label_names = []
        # Episodes are built once `Trainer.__init__` has set `eval_dataset`: without one, pairs are held out first.
        self.train_dataset = self._episodes(self.train_dataset, "train")
        if isinstance(self.eval_dataset, dict):
            self.eval_dataset = {name: self._episodes(dataset, name) for name, dataset in self.eval_dataset.items()}
        elif self.eval_dataset is not None:
            self.eval_dataset = self._episodes(self.eval_dataset, "eval")
        self._np_zero3_leaf_modules()

    @staticmethod
    def _frozen_embedder(model, args: NPEmbeddingRewardConfig, processing_class) -> tuple[TextEmbedder | None, object]:
        """The frozen embedder named by `context_embedding` and the tokenizer that goes with it."""
        source = args.context_embedding
        embed_kwargs = (args.context_embedding_pooling, args.context_max_length, args.embedding_batch_size)
        if source == "precomputed":
            if model is not None:
                raise ValueError("With `context_embedding='precomputed'` no model runs: pass `model=None`.")
            return None, processing_class
        if source != "base":
            if model is not None:
                raise ValueError(
                    f"The encoder {source!r} embeds everything: pass `model=None`, or set `context_embedding='base'` "
                    "to embed with `model`."
                )
            embedder = make_embedder(source, None, None, *embed_kwargs)
            embedder.model.to(args.device)
            return embedder, processing_class or embedder.tokenizer
        if model is None:
            raise ValueError(
                "`context_embedding='base'` embeds with `model`: pass the backbone (name, path or model), or set "
                "`context_embedding` to an encoder name or 'precomputed'."
            )
        if isinstance(model, str):
            name = model
            model = AutoModel.from_pretrained(name, **(args.model_init_kwargs or {}))
        else:
            name = model.config._name_or_path
        model = model.to(args.device).eval().requires_grad_(False)
        processing_class = processing_class or AutoTokenizer.from_pretrained(name)
        embedder = make_embedder(source, model, processing_class, *embed_kwargs)
        embedder.name = name
        return embedder, processing_class

    def _episodes(self, dataset: Dataset, dataset_name: str) -> Dataset:
        """Episodes of a pair dataset (its texts kept to embed, unless the embeddings are precomputed); a dataset of
        episodes passes through."""
        if is_episode_dataset(dataset):
            return dataset
        if self.args.context_embedding != "precomputed":
            dataset = add_text_keys(dataset, self.processing_class)
        return self._np_episodes(dataset, self._store, self.args, dataset_name, self._np_token_columns)

    # -------------------------------------------------------------------------------------------------------- loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        margin = inputs.pop("margin", None)
        outputs = model(**inputs)
        chosen, rejected = outputs.chosen, outputs.rejected
        loss = -preference_log_likelihood(chosen, rejected, outputs.chosen_var, outputs.rejected_var, margin).mean()
        if self.args.center_rewards_coefficient is not None:
            loss = loss + self.args.center_rewards_coefficient * torch.mean((chosen + rejected) ** 2)
        if outputs.kl is not None:
            loss = loss + self.args.kl_weight * outputs.kl
        with torch.no_grad():
            metrics = self._metrics[mode]
            rewards = self.accelerator.gather(torch.cat([chosen, rejected]).detach())
            metrics["min_reward"].append(rewards.min().item())
            metrics["mean_reward"].append(rewards.mean().item())
            metrics["max_reward"].append(rewards.max().item())
            correct = chosen > rejected
            metrics["accuracy"].append(self.accelerator.gather_for_metrics(correct.float().mean()).mean().item())
            metrics["margin"].append(self.accelerator.gather_for_metrics((chosen - rejected).mean()).mean().item())
            if outputs.kl is not None:
                metrics["kl"].append(self.accelerator.gather_for_metrics(outputs.kl.detach()).mean().item())
            self._np_count_unseen_accuracy(mode, correct, inputs)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Average the step metrics since the last log (TRL's convention), prefixed in evaluation with its
        `metric_key_prefix` (`eval_` by default)."""
        mode = "train" if self.model.training else "eval"
        self._np_flush_accuracy(mode)
        logs.update(self._np_pop_metrics(mode, "" if mode == "train" else f"{self._np_metric_prefix}_"))
        super().log(logs, start_time)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """As `Trainer.evaluate`; a raw pair dataset passed here becomes evaluation episodes first."""
        if isinstance(eval_dataset, Dataset) and not is_episode_dataset(eval_dataset):
            precomputed = self.args.context_embedding == "precomputed"
            self._np_check_dataset(self.args, eval_dataset, "eval", text_required=not precomputed)
            eval_dataset = self._episodes(eval_dataset, "eval")
        return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    # ------------------------------------------------------------------------------------------ save and restore
    def _save(self, output_dir: str | None = None, state_dict=None):
        """The NP modules are the whole trained model; the backbone is referenced by name (tokenizer saved beside)."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        self._np_save(output_dir, state_dict)
        if self.args.should_save and self._store.embedder is not None:
            self.processing_class.save_pretrained(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        self._np_load(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        """`fssa_np.safetensors` is the whole trained model (the Trainer would look for weight files there are not)."""
        self._np_load(self.state.best_model_checkpoint)

    def _np_checkpoint_layout(self):
        """No Trainer weights in a checkpoint: `fssa_np.safetensors` is the whole trained model."""
        return dataclasses.replace(super()._np_checkpoint_layout(), model_weights=False)

    def steerable_model(self) -> SteerableEmbeddingRewardModel:
        """The model being trained, as a [`SteerableEmbeddingRewardModel`] (shares weights and embedder)."""
        return SteerableEmbeddingRewardModel(self.model, self.processing_class, self.fssa_config, self._store.embedder)
