# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""NPRewardConfig: every new field documented once, with its default; every bad value named in its error."""

import dataclasses
import re

import pytest
from trl import RewardConfig

from fssa_trl import NPRewardConfig
from fssa_trl.trainer.np_reward_config import NPEpisodeArguments

NEW_FIELDS = {f.name: f for f in dataclasses.fields(NPRewardConfig)}
for _name in {f.name for f in dataclasses.fields(RewardConfig)}:
    NEW_FIELDS.pop(_name, None)
DOCSTRING = NPEpisodeArguments.__doc__ + NPRewardConfig.__doc__
# HF docstring entries: ``name (`type`, *optional*, defaults to `value`):``
DOC_ENTRY = re.compile(r"^\s{8}(\w+) \(`[^`]+`(?:, \*optional\*)?(?:, defaults to `([^`]*)`)?\):$", re.MULTILINE)
DOCUMENTED = {match.group(1): match.group(2) for match in DOC_ENTRY.finditer(DOCSTRING)}


def make_config(tmp_path, **kwargs):
    return NPRewardConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, **kwargs)


def test_new_fields_are_the_np_fields():
    assert {"user_column", "num_targets", "latent_dim", "frozen_backbone", "reward_head"} <= set(NEW_FIELDS)
    assert not {"learning_rate", "max_length", "output_dir"} & set(NEW_FIELDS)


@pytest.mark.parametrize("name", sorted(NEW_FIELDS))
def test_every_new_field_is_documented_with_its_default(name):
    field = NEW_FIELDS[name]
    assert name in DOCUMENTED, f"`{name}` is missing from the NPEpisodeArguments / NPRewardConfig docstrings"
    assert field.metadata.get("help"), f"`{name}` has no help text"
    default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
    documented = DOCUMENTED[name]
    if default is None:
        assert documented is None, f"`{name}` defaults to None but the docstring says `{documented}`"
    else:
        expected = f'"{default}"' if isinstance(default, str) else str(default)
        assert documented == expected, f"`{name}`: docstring default `{documented}`, field default `{expected}`"


def test_docstrings_describe_no_stale_fields():
    assert set(DOCUMENTED) <= set(NEW_FIELDS)


def test_valid_config(tmp_path):
    config = make_config(
        tmp_path, num_targets=8, min_context=0, max_context=8, aggregation="attention", latent_type="gaussian"
    )
    assert (config.num_targets, config.max_context, config.aggregation) == (8, 8, "attention")
    make_config(tmp_path, frozen_backbone=True, reward_head="dpl", context_embedding="precomputed")


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
        ({"reward_head": "mse"}, r"`reward_head` must be one of .*'mse'"),
        ({"reward_head": "dpl"}, r"`reward_head='dpl'`.*`frozen_backbone=True`"),
        ({"too_few_pairs": "drop"}, r"`too_few_pairs` must be one of .*'drop'"),
        ({"kl_weight": -0.1}, r"`kl_weight` must be >= 0"),
        ({"eval_context_sizes": []}, r"`eval_context_sizes` must be non-empty"),
        ({"eval_context_sizes": [0, -1]}, r"`eval_context_sizes` must be non-empty and >= 0"),
        ({"context_embedding_pooling": "max"}, r"`context_embedding_pooling` must be one of"),
        (
            {"aggregation": "attention", "encoder_hidden_dim": 30, "aggregation_num_heads": 4},
            r"`encoder_hidden_dim` \(30\) must be divisible by `aggregation_num_heads` \(4\)",
        ),
        ({"frozen_backbone": True, "condition_reward_head": True}, r"`condition_reward_head`.*frozen_backbone"),
    ],
)
def test_post_init_errors_name_the_field(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_config(tmp_path, **kwargs)
