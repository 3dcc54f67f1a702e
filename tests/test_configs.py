# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""The trainer configs: every new field documented once, with its default; every bad value named in its error."""

import dataclasses
import re

import pytest
from transformers import TrainingArguments
from trl import DPOConfig, RewardConfig

from fssa_trl import NPDPOConfig, NPEmbeddingRewardConfig, NPRewardConfig
from fssa_trl.trainer.np_arguments import GatedLoRAArguments, NPEpisodeArguments

# HF docstring entries: ``name (`type`, *optional*, defaults to `value`):``
DOC_ENTRY = re.compile(r"^\s{8}(\w+) \(`[^`]+`(?:, \*optional\*)?(?:, defaults to `([^`]*)`)?\):$", re.MULTILINE)
# Each config, its parent from TRL or transformers, and the docstrings that describe its new fields.
CONFIGS = {
    NPRewardConfig: (RewardConfig, [NPEpisodeArguments, GatedLoRAArguments, NPRewardConfig]),
    NPEmbeddingRewardConfig: (TrainingArguments, [NPEpisodeArguments, NPEmbeddingRewardConfig]),
    NPDPOConfig: (DPOConfig, [NPEpisodeArguments, GatedLoRAArguments, NPDPOConfig]),
}
# Fields whose defaults NPEmbeddingRewardConfig overrides from TrainingArguments (documented in its docstring text).
OVERRIDDEN = {"learning_rate": "1e-3", "logging_steps": "10"}


def new_fields(config_class) -> dict:
    parent, _ = CONFIGS[config_class]
    inherited = {f.name for f in dataclasses.fields(parent)}
    return {f.name: f for f in dataclasses.fields(config_class) if f.name not in inherited}


def documented(config_class) -> dict:
    _, docs = CONFIGS[config_class]
    return {m.group(1): m.group(2) for doc in docs for m in DOC_ENTRY.finditer(doc.__doc__)}


CASES = [(cls, name) for cls in CONFIGS for name in sorted(new_fields(cls))]


def test_new_fields_are_the_np_fields():
    assert {"user_column", "num_targets", "latent_dim", "hypernetwork_hidden_dim"} <= set(new_fields(NPRewardConfig))
    assert {"reward_head", "decoder_num_layers", "center_rewards_coefficient"} <= set(
        new_fields(NPEmbeddingRewardConfig)
    )
    assert "hypernetwork_hidden_dim" not in new_fields(NPEmbeddingRewardConfig)
    for cls in CONFIGS:
        assert not {"output_dir", "frozen_backbone"} & set(new_fields(cls))


@pytest.mark.parametrize(("config_class", "name"), CASES, ids=lambda x: getattr(x, "__name__", x))
def test_every_new_field_is_documented_with_its_default(config_class, name):
    field = new_fields(config_class)[name]
    docs = documented(config_class)
    assert name in docs, f"`{name}` is missing from the docstrings of {config_class.__name__}"
    assert field.metadata.get("help"), f"`{name}` has no help text"
    default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
    if default is None:
        assert docs[name] is None, f"`{name}` defaults to None but the docstring says `{docs[name]}`"
    else:
        expected = f'"{default}"' if isinstance(default, str) else str(default)
        assert docs[name] == expected, f"`{name}`: docstring default `{docs[name]}`, field default `{expected}`"


@pytest.mark.parametrize("config_class", list(CONFIGS), ids=lambda c: c.__name__)
def test_docstrings_describe_no_stale_fields(config_class):
    assert set(documented(config_class)) <= set(new_fields(config_class))


def test_overridden_defaults_are_documented():
    config = NPEmbeddingRewardConfig(output_dir="x", report_to="none")
    for name, text in OVERRIDDEN.items():
        assert getattr(config, name) == float(text) and f"`{name}={text}`" in NPEmbeddingRewardConfig.__doc__


