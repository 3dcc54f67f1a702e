# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Config fields the NP trainers share: users and episodes, context embeddings and the latent encoder (all three
trainers), and the LoRA hypernetwork (the two LoRA trainers)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data.embeddings import POOLINGS
from ..data.episodes import TOO_FEW_PAIRS_POLICIES
from ..modeling.latent_encoder import AGGREGATIONS, LATENT_TYPES, PAIR_FEATURES

# What each size field counts, for its error (a size of 0 would build an empty layer, or embed nothing).
POSITIVE_FIELDS = {
    "encoder_hidden_dim": "the width of the latent encoder's MLPs",
    "aggregation_num_heads": "the number of attention heads of `aggregation='attention'`",
    "context_max_length": "the tokens of a text that its context embedding reads",
    "embedding_batch_size": "the texts embedded per forward pass",
}


def _np_boolean_fields(config_class: type) -> list[str]:
    """The boolean fields fssa_trl's config classes declare (not those of TRL's or transformers' configs)."""
    return [
        name
        for cls in config_class.__mro__
        if cls.__module__.startswith("fssa_trl.")
        for name, annotation in vars(cls).get("__annotations__", {}).items()
        if annotation in ("bool", bool)
    ]


@dataclass
class NPEpisodeArguments:
    r"""Fields shared by [`NPRewardConfig`], [`NPEmbeddingRewardConfig`] and [`NPDPOConfig`]: users, episodes,
    context embeddings and the latent encoder.

    Parameters:
        user_column (`str`, *optional*, defaults to `"user_id"`):
            Column naming the user (or attribute group) behind each preference pair. User ids are strings or integers
            (floats pass too), compared as strings: `3` and `"3"` are one user. A missing id (None, NaN or an empty
            string) raises a `ValueError` naming the rows, as does a column of another type.
        num_targets (`int`, *optional*, defaults to `16`):
            Target pairs T per episode. A batch of `per_device_train_batch_size` episodes holds that many times T
            pairs.
        min_context (`int`, *optional*, defaults to `0`):
            Smallest context size C drawn in training (0 trains the 0-shot prior).
        max_context (`int`, *optional*, defaults to `10`):
            Largest context size; C is uniform in `[min_context, max_context]` and the context is a subset of the
            episode's targets, so `max_context <= num_targets`.
        episode_passes (`int`, *optional*, defaults to `1`):
            Shuffled passes over each user's pairs when the training episodes are drawn (more passes: more distinct
            target sets and contexts per epoch). Episodes are drawn once from `seed` (unless `redraw_episodes`), so
            resuming is exact.
        redraw_episodes (`bool`, *optional*, defaults to `False`):
            Draw new training episodes every epoch (new target groups, context sizes and subsets; as many episodes,
            so the steps per epoch do not change), from a seed derived from `seed` and the epoch, instead of
            repeating the same episodes, which a model can memorise over many epochs. The first epoch's episodes are
            those drawn without it; resuming is still exact. Held-out pairs (`heldout_fraction`) stay out of every
            epoch. Episodes are then drawn while training, one epoch at a time, in every process.
        too_few_pairs (`str`, *optional*, defaults to `"skip"`):
            What to do with a user who has fewer pairs than one episode needs: `"skip"` (logged with a count, and
            listed in the trainer's `np_dropped[dataset_name]["users_too_few_pairs"]`), `"replace"` (sample that
            user's pairs with replacement) or `"error"` (raise before training). Pairs are counted after TRL's length
            filter (`max_length`), which the LoRA trainers also count in `np_dropped`.
        eval_context_sizes (`list[int]`, *optional*, defaults to `[0, 1, 3, 5, 10]`):
            Context sizes of evaluation episodes; their contexts are disjoint from their targets, and accuracy on
            unseen pairs is logged per size as `eval_accuracy_ctx{C}`.
        heldout_fraction (`float`, *optional*, defaults to `0.0`):
            Without an `eval_dataset`, this fraction of each training user's pairs (drawn from `seed`) is held out of
            training and evaluated whenever the trainer logs, as `heldout_accuracy_ctx0` and
            `heldout_accuracy_ctx{max_context}`: accuracy on pairs the model never saw, without and with context
            (disjoint from the targets). A user holds out at least `max_context + 1` pairs (one held-out episode at
            the largest context) and at most `heldout_max_pairs_per_user`, and only if `num_targets` pairs are left
            for training; other users are not held out. `0` (the default) turns the split off; with an
            `eval_dataset` it is unused. `0.1` is a good value when you have no evaluation set.
        heldout_max_pairs_per_user (`int`, *optional*, defaults to `64`):
            Most pairs a user holds out, which bounds the cost of each held-out evaluation.
        memorisation_warning_threshold (`float`, *optional*, defaults to `0.05`):
            A `MemorisationWarning` is raised once when, at three held-out evaluations in a row, the held-out context
            gain (`heldout_accuracy_ctx{max_context}` minus `heldout_accuracy_ctx0`) is below this threshold while
            the training `accuracy_ctx0` (pairs the model has seen, no context; logged with `min_context=0`) exceeds
            both 0.5 and `heldout_accuracy_ctx0` by more than 0.1: the model memorises its training pairs instead of
            reading the context. `0` turns the warning off.
        context_embedding (`str`, *optional*, defaults to `"base"`):
            Source of the context embeddings e(prompt, response): `"base"` (the frozen base model, adapters off, no
            grad), `"precomputed"` (float list columns `chosen_embedding` / `rejected_embedding`), or the name or
            path of any Hugging Face encoder. Each distinct text is embedded once, before training.
        context_embedding_pooling (`str`, *optional*, defaults to `"mean"`):
            `"mean"` over tokens or `"last"` token of the last hidden state.
        context_max_length (`int`, *optional*, defaults to `256`):
            Texts are truncated to this many tokens for the context embedding (>= 1).
        embedding_batch_size (`int`, *optional*, defaults to `32`):
            Texts per forward pass when embedding (>= 1).
        embedding_cache_dir (`str`, *optional*):
            If set, text embeddings also persist on disk there (safetensors) and are reused by later runs.
        latent_dim (`int`, *optional*, defaults to `64`):
            Dimension of the user latent z (>= 0). `0` makes a context-free model: z is empty, so nothing of the
            context reaches the reward or the policy (the baseline `max_context=0, latent_dim=0` of BENCHMARKS.md).
        encoder_hidden_dim (`int`, *optional*, defaults to `256`):
            Width of the latent encoder's MLPs (>= 1).
        aggregation (`str`, *optional*, defaults to `"mean"`):
            Set aggregation of the encoder: `"mean"`, `"shrunk_mean"` (sum over n pairs / (n + 1): the mean with one
            pseudo-pair at the empty set, so z moves away from the 0-shot prior as pairs accumulate), `"sum"` or
            `"attention"` (masked self-attention, then mean).
        aggregation_num_heads (`int`, *optional*, defaults to `4`):
            Attention heads for `aggregation="attention"` (>= 1, dividing `encoder_hidden_dim`).
        context_pair_features (`str`, *optional*, defaults to `"concat"`):
            Features of a context pair in the encoder: `"concat"` (the paper's `g([e(chosen), e(rejected)])`) or
            `"difference"` (antisymmetric, `g([c, r, c - r]) - g([r, c, r - c])`: what both responses share cancels,
            so a choice decided by a few tokens stays visible, and the opposite choice gives the opposite features).
            With `"difference"` the whole encoder is odd: flipped choices give -z and an empty context gives z = 0,
            halfway between opposite users, so the 0-shot model cannot side with one of them.
        bounded_latent (`bool`, *optional*, defaults to `False`):
            Squash the latent z into (-1, 1) with `tanh` (the mean, for a Gaussian latent). Without a bound, z can grow
            without limit during training (norms of 150-200 in NP-DPO runs where 10 context pairs steered one user to
            about 0.9 and the other only to 0.73-0.80); with it the same runs steered both to 0.99-1.0 (`BENCHMARKS.md`,
            five seeds). With `context_pair_features="difference"` an empty context still gives z = 0.
        latent_type (`str`, *optional*, defaults to `"deterministic"`):
            `"deterministic"` (conditional NP) or `"gaussian"` (latent NP trained with the ELBO).
        kl_weight (`float`, *optional*, defaults to `1.0`):
            Weight of KL(q(z | targets) || q(z | context)) for `latent_type="gaussian"`.
        prior_calibration_pairs (`int`, *optional*, defaults to `0`):
            Set this many pairs aside from the training set (an equal share per user, at most a quarter of any user's
            pairs, drawn from `seed`) and, after training, fit the 0-shot latent (the population prior) to them with
            [`SteerableModel.calibrate_prior`]; logged as `prior_calibration_loss_before` / `_after` and saved with
            the model. Training leaves a small tilt in the 0-shot model that, when users disagree, can make it side
            with one of them on nearly every pair; the calibrated prior sides with the population as a whole. The
            pairs are kept out of training because a model that memorised its training pairs explains them with the
            wrong latent. `0` (the default) skips it. Under DeepSpeed ZeRO-3 or FSDP (sharded weights), calibrate the
            saved model instead.
    """

    user_column: str = field(default="user_id", metadata={"help": "Column naming the user behind each pair."})
    num_targets: int = field(default=16, metadata={"help": "Target pairs per episode."})
    min_context: int = field(default=0, metadata={"help": "Smallest context size drawn in training."})
    max_context: int = field(default=10, metadata={"help": "Largest context size drawn in training (<= num_targets)."})
    episode_passes: int = field(default=1, metadata={"help": "Shuffled passes over each user's pairs per epoch."})
    redraw_episodes: bool = field(
        default=False, metadata={"help": "Draw new training episodes every epoch (seed derived from seed and epoch)."}
    )
    too_few_pairs: str = field(
        default="skip", metadata={"help": "Users with too few pairs: 'skip', 'replace' or 'error'."}
    )
    eval_context_sizes: list[int] = field(
        default_factory=lambda: [0, 1, 3, 5, 10], metadata={"help": "Context sizes of evaluation episodes."}
    )
    heldout_fraction: float = field(
        default=0.0,
        metadata={"help": "Fraction of each user's training pairs held out and evaluated when logging (no eval set)."},
    )
    heldout_max_pairs_per_user: int = field(default=64, metadata={"help": "Most pairs a user holds out."})
    memorisation_warning_threshold: float = field(
        default=0.05, metadata={"help": "Held-out context gain under which memorisation is reported (0: never)."}
    )
    context_embedding: str = field(
        default="base", metadata={"help": "'base', 'precomputed', or a Hugging Face encoder name or path."}
    )
    context_embedding_pooling: str = field(default="mean", metadata={"help": "'mean' or 'last'."})
    context_max_length: int = field(default=256, metadata={"help": "Max tokens per embedded text (>= 1)."})
    embedding_batch_size: int = field(default=32, metadata={"help": "Texts per embedding forward pass (>= 1)."})
    embedding_cache_dir: str | None = field(default=None, metadata={"help": "Persist text embeddings here."})
    latent_dim: int = field(
        default=64, metadata={"help": "Dimension of the user latent z (>= 0; 0: a context-free model)."}
    )
    encoder_hidden_dim: int = field(default=256, metadata={"help": "Width of the latent encoder (>= 1)."})
    aggregation: str = field(default="mean", metadata={"help": "'mean', 'shrunk_mean', 'sum' or 'attention'."})
    aggregation_num_heads: int = field(default=4, metadata={"help": "Heads for attention aggregation (>= 1)."})
    context_pair_features: str = field(
        default="concat", metadata={"help": "Encoder features of a context pair: 'concat' or 'difference'."}
    )
    bounded_latent: bool = field(default=False, metadata={"help": "Squash the latent z into (-1, 1) with tanh."})
    latent_type: str = field(default="deterministic", metadata={"help": "'deterministic' or 'gaussian'."})
    kl_weight: float = field(default=1.0, metadata={"help": "KL weight of the NP ELBO (gaussian latent)."})
    prior_calibration_pairs: int = field(
        default=0, metadata={"help": "Pairs set aside from training to fit the 0-shot prior to afterwards (0: none)."}
    )

    def _check_episode_arguments(self) -> None:
        """Raise a `ValueError` naming the field and the fix for every bad value or combination."""
        if self.min_context < 0:
            raise ValueError(f"`min_context` must be >= 0, got {self.min_context}.")
        if self.min_context > self.max_context:
            raise ValueError(
                f"`min_context` ({self.min_context}) must be <= `max_context` ({self.max_context}): lower "
                "`min_context` or raise `max_context`."
            )
        if self.num_targets < 1:
            raise ValueError(f"`num_targets` must be >= 1, got {self.num_targets}.")
        if self.max_context > self.num_targets:
            raise ValueError(
                f"`max_context` ({self.max_context}) must be <= `num_targets` ({self.num_targets}): training contexts "
                "are drawn from the episode's targets. Raise `num_targets` or lower `max_context`."
            )
        if self.episode_passes < 1:
            raise ValueError(f"`episode_passes` must be >= 1, got {self.episode_passes}.")
        if self.too_few_pairs not in TOO_FEW_PAIRS_POLICIES:
            raise ValueError(f"`too_few_pairs` must be one of {TOO_FEW_PAIRS_POLICIES}, got {self.too_few_pairs!r}.")
        if not self.eval_context_sizes or min(self.eval_context_sizes) < 0:
            raise ValueError(f"`eval_context_sizes` must be non-empty and >= 0, got {self.eval_context_sizes}.")
        if not 0 <= self.heldout_fraction < 1:
            raise ValueError(
                f"`heldout_fraction` must be in [0, 1), got {self.heldout_fraction}; `0` turns the held-out split off."
            )
        if self.heldout_fraction > 0 and self.heldout_max_pairs_per_user <= self.max_context:
            raise ValueError(
                f"`heldout_max_pairs_per_user` ({self.heldout_max_pairs_per_user}) must be > `max_context` "
                f"({self.max_context}): a held-out episode at the largest context needs `max_context` context pairs "
                "plus a target. Raise it, or set `heldout_fraction=0`."
            )
        if not 0 <= self.memorisation_warning_threshold < 0.5:
            raise ValueError(
                f"`memorisation_warning_threshold` must be in [0, 0.5), got {self.memorisation_warning_threshold}; "
                "`0` turns the warning off."
            )
        if self.context_embedding_pooling not in POOLINGS:
            raise ValueError(
                f"`context_embedding_pooling` must be one of {POOLINGS}, got {self.context_embedding_pooling!r}."
            )
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"`aggregation` must be one of {AGGREGATIONS}, got {self.aggregation!r}.")
        if self.context_pair_features not in PAIR_FEATURES:
            raise ValueError(
                f"`context_pair_features` must be one of {PAIR_FEATURES}, got {self.context_pair_features!r}."
            )
        for name in _np_boolean_fields(type(self)):  # a YAML or JSON "false" is a truthy string
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(
                    f"`{name}` must be True or False, got {value!r} ({type(value).__name__}): pass a boolean, not a "
                    "string or number."
                )
        if self.latent_type not in LATENT_TYPES:
            raise ValueError(f"`latent_type` must be one of {LATENT_TYPES}, got {self.latent_type!r}.")
        if self.kl_weight < 0:
            raise ValueError(f"`kl_weight` must be >= 0, got {self.kl_weight}.")
        if self.prior_calibration_pairs < 0:
            raise ValueError(
                f"`prior_calibration_pairs` must be >= 0, got {self.prior_calibration_pairs}; `0` skips the "
                "calibration of the 0-shot prior."
            )
        for name in ("encoder_hidden_dim", "aggregation_num_heads", "context_max_length", "embedding_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}: {POSITIVE_FIELDS[name]}.")
        if self.latent_dim < 0:
            raise ValueError(
                f"`latent_dim` must be >= 0, got {self.latent_dim}: it is the dimension of the user latent z (`0` "
                "makes a context-free model)."
            )
        if self.aggregation == "attention" and self.encoder_hidden_dim % self.aggregation_num_heads:
            raise ValueError(
                f"`encoder_hidden_dim` ({self.encoder_hidden_dim}) must be divisible by `aggregation_num_heads` "
                f"({self.aggregation_num_heads})."
            )


