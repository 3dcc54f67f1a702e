# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""NPRewardTrainer under DeepSpeed ZeRO-3: `accelerate launch`, 2 CPU processes, then load and score in one process.

ZeRO-3 partitions the base model at load (`zero3_init_flag`), so the "base" context embedder, the NP modules called
outside `model.forward` and the `fssa_np.*` keys of the consolidated state dict all have to cope with partitioned
parameters. The test checks more than "it ran": ZeRO-3 over 2 processes x 2 episodes must train the same model as one
process with 4 episodes per batch, and resuming from a ZeRO-3 checkpoint must reproduce the uninterrupted run.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fssa_trl import SteerableRewardModel
from fssa_trl.modeling.np_modules import NPModules
from fssa_trl.testing_utils import style_preference_dataset

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "scripts" / "train_np_reward_tiny.py"
ACCELERATE_CONFIGS = REPO / "recipes" / "accelerate_configs"
# A fresh machine JIT-compiles DeepSpeed's shared-memory communication op on the first CPU launch (about 2.5 min on 2
# cores, cached in ~/.cache/torch_extensions afterwards); a warm run takes about 30 s.
TIMEOUT = 600
# Attention aggregation: nn.MultiheadAttention reads out_proj.weight without calling out_proj, and a process whose
# batch held only 0-shot episodes skipped the attention; both broke ZeRO-3 (fixed in NPTrainerMixin._np_finish_init
# and NPLatentEncoder.aggregate).
TRAIN_ARGS = ["--aggregation", "attention"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(command: list[str]) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"


def launch_zero3(output_dir: Path, *args: str) -> None:
    port = str(free_port())
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
    command += [str(ACCELERATE_CONFIGS / "zero3_cpu.yaml"), "--main_process_port", port, str(SCRIPT)]
    # `--use_cpu true`: the config's `use_cpu: true` is not passed on by accelerate's DeepSpeed launcher, and without
    # it each process takes itself for the only (and main) one. Persistence threshold 0: by default ZeRO-3 keeps every
    # parameter under 1e5 elements whole on every process (all of the tiny model), so nothing would be partitioned.
    command += ["--output_dir", str(output_dir), "--use_cpu", "true", "--zero3_param_persistence_threshold", "0"]
    run([*command, *TRAIN_ARGS, *args])


def tensors(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {name: load_file(path / name) for name in ("fssa_np.safetensors", "adapter_model.safetensors")}


def assert_same_weights(actual: Path, expected: Path, atol: float) -> None:
    for name, weights in tensors(expected).items():
        trained = tensors(actual)[name]
        assert trained.keys() == weights.keys(), name
        for key, value in weights.items():
            torch.testing.assert_close(trained[key], value, atol=atol, rtol=1e-3, msg=f"{name}: {key}")


@pytest.fixture(scope="module")
def zero3_run(tmp_path_factory):
    """One ZeRO-3 run (checkpoint at step 2 of 4) and the same training in one process with the same global batch."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install fssa_trl[deepspeed])")
    root = tmp_path_factory.mktemp("zero3")
    launch_zero3(root / "zero3", "--save_strategy", "steps", "--save_steps", "2")
    single = [sys.executable, str(SCRIPT), "--output_dir", str(root / "single"), "--use_cpu", "true", *TRAIN_ARGS]
    run([*single, "--per_device_train_batch_size", "4", "--eval_pairs_per_user", "0"])
    return root


def test_accelerate_recipes_load():
    names = {path.name for path in ACCELERATE_CONFIGS.glob("*.yaml")}
    assert {"zero2.yaml", "zero3.yaml", "multi_gpu.yaml", "zero3_cpu.yaml"} <= names
    from accelerate.commands.config.config_args import load_config_from_file

    for name in sorted(names):  # raises on a key this accelerate does not know
        load_config_from_file(str(ACCELERATE_CONFIGS / name))
    config = load_config_from_file(str(ACCELERATE_CONFIGS / "zero3_cpu.yaml"))
    assert (config.distributed_type, config.use_cpu, config.num_processes) == ("DEEPSPEED", True, 2)
    assert config.deepspeed_config["zero_stage"] == 3 and config.mixed_precision == "no"


def test_np_reward_zero3_cpu(zero3_run):
    output_dir = zero3_run / "zero3"
    info = json.loads((output_dir / "run_info.json").read_text())
    assert (info["distributed_type"], info["num_processes"], info["zero_stage"]) == ("DistributedType.DEEPSPEED", 2, 3)
    assert info["global_step"] == 4 and 0 <= info["eval_metrics"]["eval_accuracy_unseen"] <= 1
    for name in ("fssa_config.json", "fssa_np.safetensors", "adapter_model.safetensors"):
        assert (output_dir / name).is_file(), name

    # The hypernetwork's zero-initialised output layer (gates = 1 at init) was trained and saved.
    config = json.loads((output_dir / "fssa_config.json").read_text())
    fresh = NPModules(**config["np_modules"]).state_dict()
    trained = load_file(output_dir / "fssa_np.safetensors")
    assert trained.keys() == fresh.keys()
    zero_init = [k for k, v in fresh.items() if k.startswith("hypernetwork.") and not v.any()]
    assert zero_init and all(trained[k].any() for k in zero_init)

    # ZeRO-3 trained exactly what one process trains on the same global batches (NP modules included).
    single = json.loads((zero3_run / "single" / "run_info.json").read_text())
    assert info["train_losses"] == pytest.approx(single["train_losses"], abs=1e-4)
    assert_same_weights(output_dir, zero3_run / "single", atol=1e-4)

    # The saved model loads in one process (base found by path) and scores with and without a context.
    model = SteerableRewardModel.from_pretrained(str(output_dir))
    pairs = style_preference_dataset(6, seed=3).filter(lambda row: row["user_id"] == "A")
    context = [{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in pairs.select(range(3))]
    prompts = pairs["prompt"][3:] * 2
    responses = pairs["chosen"][3:] + pairs["rejected"][3:]
    with_context = model.score(prompts, responses, context=context)
    zero_shot = model.score(prompts, responses, context=[])
    for scores in (with_context, zero_shot):
        assert scores.shape == (6,) and scores.dtype == torch.float32 and torch.isfinite(scores).all()
    assert not torch.equal(model.latent(context), model.latent([]))
    reference = SteerableRewardModel.from_pretrained(str(zero3_run / "single"))
    torch.testing.assert_close(with_context, reference.score(prompts, responses, context=context), atol=1e-4, rtol=0)


def test_np_reward_zero3_cpu_resume(zero3_run):
    """Trainer resumes ZeRO-3 through `deepspeed_load_checkpoint`, not `_load_from_checkpoint`: the NP modules must
    come back too (their fp32 partitions live in the DeepSpeed checkpoint)."""
    checkpoint = zero3_run / "zero3" / "checkpoint-2"
    assert (checkpoint / "fssa_np.safetensors").is_file()
    resumed = zero3_run / "resumed"
    launch_zero3(resumed, "--resume_from_checkpoint", str(checkpoint), "--eval_pairs_per_user", "0")
    info = json.loads((resumed / "run_info.json").read_text())
    uninterrupted = json.loads((zero3_run / "zero3" / "run_info.json").read_text())
    assert info["global_step"] == 4
    assert info["train_losses"][-2:] == pytest.approx(uninterrupted["train_losses"][-2:], abs=1e-6)
    assert_same_weights(resumed, zero3_run / "zero3", atol=1e-6)
