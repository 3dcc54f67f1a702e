# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""The saved config (`fssa_trl.modeling.config`, `fssa_config.json`): typed, versioned, validated on read, and the
loaders dispatch on its class."""

import json
from dataclasses import replace

import pytest
import torch

from fssa_trl import SteerableEmbeddingRewardModel, SteerablePolicy, SteerableRewardModel
from fssa_trl.modeling import (
    ContextEmbeddingConfig,
    EmbeddingRewardModelConfig,
    HypernetworkConfig,
    LatentEncoderConfig,
    LoRARewardModelConfig,
    NPModules,
    PolicyConfig,
    RewardDecoderConfig,
    SteerableConfig,
    SteerableLoRARewardModel,
    load_np_modules,
    save_np_modules,
)
from fssa_trl.modeling.config import FORMAT_VERSION

ENCODER = LatentEncoderConfig(
    embedding_dim=4, latent_dim=3, hidden_dim=8, aggregation="mean", latent_type="deterministic", num_heads=2
)
HYPERNETWORK = HypernetworkConfig(latent_dim=3, num_layers=2, rank=4, hidden_dim=8)
PRECOMPUTED = ContextEmbeddingConfig(source="precomputed", pooling="mean", max_length=16)


def configs():
    return {
        "lora": LoRARewardModelConfig(encoder=ENCODER, context_embedding=PRECOMPUTED, hypernetwork=HYPERNETWORK),
        "embedding": EmbeddingRewardModelConfig(
            encoder=ENCODER,
            context_embedding=PRECOMPUTED,
            decoder=RewardDecoderConfig(embedding_dim=4, latent_dim=3, hidden_dim=8, num_layers=2, head="btl"),
        ),
        "policy": PolicyConfig(encoder=ENCODER, context_embedding=PRECOMPUTED, hypernetwork=HYPERNETWORK, beta=0.05),
    }


def write(tmp_path, data: dict):
    path = tmp_path / "fssa_config.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize("kind", ["lora", "embedding", "policy"])
def test_round_trip(tmp_path, kind):
    config = configs()[kind]
    config.save_pretrained(str(tmp_path))
    data = json.loads((tmp_path / "fssa_config.json").read_text())
    assert data["model_type"] == config.model_type and data["format_version"] == FORMAT_VERSION
    assert "fssa_trl_version" in data
    loaded = SteerableConfig.from_pretrained(str(tmp_path))
    assert type(loaded) is type(config) and loaded == config


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.update(mode="lora"), r"unknown field 'mode' for LoRARewardModelConfig"),
        (lambda d: d["encoder"].update(dropout=0.1), r"unknown field 'encoder\.dropout' for LatentEncoderConfig"),
        (lambda d: d["encoder"].update(latent_dim="3"), r"field 'encoder\.latent_dim' must be int, got str '3'"),
        (lambda d: d["hypernetwork"].update(rank=True), r"field 'hypernetwork\.rank' must be int, got bool"),
        (lambda d: d.update(condition_reward_head="yes"), r"field 'condition_reward_head' must be bool"),
        (lambda d: d["hypernetwork"].update(head_dim=[1]), r"'hypernetwork\.head_dim' must be int or null"),
        (lambda d: d.pop("hypernetwork"), r"missing field 'hypernetwork' of LoRARewardModelConfig"),
        (lambda d: d["context_embedding"].update(source="web"), r"field 'source' must be one of"),
        (lambda d: d["encoder"].update(hidden_dim=0), r"field 'hidden_dim' of LatentEncoderConfig must be >= 1"),
        (lambda d: d.pop("model_type"), r"missing field 'model_type'.*fssa_trl 0\.1"),
        (lambda d: d.update(model_type="np_reward_v9"), r"field 'model_type' is 'np_reward_v9', expected one of"),
        (lambda d: d.update(format_version=FORMAT_VERSION + 1), r"field 'format_version' is 2.*upgrade fssa_trl"),
        (lambda d: d.update(encoder=[1, 2]), r"field 'encoder' must be an object"),
    ],
)
def test_bad_files_name_the_file_and_the_field(tmp_path, edit, match):
    data = configs()["lora"].to_dict()
    edit(data)
    path = write(tmp_path, data)
    with pytest.raises(ValueError, match=match) as error:
        SteerableConfig.from_json(path)
    assert str(error.value).startswith(path)


def test_not_json_and_no_file(tmp_path):
    (tmp_path / "fssa_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        SteerableConfig.from_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="has no fssa_config.json"):
        SteerableConfig.from_pretrained(str(tmp_path / "missing"))


def save_folder(tmp_path, kind):
    config = configs()[kind]
    save_np_modules(str(tmp_path), NPModules.from_config(config).state_dict(), config)
    return str(tmp_path)


def test_a_folder_of_the_wrong_kind_names_the_file_the_field_and_the_loader(tmp_path):
    policy = save_folder(tmp_path / "policy", "policy")
    with pytest.raises(ValueError, match=r"fssa_config\.json: field 'model_type' is 'np_dpo_policy'.*SteerablePolicy"):
        SteerableRewardModel.from_pretrained(policy)
    embedding = save_folder(tmp_path / "embedding", "embedding")
    with pytest.raises(ValueError, match=r"'np_embedding_reward_model'.*SteerableRewardModel\.from_pretrained"):
        SteerablePolicy.from_pretrained(embedding)
    with pytest.raises(ValueError, match=r"a EmbeddingRewardModelConfig, but a LoRARewardModelConfig was expected"):
        SteerableLoRARewardModel.from_pretrained(embedding)


def test_reward_loader_dispatches_on_the_config_class(tmp_path):
    folder = save_folder(tmp_path, "embedding")
    model = SteerableRewardModel.from_pretrained(folder)
    assert type(model) is SteerableEmbeddingRewardModel
    assert model.scores_embeddings and model.embedder is None
    context = [{"chosen_embedding": [1.0, 0, 0, 0], "rejected_embedding": [0, 1.0, 0, 0]}]
    rewards = model.score(["", ""], [[0.5] * 4, [0.1] * 4], context=context)
    assert rewards.shape == (2,) and torch.isfinite(rewards).all()
    assert SteerableEmbeddingRewardModel.from_pretrained(folder).fssa_config == model.fssa_config


def test_saved_weights_must_match_the_config(tmp_path):
    folder = save_folder(tmp_path, "embedding")
    data = json.loads((tmp_path / "fssa_config.json").read_text())
    data["decoder"]["hidden_dim"] = 16  # the config no longer describes the saved tensors
    write(tmp_path, data)
    with pytest.raises(RuntimeError, match="size mismatch"):
        SteerableRewardModel.from_pretrained(folder)


def test_precomputed_model_has_no_backbone_to_override(tmp_path):
    with pytest.raises(ValueError, match="no backbone to replace"):
        SteerableRewardModel.from_pretrained(save_folder(tmp_path, "embedding"), base_model_name_or_path="x")


def test_odd_encoder_and_shrunk_mean_round_trip(tmp_path):
    """The odd encoder has no `empty_set` weight; its saved modules load strictly and give the same latents."""
    encoder = replace(ENCODER, pair_features="difference", aggregation="shrunk_mean")
    config = PolicyConfig(encoder=encoder, context_embedding=PRECOMPUTED, hypernetwork=HYPERNETWORK, beta=0.05)
    modules = NPModules.from_config(config)
    assert "encoder.empty_set" not in modules.state_dict()
    save_np_modules(str(tmp_path), modules.state_dict(), config)
    loaded, loaded_config = load_np_modules(str(tmp_path))
    assert loaded_config == config
    chosen, rejected, mask = torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.tensor([[1, 1, 0], [0, 0, 0]]).bool()
    torch.testing.assert_close(loaded.encoder(chosen, rejected, mask).z, modules.encoder(chosen, rejected, mask).z)


def test_bounded_latent_round_trips_and_old_files_load_unbounded(tmp_path):
    """`bounded` is saved with the encoder and rebuilds a bounded encoder; a file written before the field existed
    loads an unbounded one (the model it was trained as)."""
    encoder = replace(ENCODER, pair_features="difference", bounded=True)
    config = PolicyConfig(encoder=encoder, context_embedding=PRECOMPUTED, hypernetwork=HYPERNETWORK, beta=0.05)
    modules = NPModules.from_config(config)
    save_np_modules(str(tmp_path), modules.state_dict(), config)
    loaded, loaded_config = load_np_modules(str(tmp_path))
    assert loaded_config == config and loaded.encoder.bounded
    with torch.no_grad():
        for module in (modules, loaded):  # latents far outside (-1, 1) before the bound
            module.encoder.latent_head[-1].weight.mul_(1000)
    chosen, rejected, mask = torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.ones(2, 3, dtype=torch.bool)
    z = loaded.encoder(chosen, rejected, mask).z
    assert z.abs().max() <= 1
    torch.testing.assert_close(z, modules.encoder(chosen, rejected, mask).z)

    path = tmp_path / "fssa_config.json"
    data = json.loads(path.read_text())
    del data["encoder"]["bounded"]
    path.write_text(json.dumps(data))
    old, old_config = load_np_modules(str(tmp_path))
    assert old_config.encoder.bounded is False and not old.encoder.bounded
