# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Loading never corrupts a model or reads unsafe files silently: a folder of the wrong kind, an invalid
`fssa_config.json`, a truncated or missing file, an unreachable base model and pickled weights each raise an error
that names the file (or the argument) and the fix, before any weight is used (issue 10)."""

import json
import os
import re
import shutil

import pytest
import torch
from huggingface_hub.utils import filter_repo_objects
from safetensors.torch import load_file

from fssa_trl import SteerableModel, SteerablePolicy, SteerableRewardModel
from fssa_trl.cli import main as cli_main
from fssa_trl.hub import HUB_ALLOW_PATTERNS
from fssa_trl.modeling import (
    ContextEmbeddingConfig,
    EmbeddingRewardModelConfig,
    LatentEncoderConfig,
    NPEmbeddingRewardModel,
    NPModules,
    RewardDecoderConfig,
    SteerableEmbeddingRewardModel,
    SteerableLoRARewardModel,
)
from fssa_trl.rewards import RewardModelFunction
from fssa_trl.testing_utils import tiny_causal_lm, tiny_reward_model, untrained_steerable_model, word_tokenizer

ENCODER = dict(
    embedding_dim=32, latent_dim=4, hidden_dim=8, aggregation="mean", latent_type="deterministic", num_heads=2
)
CONTEXT = [{"prompt": "p1 ", "chosen": "a1 a2", "rejected": "b1 b2"}]
PICKLES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def save_gated(root, kind: str, target_modules=("q_proj", "v_proj")):
    """Save an untrained steerable LoRA reward model (`kind="rm"`) or policy, its base model beside it; returns the
    live model, its folder and the base model's folder."""
    tokenizer = word_tokenizer()
    base_dir = root / f"{kind}-base"
    base = tiny_reward_model(tokenizer) if kind == "rm" else tiny_causal_lm(tokenizer)
    base.save_pretrained(base_dir)
    base.name_or_path = str(base_dir)  # recorded in the adapter config, as for a model loaded from there
    live = untrained_steerable_model(base, tokenizer, policy=kind != "rm", target_modules=target_modules)
    folder = root / kind
    live.save_pretrained(str(folder))
    return live.eval(), folder, base_dir


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("saved")
    rm, rm_dir, rm_base = save_gated(root, "rm")
    _, policy_dir, _ = save_gated(root, "policy")
    _, other_dir, _ = save_gated(root / "other", "rm", target_modules=("q_proj",))
    # A frozen-embedding reward model whose backbone is the reward model's base body (32-dimensional, on disk).
    config = EmbeddingRewardModelConfig(
        encoder=LatentEncoderConfig(**ENCODER),
        context_embedding=ContextEmbeddingConfig(source="base", name_or_path=str(rm_base), max_length=32),
        decoder=RewardDecoderConfig(embedding_dim=32, latent_dim=4, hidden_dim=8, num_layers=2, head="btl"),
    )
    embedding = SteerableEmbeddingRewardModel(
        NPEmbeddingRewardModel(NPModules.from_config(config)), rm.tokenizer, config
    )
    embedding.save_pretrained(str(root / "embedding"))
    return {
        "rm": rm,
        "rm_dir": rm_dir,
        "rm_base": rm_base,
        "policy_dir": policy_dir,
        "other_dir": other_dir,
        "embedding_dir": root / "embedding",
    }


def copy_of(folder, tmp_path, name="copy"):
    target = tmp_path / name
    shutil.copytree(folder, target)
    return target