@dataclass
class GatedLoRAArguments:
    r"""Fields of the LoRA trainers ([`NPRewardConfig`], [`NPDPOConfig`]): the hypernetwork that gates the LoRA layers.

    Parameters:
        hypernetwork_hidden_dim (`int`, *optional*, defaults to `256`):
            Width of the hypernetwork that maps z to rank-wise LoRA gates.
        hypernetwork_init_std (`float`, *optional*, defaults to `0.0`):
            Standard deviation of the hypernetwork's initial output weights. With `0` every gate starts at exactly 1,
            and since LoRA B starts at 0 neither the gates nor the encoder get a gradient until a user-agnostic LoRA
            has grown, which, for users with opposite preferences, can only average or memorise them. A small value
            (`0.01`) gives each user its own gates from the first step.
        context_btl_weight (`float`, *optional*, defaults to `0.0`):
            Weight of the auxiliary NP-BTL loss: a small reward decoder on the frozen context embeddings of the
            targets, conditioned on the same z, predicts the user's choices. It trains the encoder to read the context
            from the first step, before the LoRA can use z. `0` (the default) turns it off; `1.0` is what made NP-DPO
            read the context on the harder test task (see `tests/test_np_dpo_trainer.py`).
        context_decoder_hidden_dim (`int`, *optional*, defaults to `64`):
            Width of that auxiliary decoder.
    """

    hypernetwork_hidden_dim: int = field(default=256, metadata={"help": "Width of the LoRA hypernetwork."})
    hypernetwork_init_std: float = field(
        default=0.0, metadata={"help": "Std of the hypernetwork's initial output weights (0: gates 1)."}
    )
    context_btl_weight: float = field(
        default=0.0, metadata={"help": "Weight of the auxiliary NP-BTL loss on the latent (0 turns it off)."}
    )
    context_decoder_hidden_dim: int = field(default=64, metadata={"help": "Width of the auxiliary NP-BTL decoder."})

    def _check_hypernetwork_arguments(self) -> None:
        for name in ("hypernetwork_hidden_dim", "context_decoder_hidden_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        for name in ("hypernetwork_init_std", "context_btl_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}.")
