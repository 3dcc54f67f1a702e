# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""NPRewardTrainer and NPDPOTrainer under `accelerate launch` with 2 CPU processes: DDP, DeepSpeed ZeRO-2 and ZeRO-3
(the CPU variants of `recipes/accelerate_configs/`) and FSDP2 (`fsdp2.yaml` with a stand-in for GPUs, see
`FSDP2_ON_CPU`), then load and score (and generate) in one process.

The tests check more than "it ran": 2 processes x 2 episodes per batch must train the same model as one process with
4 episodes per batch (LoRA weights and NP modules), resuming from a checkpoint must reproduce the uninterrupted run,
and the saved model must score as the single-process one does. ZeRO-3 and FSDP2 shard the model, so the NP modules,
which run outside `model.forward`, and the `fssa_np.*` keys of the gathered state dict have to cope with sharded
parameters; ZeRO-3 also partitions the base model at load (`zero3_init_flag`), which the "base" context embedder
reads.

Each setup launches once per trainer (training with a checkpoint at step 2, cached for the module), and once more
per trainer to resume; the single-process references are shared by all setups.
"""

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fssa_trl import SteerablePolicy, SteerableRewardModel
from fssa_trl.modeling import NPModules, SteerableConfig
from fssa_trl.testing_utils import style_preference_dataset

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "tests" / "scripts"
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
# NP-DPO evaluates once after training, one episode per batch: per user, one episode of 4 targets at context 0 and
# two of 2 at context 2, so the two processes' shards differ in pairs (see `HELDOUT_ARGS`).
DPO_EVAL_ARGS = ["--eval_pairs_per_user", "4", "--per_device_eval_batch_size", "1"]
CHECKPOINT_STEP = 2


@dataclass(frozen=True)
class TinyScript:
    """A tiny training script of tests/scripts/ and what its runs save."""

    script: Path
    args: tuple[str, ...]
    steps: int  # the scripts' `max_steps`
    model_type: str
    model_class: type


TRAINERS = {
    "reward": TinyScript(
        SCRIPTS / "train_np_reward_tiny.py", tuple(HELDOUT_ARGS), 4, "np_lora_reward_model", SteerableRewardModel
    ),
    "dpo": TinyScript(SCRIPTS / "train_np_dpo_tiny.py", tuple(DPO_EVAL_ARGS), 3, "np_dpo_policy", SteerablePolicy),
}


@dataclass(frozen=True)
class Setup:
    """A distributed setup: an accelerate config and what `run_info.json` must then say."""

    config: str  # in recipes/accelerate_configs/
    distributed_type: str
    zero_stage: int | None
    atol: float  # against one process with the same global batch
    args: tuple[str, ...] = ()  # for the training script
    launch_options: tuple[str, ...] = ()  # for `accelerate launch`: a GPU recipe's overrides


SETUPS = {
    "ddp": Setup("multi_gpu_cpu.yaml", "DistributedType.MULTI_CPU", None, atol=1e-5),
    "zero2": Setup("zero2_cpu.yaml", "DistributedType.DEEPSPEED", 2, atol=1e-5),
    # Persistence threshold 0: by default ZeRO-3 keeps every parameter under 1e5 elements whole on every process (all
    # of the tiny model), so nothing would be partitioned.
    "zero3": Setup(
        "zero3_cpu.yaml", "DistributedType.DEEPSPEED", 3, atol=1e-4, args=("--zero3_param_persistence_threshold", "0")
    ),
    # The FSDP2 recipe itself on 2 CPU processes, with `--fsdp_on_cpu`: accelerate runs FSDP on GPUs only (see
    # `FSDP2_ON_CPU`), so the tiny scripts set up the accelerator state as accelerate does on GPUs
    # (`tiny_launch.force_fsdp_on_cpu`); torch's `fully_shard` shards over gloo.
    "fsdp2": Setup(
        "fsdp2.yaml",
        "DistributedType.FSDP",
        None,
        atol=1e-5,
        args=("--fsdp_on_cpu", "true"),
        launch_options=("--num_processes", "2", "--mixed_precision", "no"),
    ),
}
# (setup, trainer) pairs launched: both trainers under every setup.
LAUNCHED = [(setup, trainer) for setup in SETUPS for trainer in TRAINERS]
RESUMED = [(setup, trainer) for setup, trainer in LAUNCHED if setup != "ddp"]  # DDP checkpoints as one process does


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(command: list[str]) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"


def accelerate_launch(config: str, *options: str) -> list[str]:
    """`accelerate launch` with a config of recipes/accelerate_configs/ and a free port, up to the script."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIGS / config)]
    return [*command, *options, "--main_process_port", str(free_port())]