def edit_json(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.fixture
def no_unpickling(monkeypatch):
    """Any `torch.load` (the way `.bin` weights are read) fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a pickled file was loaded")

    monkeypatch.setattr(torch, "load", refuse)


# ---------------------------------------------------------------------------------------------- sound folders
def test_saved_folders_load_and_score_as_the_live_model(saved):
    loaded = SteerableModel.from_pretrained(str(saved["rm_dir"]))
    assert type(loaded) is SteerableLoRARewardModel
    torch.testing.assert_close(
        loaded.score(["p1 "], ["a1 a2"], context=CONTEXT), saved["rm"].score(["p1 "], ["a1 a2"], context=CONTEXT)
    )
    assert type(SteerableModel.from_pretrained(str(saved["policy_dir"]))) is SteerablePolicy
    embedding = SteerableRewardModel.from_pretrained(str(saved["embedding_dir"]))
    assert type(embedding) is SteerableEmbeddingRewardModel and embedding.embedder is not None


# ------------------------------------------------------------------------------------------ 6. the wrong kind
def test_a_folder_of_the_other_kind_names_the_file_the_field_and_the_loader(saved):
    with pytest.raises(ValueError, match=r"fssa_config\.json: field 'model_type' is 'np_dpo_policy'.*SteerablePolicy"):
        SteerableRewardModel.from_pretrained(str(saved["policy_dir"]))
    with pytest.raises(
        ValueError, match=r"fssa_config\.json: field 'model_type' is 'np_lora_reward_model'.*SteerableRewardModel"
    ):
        SteerablePolicy.from_pretrained(str(saved["rm_dir"]))


# ------------------------------------------------------------------------------------- 7. invalid fssa_config.json
@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.update(mode="bogus"), r"unknown field 'mode' for LoRARewardModelConfig \(known: \["),
        (lambda d: d.update(model_type="bogus"), r"field 'model_type' is 'bogus', expected one of \["),
        (lambda d: d["encoder"].update(aggregation="bogus"), r"`aggregation` must be one of \('mean',"),
        (lambda d: d["encoder"].update(latent_type="bogus"), r"`latent_type` must be one of"),
        (lambda d: d["context_embedding"].update(pooling="max"), r"'context_embedding\.pooling' must be one of \("),
        (lambda d: d["context_embedding"].update(source="web"), r"field 'source' must be one of \('base'"),
        (lambda d: d.pop("encoder"), r"missing field 'encoder' of LoRARewardModelConfig"),
        (lambda d: d["encoder"].update(latent_dim="4"), r"field 'encoder\.latent_dim' must be int, got str '4'"),
        (lambda d: d["hypernetwork"].update(rank=None), r"field 'hypernetwork\.rank' must be int, got NoneType"),
    ],
)
def test_an_invalid_config_names_the_file_the_field_and_the_valid_values(saved, tmp_path, edit, match):
    folder = copy_of(saved["rm_dir"], tmp_path)
    edit_json(folder / "fssa_config.json", edit)
    with pytest.raises(ValueError, match=match) as error:
        SteerableRewardModel.from_pretrained(str(folder))
    assert str(error.value).startswith(str(folder / "fssa_config.json"))


def test_weights_of_another_shape_name_the_file(saved, tmp_path):
    folder = copy_of(saved["rm_dir"], tmp_path)
    edit_json(folder / "fssa_config.json", lambda d: d["encoder"].update(hidden_dim=16))
    with pytest.raises(RuntimeError, match=rf"(?s){folder / 'fssa_np.safetensors'} does not match .*size mismatch"):
        SteerableRewardModel.from_pretrained(str(folder))


def test_an_adapter_from_another_model_is_refused(saved, tmp_path):
    """The NP modules and config agree, but the adapter has other LoRA layers: its gates would go to the wrong
    layers."""
    folder = copy_of(saved["rm_dir"], tmp_path)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(saved["other_dir"] / name, folder / name)
    with pytest.raises(ValueError, match=r"'hypernetwork\.num_layers' and 'hypernetwork\.rank' are \(4, 4\), but the"):
        SteerableRewardModel.from_pretrained(str(folder))


# ------------------------------------------------------------------------------------ 8. truncated safetensors
@pytest.mark.parametrize("name", ["fssa_np.safetensors", "adapter_model.safetensors"])
@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_a_truncated_weights_file_is_named_as_corrupt(saved, tmp_path, name, keep):
    folder = copy_of(saved["rm_dir"], tmp_path)
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[: int(keep * len(data))])
    with pytest.raises(ValueError, match=rf"^{folder / name} is corrupt or incomplete \(.*\): an interrupted save"):
        SteerableRewardModel.from_pretrained(str(folder))


# ------------------------------------------------------------------------------------------ 9. missing files
@pytest.mark.parametrize(
    "name", ["adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json", "fssa_np.safetensors"]
)
def test_a_missing_file_names_the_folder_and_the_file(saved, tmp_path, name):
    folder = copy_of(saved["rm_dir"], tmp_path)
    os.remove(folder / name)
    with pytest.raises(ValueError, match=rf"'{folder}' has no {name}"):
        SteerableRewardModel.from_pretrained(str(folder))


def test_a_missing_config_says_the_folder_was_not_saved_by_fssa_trl(saved, tmp_path):
    folder = copy_of(saved["rm_dir"], tmp_path)
    os.remove(folder / "fssa_config.json")
    with pytest.raises(ValueError, match=rf"'{folder}' has no fssa_config\.json"):
        SteerableModel.from_pretrained(str(folder))


# ------------------------------------------------------------------------------------- 10. unreachable base model
@pytest.fixture
def offline(monkeypatch):
    """Offline for huggingface_hub itself, which read `HF_HUB_OFFLINE` when first imported (before the test setup's
    environment variable): without it, an uncached Hub id is retried over the network."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("recorded", ["fssa-testing/not-cached", "local"])
def test_an_unreachable_base_model_says_to_pass_base_model_name_or_path(saved, tmp_path, offline, recorded):
    """A Hub id that is not cached (offline), or the trainer's local path that this machine lacks."""
    recorded = str(tmp_path / "trainer-machine" / "base") if recorded == "local" else recorded
    folder = copy_of(saved["rm_dir"], tmp_path)
    edit_json(folder / "adapter_config.json", lambda d: d.update(base_model_name_or_path=recorded))
    with pytest.raises(OSError, match=r"Pass `base_model_name_or_path=` \(in the CLI, `--base-model`\)") as error:
        SteerableRewardModel.from_pretrained(str(folder))
    assert f"{recorded!r} (the base model recorded in {folder / 'adapter_config.json'}" in str(error.value)
    loaded = SteerableRewardModel.from_pretrained(str(folder), base_model_name_or_path=str(saved["rm_base"]))
    torch.testing.assert_close(loaded.score(["p1 "], ["a1"]), saved["rm"].score(["p1 "], ["a1"]))


def test_an_unreachable_backbone_says_to_pass_base_model_name_or_path(saved, tmp_path, offline):
    folder = copy_of(saved["embedding_dir"], tmp_path)
    edit_json(folder / "fssa_config.json", lambda d: d["context_embedding"].update(name_or_path="fssa-testing/gone"))
    match = r"(?s)'fssa-testing/gone' \(fssa_config\.json field 'context_embedding\.name_or_path'\).*Pass `base_model_"
    with pytest.raises(OSError, match=match):
        SteerableRewardModel.from_pretrained(str(folder))


# --------------------------------------------------------------------------------------- 11. safetensors only
def pickled_copy(folder, tmp_path, safetensors_name: str, bin_name: str, name="pickled"):
    """A copy of `folder` whose `safetensors_name` is replaced by a `torch.save`d state dict `bin_name`."""
    target = copy_of(folder, tmp_path, name)
    torch.save(load_file(target / safetensors_name), target / bin_name)
    os.remove(target / safetensors_name)
    return target


def test_a_pickled_adapter_is_refused_not_loaded(saved, tmp_path, no_unpickling):
    folder = pickled_copy(saved["rm_dir"], tmp_path, "adapter_model.safetensors", "adapter_model.bin")
    match = r"has adapter_model\.bin but no adapter_model\.safetensors .*safetensors only, never from pickled files"
    with pytest.raises(ValueError, match=match):
        SteerableRewardModel.from_pretrained(str(folder))


def test_a_pickled_base_model_is_refused_not_loaded(saved, tmp_path, no_unpickling):
    base = pickled_copy(saved["rm_base"], tmp_path, "model.safetensors", "pytorch_model.bin")
    with pytest.raises(
        ValueError, match=r"\(given as `base_model_name_or_path`\) holds only pickled weights \(\.bin\)"
    ):
        SteerableRewardModel.from_pretrained(str(saved["rm_dir"]), base_model_name_or_path=str(base))
    folder = copy_of(saved["embedding_dir"], tmp_path)
    edit_json(folder / "fssa_config.json", lambda d: d["context_embedding"].update(name_or_path=str(base)))
    with pytest.raises(ValueError, match=r"holds only pickled weights"):  # a frozen-embedding model's backbone
        SteerableRewardModel.from_pretrained(str(folder))


def test_a_pickled_reward_model_is_refused_by_the_reward_function(saved, tmp_path, no_unpickling):
    base = pickled_copy(saved["rm_base"], tmp_path, "model.safetensors", "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"the reward model given as `model`\) holds only pickled weights"):
        RewardModelFunction(str(base))


def test_hub_downloads_never_request_pickles():
    assert not list(filter_repo_objects([f"weights{ext}" for ext in PICKLES], allow_patterns=HUB_ALLOW_PATTERNS))


# ------------------------------------------------------------------------------------------------------- CLI
def test_cli_export_names_the_context_file_and_the_row(saved, tmp_path):
    context = tmp_path / "user.jsonl"
    rows = [{**CONTEXT[0], "user_id": "A"}, {"promt": "p2 ", "chosen": "a2", "rejected": "b2", "user_id": "A"}]
    context.write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = ["export", "--model", str(saved["rm_dir"]), "--context", str(context), "--output", str(tmp_path / "out")]
    match = rf"error: the rows of user 'A' in {re.escape(str(context))}: `context\[1\]` has the unknown key 'promt'"
    with pytest.raises(SystemExit, match=match):
        cli_main([*args, "--user", "A"])
    context.write_text(json.dumps(CONTEXT[0]) + '\n{"prompt": \n')
    with pytest.raises(SystemExit, match=rf"error: line 2 of {re.escape(str(context))} is not valid JSON"):
        cli_main(args)
    assert not (tmp_path / "out").exists()
