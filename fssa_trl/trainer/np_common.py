# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""What NPRewardTrainer and NPDPOTrainer share: input checks, episode datasets, NP modules, saving and metrics."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from datasets import Dataset, IterableDataset
from torch import nn

from ..data.embeddings import ContextEmbeddingStore, TextEmbedder, pair_text
from ..data.episodes import build_eval_episodes, build_train_episodes, group_rows_by_user, log_skipped
from ..modeling.np_modules import FSSA_WEIGHTS_NAME, NP_PREFIX, load_np_state_dict, save_np_modules

logger = logging.getLogger(__name__)

EMBEDDING_COLUMNS = ("chosen_embedding", "rejected_embedding")
TEXT_KEY_COLUMNS = ("_fssa_chosen_text", "_fssa_rejected_text")
EPISODE_COLUMNS = [
    "target_in_context",
    "chosen_embedding_index",
    "rejected_embedding_index",
    "context_chosen_embedding_index",
    "context_rejected_embedding_index",
]


def _is_empty(value) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == ""
    if isinstance(value, list):  # conversational: no message, or only empty contents
        return len(value) == 0 or all(_is_empty(m.get("content") if isinstance(m, dict) else m) for m in value)
    return False


def check_preference_dataset(dataset, args, dataset_name: str, needs_prompt: bool = False) -> None:
    """Validate a raw preference dataset before anything is tokenized or trained; raise a `ValueError` that names
    the field and the fix."""
    if isinstance(dataset, IterableDataset):
        raise ValueError(
            f"The {dataset_name} dataset is an IterableDataset: few-shot episodes group each user's pairs, which needs "
            "random access. Load it without `streaming=True`."
        )
    columns = set(dataset.column_names)
    if args.user_column not in columns:
        raise ValueError(
            f"The {dataset_name} dataset has no user column {args.user_column!r} (columns: {sorted(columns)}). Add "
            f"one, or set `user_column` to the column that names the user behind each pair; for a dataset that rates "
            f"several attributes per pair, use `fssa_trl.users_from_attributes`."
        )
    precomputed = args.context_embedding == "precomputed"
    has_text = {"chosen", "rejected"} <= columns
    has_ids = {"chosen_ids", "rejected_ids"} <= columns
    required = ["prompt", "chosen", "rejected"] if needs_prompt else ["chosen", "rejected"]
    if not (has_text or (has_ids and precomputed) or (precomputed and getattr(args, "frozen_backbone", False))):
        missing = [c for c in required if c not in columns]
        raise ValueError(
            f"The {dataset_name} dataset is missing the column(s) {missing}: a preference dataset needs "
            f"'chosen' and 'rejected' (and optionally 'prompt'), as in TRL (columns: {sorted(columns)})."
        )
    if needs_prompt and "prompt" not in columns and not has_text:
        raise ValueError(f"The {dataset_name} dataset is missing the 'prompt' column.")
    for column in ("prompt", "chosen", "rejected"):
        if column in columns:
            for row, value in enumerate(dataset[column]):
                if _is_empty(value):
                    raise ValueError(
                        f"Row {row} of the {dataset_name} dataset has an empty {column!r}. Remove empty rows first, "
                        f"e.g. `dataset.filter(lambda x: x[{column!r}].strip() != '')`."
                    )
    if precomputed:
        for column in EMBEDDING_COLUMNS:
            if column not in columns:
                raise ValueError(
                    f"`context_embedding='precomputed'` needs the float-list column {column!r} in the {dataset_name} "
                    f"dataset. Add it, or set `context_embedding` to 'base' or an encoder name to embed the text."
                )
        lengths = {len(v) for column in EMBEDDING_COLUMNS for v in dataset[column]}
        if len(lengths) != 1:
            raise ValueError(
                f"Embedding dimension mismatch in the {dataset_name} dataset: 'chosen_embedding'/'rejected_embedding' "
                f"vectors have lengths {sorted(lengths)}. Every embedding must come from one model, with one dimension."
            )
        # datasets >= 4 returns a lazy `Column` for `dataset[name]`, which has no `+`: concatenate as lists.
        vectors = torch.tensor(
            list(dataset[EMBEDDING_COLUMNS[0]]) + list(dataset[EMBEDDING_COLUMNS[1]]), dtype=torch.float32
        )
        if not torch.isfinite(vectors).all():
            row = int((~torch.isfinite(vectors)).any(-1).nonzero()[0]) % len(dataset)
            raise ValueError(
                f"The {dataset_name} dataset has NaN or infinite values in 'chosen_embedding'/'rejected_embedding' "
                f"(first at row {row}). Fix or drop those rows."
            )
    for column in dataset.column_names:
        if column in TEXT_KEY_COLUMNS:
            raise ValueError(f"Column {column!r} is reserved by fssa_trl; rename it.")