def launch(setup: Setup, trainer: TinyScript, output_dir: Path, *args: str) -> None:
    """`accelerate launch` of 2 CPU processes. `--use_cpu true`: the CPU configs' `use_cpu: true` is not passed on by
    accelerate's DeepSpeed and torchrun launchers, and without it each process takes itself for the only (and main)
    one."""
    command = [*accelerate_launch(setup.config, *setup.launch_options), str(trainer.script)]
    command += ["--output_dir", str(output_dir)]
    run([*command, "--use_cpu", "true", *setup.args, *TRAIN_ARGS, *trainer.args, *args])


def run_single(trainer: TinyScript, output_dir: Path) -> None:
    """The same training in one process; `--per_device_train_batch_size 4` matches 2 processes x 2."""
    command = [sys.executable, str(trainer.script), "--output_dir", str(output_dir), "--use_cpu", "true"]
    run([*command, "--per_device_train_batch_size", "4", *TRAIN_ARGS, *trainer.args])


class Runs:
    """The module's runs, each launched on first use: `single(trainer)` (one process) and `launched(setup, trainer)`
    (2 processes, checkpoint at step 2)."""

    def __init__(self, root: Path):
        self.root = root

    def single(self, trainer: str) -> Path:
        output_dir = self.root / f"single-{trainer}"
        if not output_dir.exists():
            run_single(TRAINERS[trainer], output_dir)
        return output_dir

    def launched(self, setup: str, trainer: str) -> Path:
        if setup in ("zero2", "zero3"):
            pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install fssa_trl[deepspeed])")
        output_dir = self.root / f"{setup}-{trainer}"
        if not output_dir.exists():
            save = ["--save_strategy", "steps", "--save_steps", str(CHECKPOINT_STEP)]
            launch(SETUPS[setup], TRAINERS[trainer], output_dir, *save)
        return output_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    return Runs(tmp_path_factory.mktemp("distributed"))