def make_config(tmp_path, config_class=NPRewardConfig, **kwargs):
    return config_class(output_dir=str(tmp_path), report_to="none", use_cpu=True, **kwargs)


def test_valid_configs(tmp_path):
    config = make_config(
        tmp_path, num_targets=8, min_context=0, max_context=8, aggregation="attention", latent_type="gaussian"
    )
    assert (config.num_targets, config.max_context, config.aggregation) == (8, 8, "attention")
    make_config(tmp_path, NPEmbeddingRewardConfig, reward_head="dpl", context_embedding="precomputed", latent_dim=0)
    make_config(tmp_path, NPDPOConfig, num_targets=4, max_context=2, beta=0.05)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_context": 5, "max_context": 4}, r"`min_context` \(5\) must be <= `max_context` \(4\)"),
        ({"min_context": -1}, r"`min_context` must be >= 0"),
        ({"num_targets": 8, "max_context": 9}, r"`max_context` \(9\) must be <= `num_targets` \(8\)"),
        ({"num_targets": 0, "max_context": 0}, r"`num_targets` must be >= 1"),
        ({"episode_passes": 0}, r"`episode_passes` must be >= 1"),
        ({"aggregation": "max"}, r"`aggregation` must be one of .*'max'"),
        ({"latent_type": "flow"}, r"`latent_type` must be one of .*'flow'"),
        ({"bounded_latent": "false"}, r"`bounded_latent` must be True or False, got 'false' \(str\)"),
        ({"redraw_episodes": "no"}, r"`redraw_episodes` must be True or False, got 'no' \(str\)"),
        ({"condition_reward_head": 1}, r"`condition_reward_head` must be True or False, got 1 \(int\)"),
        ({"too_few_pairs": "drop"}, r"`too_few_pairs` must be one of .*'drop'"),
        ({"kl_weight": -0.1}, r"`kl_weight` must be >= 0"),
        ({"eval_context_sizes": []}, r"`eval_context_sizes` must be non-empty"),
        ({"eval_context_sizes": [0, -1]}, r"`eval_context_sizes` must be non-empty and >= 0"),
        ({"context_embedding_pooling": "max"}, r"`context_embedding_pooling` must be one of"),
        (
            {"aggregation": "attention", "encoder_hidden_dim": 30, "aggregation_num_heads": 4},
            r"`encoder_hidden_dim` \(30\) must be divisible by `aggregation_num_heads` \(4\)",
        ),
        ({"latent_dim": -1}, r"`latent_dim` must be >= 0"),
        ({"encoder_hidden_dim": 0}, r"`encoder_hidden_dim` must be >= 1"),
        ({"aggregation_num_heads": 0}, r"`aggregation_num_heads` must be >= 1"),
        ({"embedding_batch_size": 0}, r"`embedding_batch_size` must be >= 1"),
        ({"context_max_length": 0}, r"`context_max_length` must be >= 1"),
        ({"hypernetwork_hidden_dim": 0}, r"`hypernetwork_hidden_dim` must be >= 1"),
    ],
)
def test_post_init_errors_name_the_field(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_config(tmp_path, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"reward_head": "mse"}, r"`reward_head` must be one of .*'mse'"),
        ({"decoder_num_layers": 0}, r"`decoder_num_layers` must be >= 1"),
        ({"gradient_checkpointing": True}, r"gradient_checkpointing=False"),
        ({"min_context": 5, "max_context": 4}, r"`min_context` \(5\) must be <= `max_context` \(4\)"),
    ],
)
def test_embedding_config_errors_name_the_field(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_config(tmp_path, NPEmbeddingRewardConfig, **kwargs)


def test_removed_frozen_backbone_field(tmp_path):
    """The frozen-embedding path has its own config and trainer: the old flag is gone from NPRewardConfig."""
    with pytest.raises(TypeError, match="frozen_backbone"):
        make_config(tmp_path, frozen_backbone=True)