def add_text_keys(dataset: Dataset, tokenizer) -> Dataset:
    """Keep the raw (prompt, response) texts to embed, before TRL's preparation appends EOS to them."""
    if "chosen" not in dataset.column_names:
        return dataset

    def keys(example):
        prompt = example.get("prompt")
        return {
            TEXT_KEY_COLUMNS[0]: pair_text(prompt, example["chosen"], tokenizer),
            TEXT_KEY_COLUMNS[1]: pair_text(prompt, example["rejected"], tokenizer),
        }

    return dataset.map(keys, desc="Keeping context texts")


def embedding_indices(dataset: Dataset, store: ContextEmbeddingStore, args, dataset_name: str) -> tuple[list, list]:
    """Row indices into the store of every pair's chosen and rejected embedding (embedding each text once)."""
    if args.context_embedding == "precomputed":
        chosen = torch.tensor(dataset[EMBEDDING_COLUMNS[0]], dtype=torch.float32)
        rejected = torch.tensor(dataset[EMBEDDING_COLUMNS[1]], dtype=torch.float32)
        if chosen.dim() != 2 or chosen.shape != rejected.shape:
            raise ValueError(
                f"'chosen_embedding' and 'rejected_embedding' of the {dataset_name} dataset must be float lists of "
                f"one length, got shapes {tuple(chosen.shape)} and {tuple(rejected.shape)}."
            )
        if store.dim is not None and chosen.shape[-1] != store.dim:
            raise ValueError(
                f"Embedding dimension mismatch: the {dataset_name} dataset's embeddings have dimension "
                f"{chosen.shape[-1]} but earlier embeddings (and the latent encoder) use {store.dim}. Use one "
                "embedding model for all datasets."
            )
        return store.add_vectors(chosen), store.add_vectors(rejected)
    return store.add_texts(dataset[TEXT_KEY_COLUMNS[0]]), store.add_texts(dataset[TEXT_KEY_COLUMNS[1]])


def to_episode_dataset(dataset: Dataset, store: ContextEmbeddingStore, args, dataset_name: str, token_columns):
    """Turn a prepared pair dataset into a dataset of episodes (one row per episode; see `fssa_trl.data.episodes`)."""
    if "target_in_context" in dataset.column_names:  # already episodes
        return dataset
    rows_by_user = group_rows_by_user(dataset[args.user_column])
    if dataset_name == "train":
        episodes, skipped = build_train_episodes(
            rows_by_user,
            args.num_targets,
            args.min_context,
            args.max_context,
            args.too_few_pairs,
            args.episode_passes,
            args.seed,
        )
    else:
        episodes, skipped = build_eval_episodes(
            rows_by_user, args.eval_context_sizes, args.num_targets, args.too_few_pairs, args.seed
        )
    log_skipped(skipped, rows_by_user, dataset_name)
    if not episodes:
        raise ValueError(
            f"No user of the {dataset_name} dataset has enough preference pairs for one episode "
            f"(num_targets={args.num_targets}, max_context={args.max_context}, eval_context_sizes="
            f"{args.eval_context_sizes}). Lower these, or set `too_few_pairs='replace'`."
        )
    chosen_index, rejected_index = embedding_indices(dataset, store, args, dataset_name)
    columns = {c: dataset[c] for c in token_columns if c in dataset.column_names}
    rows: dict[str, list[Any]] = {c: [] for c in ["user", *columns, *EPISODE_COLUMNS]}
    for episode in episodes:
        rows["user"].append(episode.user)
        for column, values in columns.items():
            rows[column].append([values[i] for i in episode.target_rows])
        rows["target_in_context"].append(episode.target_in_context)
        rows["chosen_embedding_index"].append([chosen_index[i] for i in episode.target_rows])
        rows["rejected_embedding_index"].append([rejected_index[i] for i in episode.target_rows])
        rows["context_chosen_embedding_index"].append([chosen_index[i] for i in episode.context_rows])
        rows["context_rejected_embedding_index"].append([rejected_index[i] for i in episode.context_rows])
    logger.info("Built %d %s episodes from %d users", len(episodes), dataset_name, len(rows_by_user) - len(skipped))
    return Dataset.from_dict(rows)