def tensors(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {name: load_file(path / name) for name in ("fssa_np.safetensors", "adapter_model.safetensors")}


def assert_same_weights(actual: Path, expected: Path, atol: float) -> None:
    for name, weights in tensors(expected).items():
        trained = tensors(actual)[name]
        assert trained.keys() == weights.keys(), name
        for key, value in weights.items():
            torch.testing.assert_close(trained[key], value, atol=atol, rtol=1e-3, msg=f"{name}: {key}")


def run_info(output_dir: Path) -> dict:
    return json.loads((output_dir / "run_info.json").read_text())


def test_accelerate_recipes_load():
    names = {path.name for path in ACCELERATE_CONFIGS.glob("*.yaml")}
    recipes = {"multi_gpu.yaml", "zero2.yaml", "zero3.yaml", "zero3_offload.yaml", "fsdp2.yaml"}
    assert recipes | {setup.config for setup in SETUPS.values()} <= names
    from accelerate.commands.config.config_args import load_config_from_file

    configs = {name: load_config_from_file(str(ACCELERATE_CONFIGS / name)) for name in sorted(names)}  # unknown keys
    for setup in SETUPS.values():  # the CPU variants the tests launch: 2 CPU processes, fp32
        if setup.launch_options:
            continue
        config = configs[setup.config]
        assert (config.use_cpu, config.num_processes, config.mixed_precision) == (True, 2, "no")
        assert config.deepspeed_config.get("zero_stage") == setup.zero_stage
    offload = configs["zero3_offload.yaml"].deepspeed_config
    assert offload["zero_stage"] == 3
    assert offload["offload_optimizer_device"] == offload["offload_param_device"] == "cpu"
    fsdp = configs["fsdp2.yaml"].fsdp_config
    assert (fsdp["fsdp_version"], fsdp["fsdp_state_dict_type"]) == (2, "FULL_STATE_DICT")
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"


# ----------------------------------------------------------------------------------------- train as one process
@pytest.mark.parametrize(("setup", "trainer"), LAUNCHED)
def test_trains_as_one_process(runs, setup, trainer):
    """What ran was `setup` on 2 processes, it saved a complete model whose zero-initialised hypernetwork output layer
    (gates = 1 at init) was trained, and it trained exactly what one process trains on the same global batches (NP
    modules included)."""
    output_dir, single = runs.launched(setup, trainer), runs.single(trainer)
    expected, info = SETUPS[setup], run_info(output_dir)
    assert (info["distributed_type"], info["num_processes"]) == (expected.distributed_type, 2)
    assert info["zero_stage"] == expected.zero_stage
    assert info["fsdp_version"] == (2 if setup == "fsdp2" else None)
    assert info["global_step"] == TRAINERS[trainer].steps
    for name in ("fssa_config.json", "fssa_np.safetensors", "adapter_model.safetensors"):
        assert (output_dir / name).is_file(), name
    assert (output_dir / f"checkpoint-{CHECKPOINT_STEP}" / "fssa_np.safetensors").is_file()

    config = SteerableConfig.from_pretrained(str(output_dir))
    assert config.model_type == TRAINERS[trainer].model_type
    fresh = NPModules.from_config(config).state_dict()
    trained = load_file(output_dir / "fssa_np.safetensors")
    assert trained.keys() == fresh.keys()
    zero_init = [k for k, v in fresh.items() if k.startswith("hypernetwork.") and not v.any()]
    assert zero_init and all(trained[k].any() for k in zero_init)

    assert info["train_losses"] == pytest.approx(run_info(single)["train_losses"], abs=expected.atol)
    assert_same_weights(output_dir, single, atol=expected.atol)
    if trainer == "dpo":  # the implicit-reward accuracy gathered over processes
        assert 0 <= info["eval_metrics"]["eval_accuracy_unseen"] <= 1


def heldout_logs(output_dir: Path) -> list[list[dict]]:
    """The held-out evaluation logs (`heldout_*` and `step`) of a run, one list per process."""
    return run_info(output_dir)["heldout_logs_by_process"]


@pytest.mark.parametrize("setup", SETUPS)
def test_np_reward_heldout(runs, setup):
    """The held-out evaluation inside the training loop (`HeldoutEvaluationCallback.on_step_end`) on 2 processes: at
    every step, the same metrics on both processes, and the accuracies of the single-process run of the same training
    (the loss may differ in how a short last batch is weighted). That the evaluations leave training as it was is
    checked by `test_trains_as_one_process` (same weights as one process) and the resume test."""
    first, second = heldout_logs(runs.launched(setup, "reward"))
    assert first == second
    assert [log["step"] for log in first] == [1, 2, 3, 4]
    (single,) = heldout_logs(runs.single("reward"))
    for log, expected in zip(first, single, strict=True):
        assert {"heldout_loss", "heldout_accuracy_ctx0", "heldout_accuracy_ctx4"} <= log.keys()
        for key in ("heldout_accuracy_ctx0", "heldout_accuracy_ctx4", "heldout_accuracy_unseen"):
            assert log[key] == pytest.approx(expected[key], abs=1e-6), (log["step"], key)


# ------------------------------------------------------------------------------------------------------- resume
@pytest.mark.parametrize(("setup", "trainer"), RESUMED)
def test_resume(runs, tmp_path, setup, trainer):
    """The NP modules come back with the rest, and the resumed run ends where the uninterrupted one did. Trainer
    resumes DeepSpeed through `deepspeed_load_checkpoint`, not `_load_from_checkpoint` (the NP modules' fp32 weights,
    or ZeRO-3 partitions, live in the DeepSpeed checkpoint); FSDP through `_load_from_checkpoint`, which loads FSDP's
    own checkpoint of the trainable weights into the sharded parameters, where copying `fssa_np.safetensors` failed
    ("aten.copy_.default got mixed torch.Tensor and DTensor", fixed in `GatedLoRATrainerMixin._load_from_checkpoint`)."""
    uninterrupted = runs.launched(setup, trainer)
    resumed = tmp_path / "resumed"
    checkpoint = uninterrupted / f"checkpoint-{CHECKPOINT_STEP}"
    launch(SETUPS[setup], TRAINERS[trainer], resumed, "--resume_from_checkpoint", str(checkpoint))
    info, expected = run_info(resumed), run_info(uninterrupted)
    assert info["global_step"] == TRAINERS[trainer].steps
    resumed_steps = slice(CHECKPOINT_STEP, None)
    assert info["train_losses"][resumed_steps] == pytest.approx(expected["train_losses"][resumed_steps], abs=1e-6)
    assert_same_weights(resumed, uninterrupted, atol=1e-6)
    if trainer == "dpo":
        assert info["eval_metrics"]["eval_loss"] == pytest.approx(expected["eval_metrics"]["eval_loss"], abs=1e-6)
        return

    # Steps 1-2 come from the checkpoint, 3-4 were evaluated again. Not `heldout_num_tokens`: TRL logs its count of
    # training tokens there, which restarts from 0 on resume (`RewardTrainer._total_train_tokens` is not saved).
    def metrics(logs: list[dict]) -> list[dict]:
        return [{k: v for k, v in log.items() if k != "heldout_num_tokens"} for log in logs]

    uninterrupted_logs = metrics(heldout_logs(uninterrupted)[0])
    for process_logs in heldout_logs(resumed):
        assert [log["step"] for log in process_logs] == [1, 2, 3, 4]
        for log, uninterrupted_log in zip(metrics(process_logs), uninterrupted_logs, strict=True):
            assert log == pytest.approx(uninterrupted_log, abs=1e-6)


# --------------------------------------------------------------------------------------------------------- load
def user_a_pairs() -> tuple[list[dict], list[str], list[str]]:
    """A 3-pair context of user "A", and 3 other prompts of theirs twice with (chosen + rejected) responses."""
    pairs = style_preference_dataset(6, seed=3).filter(lambda row: row["user_id"] == "A")
    context = [{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in pairs.select(range(3))]
    return context, pairs["prompt"][3:] * 2, pairs["chosen"][3:] + pairs["rejected"][3:]


@pytest.mark.parametrize(("setup", "trainer"), LAUNCHED)
def test_load_and_score(runs, setup, trainer):
    """The saved model loads in one process (base found by path), scores with and without a context as the
    single-process model does, and a policy generates."""
    model_class = TRAINERS[trainer].model_class
    model = model_class.from_pretrained(str(runs.launched(setup, trainer)))
    reference = model_class.from_pretrained(str(runs.single(trainer)))
    context, prompts, responses = user_a_pairs()
    with_context = model.score(prompts, responses, context=context)
    zero_shot = model.score(prompts, responses, context=[])
    for scores in (with_context, zero_shot):
        assert scores.shape == (len(prompts),) and scores.dtype == torch.float32 and torch.isfinite(scores).all()
    assert not torch.equal(model.latent(context), model.latent([]))
    expected = reference.score(prompts, responses, context=context)
    torch.testing.assert_close(with_context, expected, atol=SETUPS[setup].atol, rtol=0)
    if trainer == "dpo":
        for user_context in (context, []):
            completions = model.generate(prompts[:2], context=user_context, do_sample=False, max_new_tokens=4)
            assert len(completions) == 2 and all(isinstance(text, str) for text in completions)


# ------------------------------------------------------------------------------------------------ ZeRO-3 offload
@pytest.mark.slow  # the first run builds DeepSpeed's CPU Adam op (about 4 min on 2 cores); a warm launch takes 25 s
@pytest.mark.parametrize("trainer", TRAINERS)
def test_zero3_offload(runs, tmp_path, trainer):
    """`zero3_offload.yaml` (optimizer state and parameters offloaded to CPU RAM, DeepSpeed's CPU Adam) on 2 CPU
    processes: trains what one process trains."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install fssa_trl[deepspeed])")
    spec, threshold = TRAINERS[trainer], SETUPS["zero3"].args
    command = accelerate_launch("zero3_offload.yaml", "--num_processes", "2", "--mixed_precision", "no")
    command += [str(spec.script), "--output_dir", str(tmp_path), "--use_cpu", "true"]
    run([*command, *threshold, *TRAIN_ARGS, *spec.args])
    info = run_info(tmp_path)
    assert (info["zero_stage"], info["zero_offload"]) == (3, {"optimizer": "cpu", "param": "cpu"})
    assert_same_weights(tmp_path, runs.single(trainer), atol=1e-4)


# -------------------------------------------------------------------------------------------------------- FSDP2
# Why FSDP2 runs on CPU only through `--fsdp_on_cpu` (accelerate 1.15, torch 2.13). torch itself shards on CPU:
# `fully_shard` over a gloo group trains and gathers a full state dict. But accelerate turns FSDP on only for
# GPU-family process groups (`AcceleratorState.__init__`: the FSDP branch is under `distributed_type in [MULTI_GPU,
# MULTI_NPU, ...]`), and a CPU group is MULTI_CPU: with `--use_cpu true` the FSDP plugin is dropped without a word and
# the model is wrapped in DDP (`test_fsdp2_needs_gpus` checks this); without it, on a machine without GPU, each
# process runs alone (`distributed_type` NO, 1 process).
FSDP2_ON_CPU = (
    "FSDP2 needs 2 GPUs: accelerate 1.15 enables FSDP only for GPU-family process groups; on CPU "
    "(`--use_cpu true`, gloo) it silently drops the FSDP plugin and runs DDP (DistributedType.MULTI_CPU)"
)
FSDP_PROBE = """
import torch
from accelerate import Accelerator, FullyShardedDataParallelPlugin

accelerator = Accelerator(cpu=True, fsdp_plugin=FullyShardedDataParallelPlugin(fsdp_version=2))
print(accelerator.distributed_type, type(accelerator.prepare(torch.nn.Linear(2, 2))).__name__)
"""


def test_fsdp2_bf16(runs, tmp_path):
    """`fsdp2.yaml` with its own mixed precision (bf16): FSDP2 gathers the NP modules' weights in bf16
    (`MixedPrecisionPolicy.param_dtype`), and their fp32 inputs failed ("mat1 and mat2 must have the same dtype, but
    got Float and BFloat16"; fixed in `GatedLoRATrainerMixin._np_fsdp2_gather_root`). Trains as fp32 does, up to bf16
    rounding, and saves fp32 weights (FSDP2 keeps fp32 master weights)."""
    spec, setup = TRAINERS["reward"], SETUPS["fsdp2"]
    command = [*accelerate_launch(setup.config, "--num_processes", "2"), str(spec.script), "--output_dir"]
    run([*command, str(tmp_path), "--use_cpu", "true", "--bf16", "true", *setup.args, *TRAIN_ARGS, *spec.args])
    info, single = run_info(tmp_path), runs.single("reward")
    assert (info["distributed_type"], info["fsdp_version"], info["global_step"]) == ("DistributedType.FSDP", 2, 4)
    assert info["train_losses"] == pytest.approx(run_info(single)["train_losses"], abs=1e-2)
    for name, weights in tensors(single).items():
        trained = tensors(tmp_path)[name]
        assert trained.keys() == weights.keys(), name
        for key, value in trained.items():
            assert value.dtype == torch.float32, key
            torch.testing.assert_close(value, weights[key], atol=0.1, rtol=0, msg=f"{name}: {key}")


def test_fsdp2_needs_gpus():
    """The reason for `--fsdp_on_cpu` still holds: a CPU process group asked for FSDP2 gets DDP. When this fails,
    accelerate shards on CPU: drop `--fsdp_on_cpu` from the "fsdp2" setup (and `force_fsdp_on_cpu`)."""
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    env.update(MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", FSDP_PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["DistributedType.MULTI_CPU", "DistributedDataParallel"]


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason=FSDP2_ON_CPU)
@pytest.mark.parametrize("trainer", TRAINERS)
def test_fsdp2_gpus(tmp_path, trainer):
    """FSDP2 as accelerate runs it on GPUs (`fsdp2.yaml`, 2 GPUs, fp32), no stand-in: trains, saves the full state
    dict (adapter and `fssa_np.safetensors`), resumes to the uninterrupted run's weights, and the saved model loads
    and scores in one process."""
    spec = TRAINERS[trainer]
    command = accelerate_launch("fsdp2.yaml", "--num_processes", "2", "--mixed_precision", "no")
    command += [str(spec.script), *TRAIN_ARGS, *spec.args, "--output_dir"]
    save = ["--save_strategy", "steps", "--save_steps", str(CHECKPOINT_STEP)]
    run([*command, str(tmp_path / "fsdp2"), *save])
    info = run_info(tmp_path / "fsdp2")
    assert (info["distributed_type"], info["num_processes"], info["fsdp_version"]) == ("DistributedType.FSDP", 2, 2)
    assert info["global_step"] == spec.steps

    checkpoint = tmp_path / "fsdp2" / f"checkpoint-{CHECKPOINT_STEP}"
    run([*command, str(tmp_path / "resumed"), "--resume_from_checkpoint", str(checkpoint)])
    assert_same_weights(tmp_path / "resumed", tmp_path / "fsdp2", atol=1e-5)

    model = spec.model_class.from_pretrained(str(tmp_path / "fsdp2"))
    context, prompts, responses = user_a_pairs()
    scores = model.score(prompts, responses, context=context)
    assert torch.isfinite(scores).all() and not torch.equal(scores, model.score(prompts, responses, context=[]))
