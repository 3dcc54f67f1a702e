# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Crash-safe checkpoints (issue 10): a run killed while writing a checkpoint leaves it incomplete, and resuming with
`resume_from_checkpoint=True` must fall back to the newest complete checkpoint, warn which file was bad, and end
bit-identical to the uninterrupted run. Our own files are written atomically.

Each trainer trains once uninterrupted (6 steps, checkpoints every 2, cached for the module); a crash while writing
checkpoint-4 is simulated by copying checkpoints 2 and 4 and cutting one file of checkpoint-4 to half its size."""

import json
import os
import re
import shutil

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from safetensors.torch import load_file

from fssa_trl import (
    NPDPOConfig,
    NPDPOTrainer,
    NPEmbeddingRewardConfig,
    NPEmbeddingRewardTrainer,
    NPRewardConfig,
    NPRewardTrainer,
)
from fssa_trl.testing_utils import style_preference_dataset, tiny_causal_lm, tiny_reward_model, word_tokenizer
from fssa_trl.trainer.checkpoints import (
    CheckpointLayout,
    IncompleteCheckpointWarning,
    checkpoint_problem,
    resolve_checkpoint,
    write_files_atomically,
)

MAX_STEPS, SAVE_STEPS = 6, 2
COMMON = dict(
    report_to="none",
    use_cpu=True,
    disable_tqdm=True,
    max_steps=MAX_STEPS,
    save_strategy="steps",
    save_steps=SAVE_STEPS,
    logging_steps=MAX_STEPS,
    per_device_train_batch_size=2,
    learning_rate=1e-2,
    num_targets=4,
    max_context=4,
    seed=0,
    latent_dim=8,
    encoder_hidden_dim=16,
)
LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
# Every file of an NPRewardTrainer checkpoint that a resume reads (the acceptance list of issue 10).
RESUMED_FILES = [
    "adapter_model.safetensors",
    "fssa_np.safetensors",
    "fssa_config.json",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
    "trainer_state.json",
]
# ... and the adapter's config, which PEFT writes after the weights.
REQUIRED_FILES = [*RESUMED_FILES, "adapter_config.json"]
LAYOUT = CheckpointLayout(own_files=("fssa_np.safetensors", "fssa_config.json"))


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


def reward_trainer(tokenizer, output_dir):
    args = NPRewardConfig(output_dir=str(output_dir), bf16=False, hypernetwork_hidden_dim=16, **COMMON)
    return NPRewardTrainer(
        model=tiny_reward_model(tokenizer),
        args=args,
        train_dataset=style_preference_dataset(24, seed=0),
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type="SEQ_CLS", **LORA),
    )


def dpo_trainer(tokenizer, output_dir):
    args = NPDPOConfig(output_dir=str(output_dir), bf16=False, hypernetwork_hidden_dim=16, **COMMON)
    return NPDPOTrainer(
        model=tiny_causal_lm(tokenizer),
        args=args,
        train_dataset=style_preference_dataset(24, seed=0),
        processing_class=tokenizer,
        peft_config=LoraConfig(**LORA),
    )


def embedding_trainer(tokenizer, output_dir):
    g = torch.Generator().manual_seed(0)
    pairs = Dataset.from_dict(
        {
            "chosen_embedding": torch.randn(48, 4, generator=g).tolist(),
            "rejected_embedding": torch.randn(48, 4, generator=g).tolist(),
            "user_id": ["u1", "u2"] * 24,
        }
    )
    args = NPEmbeddingRewardConfig(
        output_dir=str(output_dir), context_embedding="precomputed", decoder_hidden_dim=16, **COMMON
    )
    return NPEmbeddingRewardTrainer(model=None, args=args, train_dataset=pairs)


def trainable(trainer) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def reference_runs(tokenizer, tmp_path_factory):
    """Per trainer, lazily: the uninterrupted run's folder and its trainable parameters (LoRA and NP modules)."""
    runs = {}

    def run(make):
        if make not in runs:
            output_dir = tmp_path_factory.mktemp(make.__name__)
            trainer = make(tokenizer, output_dir)
            trainer.train()
            assert trainer.state.global_step == MAX_STEPS
            runs[make] = output_dir, trainable(trainer)
        return runs[make]

    return run