def build_store(args, embedder: TextEmbedder | None) -> ContextEmbeddingStore:
    return ContextEmbeddingStore(embedder, cache_dir=args.embedding_cache_dir)


def make_embedder(args, model: nn.Module | None, tokenizer) -> TextEmbedder | None:
    """The context embedder named by `args.context_embedding` ("base": the frozen base model itself)."""
    kwargs = dict(
        pooling=args.context_embedding_pooling,
        max_length=args.context_max_length,
        batch_size=args.embedding_batch_size,
    )
    if args.context_embedding == "precomputed":
        return None
    if args.context_embedding == "base":
        if model is None:
            raise ValueError("`context_embedding='base'` needs a model to embed with; pass `model`.")
        return TextEmbedder(model, tokenizer, **kwargs)
    return TextEmbedder.from_pretrained(args.context_embedding, **kwargs)


def embedding_dim(embedder: TextEmbedder | None, dataset) -> int:
    if embedder is not None:
        config = getattr(embedder.model, "config", None)
        hidden = getattr(config.get_text_config(), "hidden_size", None) if config is not None else None
        if hidden:
            return hidden
        return embedder.embed(["dimension probe"]).shape[-1]
    return len(dataset[0][EMBEDDING_COLUMNS[0]])


def encoder_kwargs(args, dim: int) -> dict[str, Any]:
    return dict(
        embedding_dim=dim,
        latent_dim=args.latent_dim,
        hidden_dim=args.encoder_hidden_dim,
        aggregation=args.aggregation,
        latent_type=args.latent_type,
        num_heads=args.aggregation_num_heads,
    )


def np_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """The `fssa_np.*` entries of a (possibly ZeRO-3 consolidated) state dict, or of the model's own."""
    state_dict = state_dict if state_dict is not None else model.state_dict()
    found = {k: v for k, v in state_dict.items() if k.startswith(NP_PREFIX)}
    if not found:
        raise RuntimeError("The state dict has no `fssa_np.` entries: the NP modules would not be saved.")
    return found


def save_np(output_dir: str, model: nn.Module, state_dict, extra_config: dict[str, Any]) -> None:
    save_np_modules(output_dir, np_state_dict(model, state_dict), model.fssa_np.init_kwargs, extra_config)


def load_np_into(model: nn.Module, checkpoint: str) -> None:
    path = os.path.join(checkpoint, FSSA_WEIGHTS_NAME)
    if not os.path.isfile(path):
        raise ValueError(f"Checkpoint {checkpoint!r} has no {FSSA_WEIGHTS_NAME}: the NP modules cannot be restored.")
    model.fssa_np.load_state_dict(load_np_state_dict(checkpoint))


def log_unseen_accuracy(trainer, mode: str, correct: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
    """Append accuracy on unseen targets, overall and by context size, to `trainer._metrics[mode]`.

    Counts are reduced over processes and read back in one transfer (one device sync per step).
    """
    args = trainer.args
    num_sizes = max(args.max_context, *args.eval_context_sizes) + 1
    unseen = batch["target_unseen"]
    sizes = batch["target_context_size"].clamp(max=num_sizes - 1)
    index = torch.where(unseen, sizes, torch.full_like(sizes, num_sizes))  # seen targets go to a spill bin
    counts = torch.bincount(index, minlength=num_sizes + 1)[:num_sizes].float()
    hits = torch.bincount(index, weights=correct.float(), minlength=num_sizes + 1)[:num_sizes]
    totals = trainer.accelerator.reduce(torch.stack([counts, hits]), reduction="sum").tolist()
    if sum(totals[0]) == 0:
        return
    trainer._metrics[mode]["accuracy_unseen"].append(sum(totals[1]) / sum(totals[0]))
    for size, (count, hit) in enumerate(zip(totals[0], totals[1], strict=True)):
        if count:
            trainer._metrics[mode][f"accuracy_ctx{size}"].append(hit / count)
