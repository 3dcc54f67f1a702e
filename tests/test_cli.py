# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""The `fssa-trl` console script, run as installed: `export` writes the user's folded model (and pushes it), and
`evaluate` prints the few-shot table and saves the plot, with the numbers `evaluate_few_shot` gives in process."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from peft import LoraConfig
from safetensors.torch import load_file

from fssa_trl import NPRewardConfig, NPRewardTrainer, SteerableModel, SteerableRewardModel, evaluate_few_shot
from fssa_trl.cli import main as cli_main
from fssa_trl.testing_utils import style_preference_dataset, tiny_reward_model, word_tokenizer

# The script pip installed beside this interpreter (the venv's bin), else the one on PATH.
_BESIDE = os.path.join(os.path.dirname(sys.executable), "fssa-trl")
SCRIPT = _BESIDE if os.path.isfile(_BESIDE) else shutil.which("fssa-trl")
pytestmark = pytest.mark.skipif(SCRIPT is None, reason="the console script is not installed: pip install -e .")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A LoRA NP reward model saved by its trainer (base model on disk), and a test set in JSON Lines."""
    root = tmp_path_factory.mktemp("cli")
    tokenizer = word_tokenizer()
    tiny_reward_model(tokenizer).save_pretrained(root / "base")
    args = NPRewardConfig(
        output_dir=str(root / "model"),
        report_to="none",
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
        save_strategy="no",
        per_device_train_batch_size=4,
        learning_rate=3e-2,
        num_targets=8,
        max_context=4,
        max_steps=3,
        latent_dim=8,
        encoder_hidden_dim=16,
        seed=0,
    )
    trainer = NPRewardTrainer(
        model=str(root / "base"),
        args=args,
        train_dataset=style_preference_dataset(24, seed=0),
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    trainer.train()
    trainer.save_model()
    test = style_preference_dataset(8, seed=1)
    test.to_json(str(root / "test.jsonl"))
    return root, test


def run(*args: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([SCRIPT, *args], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_help_documents_every_flag():
    for command, flags in {
        "export": ["--model", "--context", "--user", "--output", "--merge", "--push-to-hub", "--revision", "--token"],
        "evaluate": ["--model", "--dataset", "--split", "--context-sizes", "--num-targets", "--output-dir"],
    }.items():
        text = run(command, "--help")
        for flag in flags:
            assert flag in text, (command, flag)


def test_export_writes_the_user_of_the_context_file(saved):
    root, test = saved
    out = root / "user-a"
    # A shared file of several users: --user picks A's rows.
    stdout = run(
        "export",
        "--model",
        str(root / "model"),
        "--context",
        str(root / "test.jsonl"),
        "--user",
        "A",
        "--output",
        str(out),
    )
    assert "Exported the user of 8 context pairs" in stdout
    model = SteerableRewardModel.from_pretrained(str(root / "model"))
    context = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in test if r["user_id"] == "A"]
    record = json.loads((out / "fssa_export.json").read_text())
    torch.testing.assert_close(torch.tensor(record["latent"]), model.latent(context), atol=1e-6, rtol=0)
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(os.listdir(out))
    assert not [name for name in os.listdir(out) if name.endswith((".bin", ".pt", ".pkl"))]
    assert load_file(out / "adapter_model.safetensors")


def test_export_refuses_a_user_absent_from_the_context_file(saved):
    root, _ = saved
    result = subprocess.run(
        [
            SCRIPT,
            "export",
            "--model",
            str(root / "model"),
            "--context",
            str(root / "test.jsonl"),
            "--user",
            "Z",
            "--output",
            str(root / "z"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert result.returncode != 0 and "no row with user_id == 'Z'" in result.stderr


def test_evaluate_prints_the_table_and_saves_the_plot(saved):
    root, test = saved
    out = root / "eval"
    stdout = run(
        "evaluate",
        "--model",
        str(root / "model"),
        "--dataset",
        str(root / "test.jsonl"),
        "--context-sizes",
        "0",
        "2",
        "--num-targets",
        "4",
        "--output-dir",
        str(out),
    )
    assert (out / "few_shot_accuracy.png").stat().st_size > 0
    written = json.loads((out / "few_shot_accuracy.json").read_text())
    expected = evaluate_few_shot(
        SteerableModel.from_pretrained(str(root / "model")), test, context_sizes=(0, 2), num_targets=4, name="model"
    )
    assert written == json.loads(json.dumps(expected.to_dict()))
    assert str(expected).splitlines()[-1] in stdout


def test_export_pushes_to_the_hub(saved, hub):
    root, _ = saved
    cli_main(
        [
            "export",
            "--model",
            str(root / "model"),
            "--context",
            str(root / "test.jsonl"),
            "--user",
            "B",
            "--output",
            str(root / "user-b"),
            "--push-to-hub",
            "org/user-b",
            "--private",
        ]
    )
    assert hub.files("org/user-b") == set(os.listdir(root / "user-b"))
    assert hub.named("create_repo")[0]["private"] is True


def test_export_refuses_an_empty_context_file(saved, tmp_path):
    root, _ = saved
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(SystemExit, match="holds no context pairs"):
        cli_main(["export", "--model", str(root / "model"), "--context", str(empty), "--output", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()
