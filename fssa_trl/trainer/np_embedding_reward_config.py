# Copyright 2026 The fssa_trl developers. Apache-2.0.
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from ..modeling.reward_head import CONDITIONINGS, REWARD_HEADS
from .np_arguments import NPEpisodeArguments


@dataclass
class NPEmbeddingRewardConfig(NPEpisodeArguments, TrainingArguments):
    r"""Configuration of [`NPEmbeddingRewardTrainer`], the paper's reward-model setting: the backbone stays frozen,
    every response is embedded once (`context_embedding` is also the target embedding) and only the NP modules train,
    a reward decoder `MLP([e(x, y), z])` on the cached embeddings (or a FiLM decoder, see `decoder_conditioning`). No
    LoRA, no backbone forward in training, so there is nothing to checkpoint or tokenize at training time.

    [`~transformers.TrainingArguments`] plus the fields of [`NPEpisodeArguments`] and the following. Defaults differ
    from `TrainingArguments` where the small NP modules want it: `learning_rate=1e-3`, `logging_steps=10`.

    Parameters:
        reward_head (`str`, *optional*, defaults to `"btl"`):
            `"btl"` (Bradley-Terry-Luce) or `"dpl"` (mean-and-variance head, p(a > b) = Phi((mu_a - mu_b) /
            sqrt(s_a^2 + s_b^2)), [Siththaranjan et al. 2024](https://huggingface.co/papers/2312.08358)).
        decoder_hidden_dim (`int`, *optional*, defaults to `256`):
            Width of the reward decoder.
        decoder_num_layers (`int`, *optional*, defaults to `3`):
            Linear layers of the reward decoder (at least 1; at least 2 with `decoder_conditioning="film"`).
        decoder_conditioning (`str`, *optional*, defaults to `"concat"`):
            How the reward decoder reads the user latent z. `"concat"`: `r = MLP([e(x, y), z])`, the paper's decoder.
            `"film"`: `h = MLP(e(x, y))`, modulated feature-wise by z, `h * (1 + gamma(z)) + beta(z)` (gamma, beta
            linear in z and zero-initialised, so training starts from a context-free reward model), then a linear
            read-out. Saved in `fssa_config.json` (`decoder.conditioning`); see [`EmbeddingRewardDecoder`].
        center_rewards_coefficient (`float`, *optional*):
            As in TRL's `RewardConfig`: adds `coefficient * mean((r_chosen + r_rejected)^2)` to the loss, to keep
            rewards centred around zero ([Eisenstein et al. 2023](https://huggingface.co/papers/2312.09244)).
        model_init_kwargs (`dict[str, Any]`, *optional*):
            Keyword arguments of `AutoModel.from_pretrained` when the trainer's `model` (the frozen backbone) is given
            as a name or path.
    """

    _VALID_DICT_FIELDS = TrainingArguments._VALID_DICT_FIELDS + ["model_init_kwargs"]

    learning_rate: float = field(default=1e-3, metadata={"help": "The initial learning rate for AdamW."})
    logging_steps: float = field(default=10, metadata={"help": "Log every X updates steps."})
    reward_head: str = field(default="btl", metadata={"help": "'btl' or 'dpl'."})
    decoder_hidden_dim: int = field(default=256, metadata={"help": "Width of the reward decoder."})
    decoder_num_layers: int = field(
        default=3, metadata={"help": "Linear layers of the reward decoder (>= 1; >= 2 with FiLM conditioning)."}
    )
    decoder_conditioning: str = field(
        default="concat",
        metadata={
            "help": "How the reward decoder reads z: 'concat' (MLP([e, z]), the paper's) or 'film' (MLP(e) "
            "modulated feature-wise by z, zero-initialised, then a linear read-out).",
            "choices": list(CONDITIONINGS),
        },
    )
    center_rewards_coefficient: float | None = field(
        default=None, metadata={"help": "Coefficient of the mean-zero reward penalty (as in TRL's RewardConfig)."}
    )
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "Keyword arguments of `AutoModel.from_pretrained` for the frozen backbone."}
    )

    def __post_init__(self):
        super().__post_init__()
        self._check_episode_arguments()
        if self.reward_head not in REWARD_HEADS:
            raise ValueError(f"`reward_head` must be one of {REWARD_HEADS}, got {self.reward_head!r}.")
        for name in ("decoder_hidden_dim", "decoder_num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        if self.decoder_conditioning not in CONDITIONINGS:
            raise ValueError(
                f"`decoder_conditioning` must be one of {CONDITIONINGS}, got {self.decoder_conditioning!r}."
            )
        if self.decoder_conditioning == "film" and self.decoder_num_layers < 2:
            raise ValueError(
                "`decoder_conditioning='film'` needs `decoder_num_layers >= 2` (the modulated features and the "
                f"read-out), got {self.decoder_num_layers}: raise `decoder_num_layers` or use "
                "`decoder_conditioning='concat'`."
            )
        if self.gradient_checkpointing:
            raise ValueError(
                "`gradient_checkpointing=True` has nothing to checkpoint here: the frozen backbone never runs in "
                "training (its embeddings are cached). Set `gradient_checkpointing=False`."
            )
