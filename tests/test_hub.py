# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""The Hub, against a stand-in: `HfApi.create_repo`, `create_branch`, `upload_folder` and `snapshot_download` are
intercepted and served from a folder per repository and revision, so that what is uploaded, what is requested and
what comes back can be asserted exactly. Everything above them (ours, transformers' `Trainer.push_to_hub` and its
ignore patterns, huggingface_hub's own file filtering) runs as it would against the Hub."""

import os

import pytest
import torch
from datasets import Dataset
from huggingface_hub import CommitInfo, ModelCard
from huggingface_hub.utils import filter_repo_objects
from peft import LoraConfig

from fssa_trl import (
    ContextFreeRewardModel,
    NPDPOConfig,
    NPDPOTrainer,
    NPEmbeddingRewardConfig,
    NPEmbeddingRewardTrainer,
    NPRewardConfig,
    NPRewardTrainer,
    SteerablePolicy,
    SteerableRewardModel,
)
from fssa_trl.hub import HUB_ALLOW_PATTERNS, push_folder_to_hub, resolve_pretrained
from fssa_trl.testing_utils import style_preference_dataset, tiny_causal_lm, tiny_reward_model, word_tokenizer

PICKLES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
TINY = dict(
    report_to="none",
    use_cpu=True,
    bf16=False,
    disable_tqdm=True,
    save_strategy="no",
    per_device_train_batch_size=4,
    learning_rate=3e-2,
    num_targets=8,
    max_context=4,
    eval_context_sizes=[0, 2],
    latent_dim=8,
    encoder_hidden_dim=16,
    seed=0,
)
LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
BASE_ID = "fssa-testing/tiny-qwen2"  # the base model "on the Hub": a folder of that name in the working directory


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


@pytest.fixture
def hub_base_model(tmp_path, monkeypatch):
    """`BASE_ID` "on the Hub": `load()` changes into a folder holding a model folder of that name, which transformers
    then resolves the id to (only for loading: a folder of that name would otherwise count as a local path)."""
    root = tmp_path / "hub-models"

    def load():
        monkeypatch.chdir(root)

    return root / BASE_ID, load


def context_of(dataset, n=4):
    return [
        {"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in dataset.select(range(n))
    ]


def assert_no_pickles_requested_or_fetched(hub):
    for call in hub.named("snapshot_download"):
        patterns = call["allow_patterns"]
        assert patterns == HUB_ALLOW_PATTERNS
        assert not any(
            name for name in filter_repo_objects([f"x{ext}" for ext in PICKLES], allow_patterns=patterns)
        ), patterns
    for snapshot in (hub.root / "cache").iterdir():
        assert not any(p.suffix in PICKLES for p in snapshot.rglob("*")), sorted(snapshot.rglob("*"))


# ---------------------------------------------------------------------------------------------- reward model
def test_trainer_push_and_from_pretrained_give_identical_rewards(hub, tokenizer, hub_base_model, tmp_path):
    base_dir, enter_hub = hub_base_model
    base = tiny_reward_model(tokenizer)
    base.save_pretrained(base_dir)
    base.config._name_or_path = base.name_or_path = BASE_ID  # as loaded from the Hub
    train, test = style_preference_dataset(24), style_preference_dataset(12, seed=1)
    trainer = NPRewardTrainer(
        model=base,
        args=NPRewardConfig(
            output_dir=str(tmp_path / "out"), hub_model_id="me/np-rm", max_steps=2, hypernetwork_hidden_dim=16, **TINY
        ),
        train_dataset=train,
        eval_dataset=test,
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type="SEQ_CLS", **LORA),
    )
    trainer.train()
    trainer.evaluate()
    trainer.push_to_hub(token="hf_write", dataset_name="me/prefs")

    # What transformers' Trainer.push_to_hub uploads: output_dir after save_model, ours included, with its
    # `training_args.bin` (TrainingArguments, pickled by transformers), which `from_pretrained` never requests.
    (upload,) = hub.named("upload_folder")
    assert upload["repo_id"] == "me/np-rm" and upload["token"] == "hf_write"
    assert set(upload["files"]) == {
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "fssa_config.json",
        "fssa_np.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "training_args.bin",
    }
    card = ModelCard.load(hub.folder("me/np-rm") / "README.md")
    assert card.data.base_model == BASE_ID and card.data.library_name == "peft"
    assert card.data.datasets == "me/prefs"
    assert {"fssa-trl", "trl", "few-shot-steerable-alignment", "reward-model"} <= set(card.data.tags)
    assert "arXiv:2412.13998" in card.text
    assert 'SteerableRewardModel.from_pretrained("me/np-rm")' in card.text and "context=context" in card.text
    assert "| evaluation set (`eval`) |" in card.text

    enter_hub()
    loaded = SteerableRewardModel.from_pretrained("me/np-rm", token="hf_read")  # base: `BASE_ID`, by transformers
    (download,) = hub.named("snapshot_download")
    assert download == dict(repo_id="me/np-rm", revision=None, token="hf_read", allow_patterns=HUB_ALLOW_PATTERNS)
    assert_no_pickles_requested_or_fetched(hub)
    expected_model = trainer.steerable_model()
    prompts, responses = list(test["prompt"][:6]) * 2, list(test["chosen"][:6]) + list(test["rejected"][:6])
    for context in (context_of(test), None):
        torch.testing.assert_close(
            loaded.score(prompts, responses, context=context),
            expected_model.score(prompts, responses, context=context),
            atol=1e-6,
            rtol=0,
        )


# ---------------------------------------------------------------------------------------------------- policy
def test_policy_push_to_a_revision_and_back_gives_identical_log_probs(hub, tokenizer, tmp_path):
    base_dir = tmp_path / "base"
    tiny_causal_lm(tokenizer).save_pretrained(base_dir)
    train = style_preference_dataset(24)
    trainer = NPDPOTrainer(
        model=str(base_dir),
        args=NPDPOConfig(output_dir=str(tmp_path / "out"), max_steps=2, hypernetwork_hidden_dim=16, **TINY),
        train_dataset=train,
        processing_class=tokenizer,
        peft_config=LoraConfig(**LORA),
    )
    trainer.train()
    policy = trainer.steerable_model()
    policy.push_to_hub("me/np-dpo", revision="v1", token="hf_write", private=True, commit_message="first")

    assert hub.named("create_repo") == [dict(repo_id="me/np-dpo", token="hf_write", private=True)]
    assert hub.named("create_branch") == [dict(repo_id="me/np-dpo", branch="v1", token="hf_write")]
    (upload,) = hub.named("upload_folder")
    assert upload["revision"] == "v1" and upload["token"] == "hf_write" and upload["commit_message"] == "first"
    assert set(upload["files"]) == {
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "fssa_config.json",
        "fssa_np.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    assert hub.files("me/np-dpo") == set()  # main is untouched
    card = ModelCard.load(hub.folder("me/np-dpo", "v1") / "README.md")
    assert {"dpo", "np-dpo", "fssa-trl"} <= set(card.data.tags) and card.data.library_name == "peft"
    assert 'SteerablePolicy.from_pretrained("me/np-dpo")' in card.text and "context=context" in card.text

    with pytest.raises(ValueError, match="has no fssa_config.json"):  # main is empty: the revision selects the upload
        SteerablePolicy.from_pretrained("me/np-dpo")
    loaded = SteerablePolicy.from_pretrained("me/np-dpo", revision="v1", token="hf_read")
    assert hub.named("snapshot_download")[-1] == dict(
        repo_id="me/np-dpo", revision="v1", token="hf_read", allow_patterns=HUB_ALLOW_PATTERNS
    )
    assert_no_pickles_requested_or_fetched(hub)
    prompts, completions = list(train["prompt"][:4]), list(train["chosen"][:4])
    context = context_of(train)
    torch.testing.assert_close(
        loaded.log_probs(prompts, completions, context=context),
        policy.log_probs(prompts, completions, context=context),
        atol=1e-5,
        rtol=0,
    )


# ---------------------------------------------------------------------------------- frozen-embedding model
def test_embedding_model_save_pretrained_and_hub_round_trip(hub, tmp_path):
    g = torch.Generator().manual_seed(0)
    rows = 24
    data = {
        "chosen_embedding": torch.randn(rows, 4, generator=g).tolist(),
        "rejected_embedding": torch.randn(rows, 4, generator=g).tolist(),
        "user_id": ["u1", "u2"] * (rows // 2),
    }
    args = NPEmbeddingRewardConfig(
        output_dir=str(tmp_path / "out"), context_embedding="precomputed", max_steps=2, decoder_hidden_dim=16, **TINY
    )
    trainer = NPEmbeddingRewardTrainer(args=args, train_dataset=Dataset.from_dict(data))
    trainer.train()
    model = trainer.steerable_model()
    model.save_pretrained(str(tmp_path / "saved"))
    assert set(os.listdir(tmp_path / "saved")) == {"README.md", "fssa_config.json", "fssa_np.safetensors"}

    model.push_to_hub("me/np-emb")
    (upload,) = hub.named("upload_folder")
    assert set(upload["files"]) == {"README.md", "fssa_config.json", "fssa_np.safetensors"}
    loaded = SteerableRewardModel.from_pretrained("me/np-emb")
    context = [
        {"chosen_embedding": data["chosen_embedding"][i], "rejected_embedding": data["rejected_embedding"][i]}
        for i in range(3)
    ]
    responses = data["chosen_embedding"][:5]
    torch.testing.assert_close(
        loaded.score([None] * 5, responses, context=context), model.score([None] * 5, responses, context=context)
    )


def test_checkpoint_pushes_upload_the_checkpoint_np_modules(hub, tokenizer, tmp_path):
    """`hub_strategy="every_save"`: transformers copies only its own weight files from each checkpoint to
    `output_dir` before uploading it; our NP modules go with them, so every push is one consistent model."""
    out = tmp_path / "out"
    trainer = NPRewardTrainer(
        model=tiny_reward_model(tokenizer),
        args=NPRewardConfig(
            output_dir=str(out),
            push_to_hub=True,
            hub_model_id="me/np-rm",
            hub_strategy="every_save",
            max_steps=2,
            hypernetwork_hidden_dim=16,
            **{**TINY, "save_strategy": "steps", "save_steps": 1},
        ),
        train_dataset=style_preference_dataset(24),
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type="SEQ_CLS", **LORA),
    )
    trainer.train()
    uploads = [u for u in hub.named("upload_folder") if "fssa_np.safetensors" in u["files"]]
    assert len(uploads) >= 2  # one per checkpoint
    for name in ("fssa_np.safetensors", "fssa_config.json", "adapter_model.safetensors"):
        assert (hub.folder("me/np-rm") / name).read_bytes() == (out / "checkpoint-2" / name).read_bytes(), name


# ---------------------------------------------------------------------------------------- folders and errors
def test_push_folder_uploads_only_safe_files_and_loading_never_requests_pickles(hub, tmp_path):
    folder = tmp_path / "exported"
    folder.mkdir()
    for name in ("adapter_config.json", "tokenizer.json", "merges.txt", "chat_template.jinja"):
        (folder / name).write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(b"0")
    ModelCard("---\nlibrary_name: peft\n---\n# exported\n").save(folder / "README.md")
    for name in ("training_args.bin", "optimizer.pt", "rng_state.pth", "state.pkl"):
        (folder / name).write_bytes(b"pickle")
    (folder / "checkpoint-1").mkdir()
    (folder / "checkpoint-1" / "adapter_model.safetensors").write_bytes(b"0")

    skipped = r"\['optimizer.pt', 'rng_state.pth', 'state.pkl', 'training_args.bin'\]"
    with pytest.warns(UserWarning, match=skipped):
        info = push_folder_to_hub(str(folder), "me/user-a", token="hf_write")
    assert isinstance(info, CommitInfo)
    assert hub.files("me/user-a") == {
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "chat_template.jinja",
        "merges.txt",
        "tokenizer.json",
    }
    # A repository holding pickles (pushed by other tools): they are neither requested nor fetched.
    for name in ("training_args.bin", "optimizer.pt", "state.pkl"):
        (hub.folder("me/user-a") / name).write_bytes(b"pickle")
    snapshot = resolve_pretrained("me/user-a")
    assert set(os.listdir(snapshot)) == hub.files("me/user-a") - {"training_args.bin", "optimizer.pt", "state.pkl"}
    assert_no_pickles_requested_or_fetched(hub)


def test_resolve_pretrained_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="is a local folder"):
        resolve_pretrained(str(tmp_path), revision="v1")
    with pytest.raises(ValueError, match="neither a local folder nor a Hub repository id"):
        resolve_pretrained(str(tmp_path / "missing" / "deeper" / "folder"))
    assert resolve_pretrained(str(tmp_path)) == str(tmp_path)
    with pytest.raises(FileNotFoundError, match="'outputs/np-rm' is not a local folder"):
        resolve_pretrained("outputs/np-rm")  # offline, nothing cached (real huggingface_hub, not the stand-in)
    with pytest.raises(ValueError, match="nothing to upload"):
        push_folder_to_hub(str(tmp_path / "missing"), "me/x")


def test_a_context_free_model_has_nothing_to_save_or_push(tokenizer, tmp_path):
    model = ContextFreeRewardModel(tiny_reward_model(tokenizer), tokenizer)
    with pytest.raises(ValueError, match="has no saved form"):
        model.save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="has no saved form"):
        model.push_to_hub("me/plain")
