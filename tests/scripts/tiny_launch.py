# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""What the tiny training scripts (`train_np_reward_tiny.py`, `train_np_dpo_tiny.py`) share: script arguments, the
base model written to `<output_dir>/base`, ZeRO-3's persistence threshold, FSDP on CPU processes (a stand-in for
GPUs), and `run_info.json` for the tests.

Imported as a plain module: a script's own folder is first on `sys.path`, under `python` and `accelerate launch` alike.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from accelerate import PartialState
from accelerate.utils import gather_object


@dataclass
class TinyArguments:
    pairs_per_user: int = field(default=32, metadata={"help": "Preference pairs of each of the two users."})
    eval_pairs_per_user: int = field(default=12, metadata={"help": "Evaluation pairs per user (0: no eval)."})
    lora_r: int = field(default=4, metadata={"help": "LoRA rank."})
    zero3_param_persistence_threshold: int | None = field(
        default=None,
        metadata={
            "help": "DeepSpeed `stage3_param_persistence_threshold`: ZeRO-3 never partitions parameters with at most "
            "this many elements. DeepSpeed's default (1e5) keeps every parameter of the tiny model whole on every "
            "process, so set 0 to really partition them."
        },
    )
    fsdp_on_cpu: bool = field(
        default=False,
        metadata={
            "help": "Run FSDP on the CPU (gloo) processes of an FSDP launch (`--use_cpu true` too): a stand-in for GPUs "
            "in tests, see `force_fsdp_on_cpu`."
        },
    )


def prepare_base(base_model, tokenizer, script_args: TinyArguments, training_args) -> str:
    """Write the tiny base model and its tokenizer to `<output_dir>/base` (main process), apply the persistence
    threshold to the DeepSpeed config and, with `fsdp_on_cpu`, set up FSDP; returns the base path for the trainer.

    Build `base_model` before the training arguments exist: once they do, ZeRO-3's `zero.Init` partitions every model
    built, collectively, so the main process could not build one on its own.
    """
    if script_args.fsdp_on_cpu:
        force_fsdp_on_cpu()
    base_path = os.path.join(training_args.output_dir, "base")
    if training_args.process_index == 0:
        tokenizer.save_pretrained(base_path)
        base_model.save_pretrained(base_path)
    PartialState().wait_for_everyone()  # the state was set up by the training arguments

    threshold = script_args.zero3_param_persistence_threshold
    if threshold is not None and training_args.deepspeed_plugin is not None:  # the accelerate config has no such key
        zero_config = training_args.deepspeed_plugin.deepspeed_config["zero_optimization"]
        zero_config["stage3_param_persistence_threshold"] = threshold
    return base_path


def force_fsdp_on_cpu() -> None:
    """Make accelerate run FSDP on this CPU (gloo) process group; call it before the trainer creates its `Accelerator`.

    Test-only stand-in for GPUs: accelerate 1.15 turns FSDP on only for GPU-family process groups (the FSDP branch of
    `AcceleratorState.__init__`); on CPU (`--use_cpu true`) it drops the FSDP plugin and runs DDP, although torch's
    `fully_shard` runs on CPU over gloo. This wraps `AcceleratorState.__init__` to take that branch for a CPU group
    too, after accelerate's own initialisation; everything after it (accelerate's `fsdp2_prepare_model`, the
    Trainer's FSDP save and resume, the NP trainers) runs unchanged.
    """
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    if PartialState().distributed_type != DistributedType.MULTI_CPU or os.environ.get("ACCELERATE_USE_FSDP") != "true":
        raise ValueError("`--fsdp_on_cpu true` needs an FSDP accelerate config and `--use_cpu true`.")
    accelerate_init = AcceleratorState.__init__

    def init(state, *args, fsdp_plugin=None, **kwargs):
        accelerate_init(state, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and state.distributed_type == DistributedType.MULTI_CPU:
            # AcceleratorState copies PartialState's shared state whenever it is constructed: FSDP in both.
            PartialState._shared_state["distributed_type"] = state.distributed_type = DistributedType.FSDP
            if state._mixed_precision != "no":  # the rest of accelerate's FSDP branch
                fsdp_plugin.set_mixed_precision(state._mixed_precision)
            state.fsdp_plugin = fsdp_plugin

    AcceleratorState.__init__ = init


def write_run_info(trainer, eval_metrics: dict) -> None:
    """What actually ran, for the test to check: `<output_dir>/run_info.json` (main process). Call it on every
    process: it collects each process's held-out evaluation logs (metrics and step, not timings)."""
    timings = ("_runtime", "_per_second")
    heldout = [
        {k: v for k, v in log.items() if (k.startswith("heldout_") and not k.endswith(timings)) or k == "step"}
        for log in trainer.state.log_history
        if "heldout_loss" in log
    ]
    heldout_by_process = gather_object([heldout])  # collective
    if trainer.accelerator.is_main_process:
        _write_info(trainer, eval_metrics, heldout_by_process)
    # Every process waits here: a process that destroyed the process group (`trainer.end()`) while the other was still
    # finishing `gather_object` aborted at exit ("terminate called without an active exception"; once in CI).
    trainer.accelerator.wait_for_everyone()


def _write_info(trainer, eval_metrics: dict, heldout_by_process: list) -> None:
    plugin = trainer.accelerator.state.deepspeed_plugin
    info = {
        "distributed_type": str(trainer.accelerator.distributed_type),
        "num_processes": trainer.accelerator.num_processes,
        "zero_stage": None if plugin is None else plugin.zero_stage,
        "zero_offload": None if plugin is None else _offload_devices(plugin.deepspeed_config["zero_optimization"]),
        "fsdp_version": getattr(getattr(trainer.accelerator.state, "fsdp_plugin", None), "fsdp_version", None),
        "global_step": trainer.state.global_step,
        "train_losses": [log["loss"] for log in trainer.state.log_history if "loss" in log],
        "eval_metrics": eval_metrics,
        "heldout_logs_by_process": heldout_by_process,
    }
    with open(os.path.join(trainer.args.output_dir, "run_info.json"), "w", encoding="utf-8") as f:
        json.dump(info, f)


def _offload_devices(zero_config: dict) -> dict[str, str]:
    """Where ZeRO offloads the optimizer state and the parameters ("none", "cpu" or "nvme")."""
    return {key: zero_config.get(f"offload_{key}", {}).get("device", "none") for key in ("optimizer", "param")}