def crashed_copy(reference_dir, tmp_path, cut: str | None):
    """A run folder as a crash while writing checkpoint-4 leaves it: checkpoints 2 and 4, `cut` of checkpoint-4 at
    half its size."""
    run_dir = tmp_path / "crashed"
    for step in (2, 4):
        shutil.copytree(reference_dir / f"checkpoint-{step}", run_dir / f"checkpoint-{step}")
    if cut is not None:
        path = run_dir / "checkpoint-4" / cut
        os.truncate(path, path.stat().st_size // 2)
    return run_dir


def resume_after_crash(make, tokenizer, reference_runs, tmp_path, cut):
    """Resume with `True` from the crashed copy: warned about `cut`, ends bit-identical to the uninterrupted run."""
    reference_dir, expected = reference_runs(make)
    run_dir = crashed_copy(reference_dir, tmp_path, cut)
    trainer = make(tokenizer, run_dir)
    with pytest.warns(
        IncompleteCheckpointWarning, match=rf"checkpoint-2.*checkpoint-4: {re.escape(cut)} is truncated"
    ):
        trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == MAX_STEPS
    got = trainable(trainer)
    assert got.keys() == expected.keys()
    assert any(name.startswith("fssa_np.") for name in got)
    for name, param in expected.items():
        assert torch.equal(got[name], param), name


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.parametrize("cut", RESUMED_FILES)
def test_reward_resume_falls_back_to_the_newest_complete_checkpoint(tokenizer, reference_runs, tmp_path, cut):
    resume_after_crash(reward_trainer, tokenizer, reference_runs, tmp_path, cut)


def test_dpo_resume_falls_back_to_the_newest_complete_checkpoint(tokenizer, reference_runs, tmp_path):
    resume_after_crash(dpo_trainer, tokenizer, reference_runs, tmp_path, "adapter_model.safetensors")


def test_embedding_resume_falls_back_to_the_newest_complete_checkpoint(tokenizer, reference_runs, tmp_path):
    # Its checkpoints hold no Trainer weights: `fssa_np.safetensors` is the whole model.
    resume_after_crash(embedding_trainer, tokenizer, reference_runs, tmp_path, "fssa_np.safetensors")


def test_complete_checkpoints_resume_without_warning(tokenizer, reference_runs, tmp_path, recwarn):
    reference_dir, expected = reference_runs(reward_trainer)
    run_dir = crashed_copy(reference_dir, tmp_path, cut=None)
    resolved, skipped = resolve_checkpoint(True, str(run_dir), LAYOUT)
    assert resolved == str(run_dir / "checkpoint-4") and skipped == []
    for path in reference_dir.glob("checkpoint-*"):
        assert checkpoint_problem(str(path), LAYOUT) is None, path
    assert not list(reference_dir.rglob(".fssa-staging-*"))  # the atomic writes cleaned up


def test_explicit_path_to_an_incomplete_checkpoint_raises(tokenizer, reference_runs, tmp_path):
    reference_dir, _ = reference_runs(reward_trainer)
    run_dir = crashed_copy(reference_dir, tmp_path, cut="optimizer.pt")
    trainer = reward_trainer(tokenizer, tmp_path / "elsewhere")
    with pytest.raises(ValueError, match=r"checkpoint-4: optimizer\.pt is truncated"):
        trainer.train(resume_from_checkpoint=str(run_dir / "checkpoint-4"))
    assert trainer.state.global_step == 0


# ---------------------------------------------------------------------------------------- completeness check
def test_every_file_read_on_resume_is_checked(reference_runs, tmp_path):
    """Cut, emptied or (for a crash before it was written) missing: each file of a complete checkpoint that the
    check reads makes it incomplete, named in the problem."""
    reference_dir, _ = reference_runs(reward_trainer)
    names = sorted(p.name for p in (reference_dir / "checkpoint-4").iterdir())
    not_checked = {"README.md"}  # not read on resume, and not a format whose end can be checked
    assert set(RESUMED_FILES) < set(names)
    for name in sorted(set(names) - not_checked):
        for damage in ("cut", "empty", "missing"):
            folder = tmp_path / f"{name}-{damage}"
            shutil.copytree(reference_dir / "checkpoint-4", folder)
            path = folder / name
            if damage == "missing":
                path.unlink()
            else:
                os.truncate(path, path.stat().st_size // 2 if damage == "cut" else 0)
            found = checkpoint_problem(str(folder), LAYOUT)
            if damage == "missing" and name not in REQUIRED_FILES:
                continue  # e.g. tokenizer files: not needed to resume
            assert found is not None and found.file == name, (name, damage, found)


def test_layouts_without_training_state_or_trainer_weights(reference_runs, tmp_path):
    reference_dir, _ = reference_runs(reward_trainer)
    folder = tmp_path / "checkpoint-4"
    shutil.copytree(reference_dir / "checkpoint-4", folder)
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (folder / name).unlink()
    assert checkpoint_problem(str(folder), LAYOUT).file == "optimizer.pt"
    only_model = CheckpointLayout(own_files=LAYOUT.own_files, training_state=False)  # `save_only_model=True`
    assert checkpoint_problem(str(folder), only_model) is None
    (folder / "adapter_model.safetensors").unlink()
    assert checkpoint_problem(str(folder), only_model).file == "adapter_model.safetensors"
    no_trainer_weights = CheckpointLayout(own_files=LAYOUT.own_files, training_state=False, model_weights=False)
    assert checkpoint_problem(str(folder), no_trainer_weights) is None


def test_no_complete_checkpoint_raises(reference_runs, tmp_path):
    reference_dir, _ = reference_runs(reward_trainer)
    run_dir = crashed_copy(reference_dir, tmp_path, cut="trainer_state.json")
    os.truncate(run_dir / "checkpoint-2" / "fssa_np.safetensors", 10)
    with pytest.raises(ValueError, match=r"No complete checkpoint.*checkpoint-4: trainer_state\.json.*checkpoint-2"):
        resolve_checkpoint(True, str(run_dir), LAYOUT)
    with pytest.raises(ValueError, match="No valid checkpoint found"):
        resolve_checkpoint(True, str(tmp_path / "empty"), LAYOUT)


def test_trainer_state_needs_a_global_step(reference_runs, tmp_path):
    reference_dir, _ = reference_runs(reward_trainer)
    folder = tmp_path / "checkpoint-4"
    shutil.copytree(reference_dir / "checkpoint-4", folder)
    (folder / "trainer_state.json").write_text(json.dumps({"epoch": 1.0}))
    assert "global_step" in checkpoint_problem(str(folder), LAYOUT).reason


def test_deepspeed_and_fsdp_layouts(tmp_path):
    """DeepSpeed's and FSDP's own checkpoints, as layouts on disk (no engine runs here)."""
    folder = tmp_path / "checkpoint-2"
    folder.mkdir()
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    torch.save({"python": 0}, folder / "rng_state_0.pth")
    deepspeed = CheckpointLayout(engine="deepspeed")
    assert checkpoint_problem(str(folder), deepspeed).file == "latest"
    (folder / "latest").write_text("global_step2")
    assert "not a folder" in checkpoint_problem(str(folder), deepspeed).reason
    (folder / "global_step2").mkdir()
    torch.save({"module": {}}, folder / "global_step2" / "mp_rank_00_model_states.pt")
    torch.save({"state": {}}, folder / "global_step2" / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    assert checkpoint_problem(str(folder), deepspeed) is None  # no optimizer.pt / scheduler.pt / weights needed
    os.truncate(folder / "global_step2" / "zero_pp_rank_0_mp_rank_00_optim_states.pt", 100)
    assert checkpoint_problem(str(folder), deepspeed).file == "global_step2/zero_pp_rank_0_mp_rank_00_optim_states.pt"

    fsdp = CheckpointLayout(engine="fsdp")
    torch.save({}, folder / "scheduler.pt")
    assert checkpoint_problem(str(folder), fsdp).file == "pytorch_model_fsdp.bin"
    (folder / "pytorch_model_fsdp_0").mkdir()
    (folder / "optimizer_0").mkdir()
    assert checkpoint_problem(str(folder), fsdp).file == "pytorch_model_fsdp_0/.metadata"
    (folder / "pytorch_model_fsdp_0" / ".metadata").write_bytes(b"x")
    (folder / "optimizer_0" / ".metadata").write_bytes(b"x")
    assert checkpoint_problem(str(folder), fsdp) is None


# ----------------------------------------------------------------------------------------------- atomic writes
def test_write_files_atomically_keeps_the_old_file_when_writing_fails(tmp_path):
    (tmp_path / "a.json").write_text('{"old": true}')

    def write(staging):
        with open(os.path.join(staging, "a.json"), "w") as f:
            f.write('{"new": ')  # cut short by the crash
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_files_atomically(str(tmp_path), write)
    assert json.loads((tmp_path / "a.json").read_text()) == {"old": True}
    assert os.listdir(tmp_path) == ["a.json"]  # no staging folder left

    def write_new(staging):
        for name in ("a.json", "b.json"):
            with open(os.path.join(staging, name), "w") as f:
                json.dump({"new": name}, f)

    assert write_files_atomically(str(tmp_path), write_new) == ["a.json", "b.json"]
    assert json.loads((tmp_path / "a.json").read_text()) == {"new": "a.json"}
    assert sorted(os.listdir(tmp_path)) == ["a.json", "b.json"]


@pytest.mark.parametrize("make", [reward_trainer, embedding_trainer], ids=["lora", "embedding"])
def test_load_best_model_at_end_restores_the_np_modules(make, tokenizer, reference_runs, tmp_path):
    """`load_best_model_at_end=True` loads the best checkpoint through `Trainer._load_best_model`, which knows only
    the Trainer's weight files: the NP modules (latent encoder, hypernetwork, decoder) must come back with them."""
    reference_dir, _ = reference_runs(make)
    best = reference_dir / "checkpoint-2"
    trainer = make(tokenizer, tmp_path / "fresh")  # initial weights: differ from checkpoint-2's
    trainer.state.best_model_checkpoint = str(best)
    trainer._load_best_model()
    saved = load_file(best / "fssa_np.safetensors")
    state = trainer.model.fssa_np.state_dict()
    assert saved and all(torch.equal(state[name], tensor) for name, tensor in saved.items())
