# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""NPRewardTrainer and NPDPOTrainer under DeepSpeed ZeRO-3: `accelerate launch`, 2 CPU processes, then load and
score (and generate) in one process.

ZeRO-3 partitions the base model at load (`zero3_init_flag`), so the "base" context embedder, the NP modules called
outside `model.forward` and the `fssa_np.*` keys of the consolidated state dict all have to cope with partitioned
parameters. The tests check more than "it ran": ZeRO-3 over 2 processes x 2 episodes must train the same model as one
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

from fssa_trl import SteerablePolicy, SteerableRewardModel
from fssa_trl.modeling import NPModules, SteerableConfig
from fssa_trl.testing_utils import style_preference_dataset

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "tests" / "scripts"
REWARD_SCRIPT = SCRIPTS / "train_np_reward_tiny.py"
DPO_SCRIPT = SCRIPTS / "train_np_dpo_tiny.py"
ACCELERATE_CONFIGS = REPO / "recipes" / "accelerate_configs"
# A fresh machine JIT-compiles DeepSpeed's shared-memory communication op on the first CPU launch (about 2.5 min on 2
# cores, cached in ~/.cache/torch_extensions afterwards); a warm run takes about 30 s.
TIMEOUT = 600
# Attention aggregation: nn.MultiheadAttention reads out_proj.weight without calling out_proj, and a process whose
# batch held only 0-shot episodes skipped the attention; both broke ZeRO-3 (fixed in NPTrainerMixin._np_finish_init
# and NPLatentEncoder.aggregate).
TRAIN_ARGS = ["--aggregation", "attention"]
# The reward runs hold out 5 of each user's 32 pairs (`heldout_fraction`) and evaluate them at every log, inside the
# training loop. The held-out episodes have 5 targets at context 0 and 1 at context 4, so the two processes' shards of
# an evaluation batch held different numbers of pairs, and TRL's `accelerator.gather` of the rewards failed ("Received
# data size doesn't match expected size"): every process now evaluates every batch (NPTrainerMixin.get_eval_dataloader).
HELDOUT_ARGS = ["--eval_pairs_per_user", "0", "--heldout_fraction", "0.1"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(command: list[str]) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"


def launch_zero3(script: Path, output_dir: Path, *args: str) -> None:
    port = str(free_port())
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
    command += [str(ACCELERATE_CONFIGS / "zero3_cpu.yaml"), "--main_process_port", port, str(script)]
    # `--use_cpu true`: the config's `use_cpu: true` is not passed on by accelerate's DeepSpeed launcher, and without
    # it each process takes itself for the only (and main) one. Persistence threshold 0: by default ZeRO-3 keeps every
    # parameter under 1e5 elements whole on every process (all of the tiny model), so nothing would be partitioned.
    command += ["--output_dir", str(output_dir), "--use_cpu", "true", "--zero3_param_persistence_threshold", "0"]
    run([*command, *TRAIN_ARGS, *args])


def run_single(script: Path, output_dir: Path, *args: str) -> None:
    """The same training in one process; `--per_device_train_batch_size 4` matches ZeRO-3's global batch."""
    run([sys.executable, str(script), "--output_dir", str(output_dir), "--use_cpu", "true", *TRAIN_ARGS, *args])


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
    """One ZeRO-3 run (checkpoint at step 2 of 4) and the same training in one process with the same global batch,
    both evaluating held-out pairs at every step."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install fssa_trl[deepspeed])")
    root = tmp_path_factory.mktemp("zero3")
    launch_zero3(REWARD_SCRIPT, root / "zero3", "--save_strategy", "steps", "--save_steps", "2", *HELDOUT_ARGS)
    run_single(REWARD_SCRIPT, root / "single", "--per_device_train_batch_size", "4", *HELDOUT_ARGS)
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


def assert_zero3_trained_as_single(output_dir: Path, single_dir: Path, model_type: str, steps: int) -> dict:
    """What ran was ZeRO-3 on 2 processes, it saved a complete `model_type` model whose zero-initialised hypernetwork output
    layer (gates = 1 at init) was trained, and it trained exactly what one process trains on the same global batches
    (NP modules included). Returns the run's `run_info.json`."""
    info = json.loads((output_dir / "run_info.json").read_text())
    assert (info["distributed_type"], info["num_processes"], info["zero_stage"]) == ("DistributedType.DEEPSPEED", 2, 3)
    assert info["global_step"] == steps
    for name in ("fssa_config.json", "fssa_np.safetensors", "adapter_model.safetensors"):
        assert (output_dir / name).is_file(), name

    config = SteerableConfig.from_pretrained(str(output_dir))
    assert config.model_type == model_type
    fresh = NPModules.from_config(config).state_dict()
    trained = load_file(output_dir / "fssa_np.safetensors")
    assert trained.keys() == fresh.keys()
    zero_init = [k for k, v in fresh.items() if k.startswith("hypernetwork.") and not v.any()]
    assert zero_init and all(trained[k].any() for k in zero_init)

    single = json.loads((single_dir / "run_info.json").read_text())
    assert info["train_losses"] == pytest.approx(single["train_losses"], abs=1e-4)
    assert_same_weights(output_dir, single_dir, atol=1e-4)
    return info


def user_a_pairs() -> tuple[list[dict], list[str], list[str]]:
    """A 3-pair context of user "A", and 3 other prompts of theirs twice with (chosen + rejected) responses."""
    pairs = style_preference_dataset(6, seed=3).filter(lambda row: row["user_id"] == "A")
    context = [{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in pairs.select(range(3))]
    return context, pairs["prompt"][3:] * 2, pairs["chosen"][3:] + pairs["rejected"][3:]


def assert_scores(model, reference, context, prompts, responses) -> None:
    """`model.score` is finite with and without a context, and matches the single-process `reference`."""
    with_context = model.score(prompts, responses, context=context)
    zero_shot = model.score(prompts, responses, context=[])
    for scores in (with_context, zero_shot):
        assert scores.shape == (len(prompts),) and scores.dtype == torch.float32 and torch.isfinite(scores).all()
    assert not torch.equal(model.latent(context), model.latent([]))
    torch.testing.assert_close(with_context, reference.score(prompts, responses, context=context), atol=1e-4, rtol=0)


def test_np_reward_zero3_cpu(zero3_run):
    output_dir = zero3_run / "zero3"
    assert_zero3_trained_as_single(output_dir, zero3_run / "single", model_type="np_lora_reward_model", steps=4)

    # The saved model loads in one process (base found by path) and scores with and without a context.
    model = SteerableRewardModel.from_pretrained(str(output_dir))
    reference = SteerableRewardModel.from_pretrained(str(zero3_run / "single"))
    assert_scores(model, reference, *user_a_pairs())


def heldout_logs(output_dir: Path) -> list[list[dict]]:
    """The held-out evaluation logs (`heldout_*` and `step`) of a run, one list per process."""
    return json.loads((output_dir / "run_info.json").read_text())["heldout_logs_by_process"]


def test_np_reward_zero3_cpu_heldout(zero3_run):
    """The held-out evaluation inside the training loop (`HeldoutEvaluationCallback.on_step_end`) under ZeRO-3: at
    every step, the same metrics on both processes, and the accuracies of the single-process run of the same training
    (the loss may differ in how a short last batch is weighted). That the evaluations leave training as it was is
    checked by `test_np_reward_zero3_cpu` (same weights as one process) and the resume test."""
    first, second = heldout_logs(zero3_run / "zero3")
    assert first == second
    assert [log["step"] for log in first] == [1, 2, 3, 4]
    (single,) = heldout_logs(zero3_run / "single")
    for log, expected in zip(first, single, strict=True):
        assert {"heldout_loss", "heldout_accuracy_ctx0", "heldout_accuracy_ctx4"} <= log.keys()
        for key in ("heldout_accuracy_ctx0", "heldout_accuracy_ctx4", "heldout_accuracy_unseen"):
            assert log[key] == pytest.approx(expected[key], abs=1e-6), (log["step"], key)


def test_np_reward_zero3_cpu_resume(zero3_run):
    """Trainer resumes ZeRO-3 through `deepspeed_load_checkpoint`, not `_load_from_checkpoint`: the NP modules must
    come back too (their fp32 partitions live in the DeepSpeed checkpoint)."""
    checkpoint = zero3_run / "zero3" / "checkpoint-2"
    assert (checkpoint / "fssa_np.safetensors").is_file()
    resumed = zero3_run / "resumed"
    launch_zero3(REWARD_SCRIPT, resumed, "--resume_from_checkpoint", str(checkpoint), *HELDOUT_ARGS)
    info = json.loads((resumed / "run_info.json").read_text())
    uninterrupted = json.loads((zero3_run / "zero3" / "run_info.json").read_text())
    assert info["global_step"] == 4
    assert info["train_losses"][-2:] == pytest.approx(uninterrupted["train_losses"][-2:], abs=1e-6)
    assert_same_weights(resumed, zero3_run / "zero3", atol=1e-6)

    # Steps 1-2 come from the checkpoint, 3-4 were evaluated again. Not `heldout_num_tokens`: TRL logs its count of
    # training tokens there, which restarts from 0 on resume (`RewardTrainer._total_train_tokens` is not saved).
    def metrics(logs: list[dict]) -> list[dict]:
        return [{k: v for k, v in log.items() if k != "heldout_num_tokens"} for log in logs]

    expected = metrics(heldout_logs(zero3_run / "zero3")[0])
    for process_logs in heldout_logs(resumed):
        assert [log["step"] for log in process_logs] == [1, 2, 3, 4]
        for log, uninterrupted_log in zip(metrics(process_logs), expected, strict=True):
            assert log == pytest.approx(uninterrupted_log, abs=1e-6)


@pytest.fixture(scope="module")
def dpo_zero3_run(tmp_path_factory):
    """NPDPOTrainer: one ZeRO-3 run (3 steps, then an evaluation) and the same training in one process.

    One evaluation episode per batch: per user, one episode of 4 targets at context 0 and two of 2 at context 2, so
    the two processes' shards differ in pairs (see `HELDOUT_ARGS`)."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install fssa_trl[deepspeed])")
    root = tmp_path_factory.mktemp("dpo_zero3")
    launch_zero3(DPO_SCRIPT, root / "zero3", "--eval_pairs_per_user", "4", "--per_device_eval_batch_size", "1")
    run_single(DPO_SCRIPT, root / "single", "--per_device_train_batch_size", "4")
    return root


def test_np_dpo_zero3_cpu(dpo_zero3_run):
    """The policy side: TRL's DPO loss with the adapter-off reference pass, and the implicit-reward accuracy gathered
    over processes, under ZeRO-3; the saved policy then generates and scores in one process."""
    output_dir = dpo_zero3_run / "zero3"
    info = assert_zero3_trained_as_single(output_dir, dpo_zero3_run / "single", model_type="np_dpo_policy", steps=3)
    assert 0 <= info["eval_metrics"]["eval_accuracy_unseen"] <= 1

    policy = SteerablePolicy.from_pretrained(str(output_dir))
    context, prompts, responses = user_a_pairs()
    for user_context in (context, []):
        completions = policy.generate(prompts[:2], context=user_context, do_sample=False, max_new_tokens=4)
        assert len(completions) == 2 and all(isinstance(text, str) for text in completions)
    assert_scores(policy, SteerablePolicy.from_pretrained(str(dpo_zero3_run / "single")), context, prompts, responses)
