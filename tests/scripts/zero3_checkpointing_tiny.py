# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Train both LoRA trainers twice each in one `accelerate launch`, without and with gradient checkpointing, so that
`tests/test_zero3_checkpointing.py` can compare the weights:

```sh
HF_HUB_OFFLINE=1 accelerate launch --config_file recipes/accelerate_configs/zero3_cpu.yaml \
    tests/scripts/zero3_checkpointing_tiny.py --output_dir /tmp/zero3-checkpointing
```

Runs, in `<output_dir>/<name>`: `reward_off`, `reward_on` ([`NPRewardTrainer`], `--gradient_checkpointing true` and
`use_reentrant` left unset), `dpo_off`, `dpo_on` ([`NPDPOTrainer`], `--gradient_checkpointing true` with
`gradient_checkpointing_kwargs={"use_reentrant": false}` given explicitly: the two ways a user asks for it). The setups
are those of `train_np_reward_tiny.py` and `train_np_dpo_tiny.py` (their parsers' defaults), with `--use_cpu true` and
ZeRO-3's persistence threshold 0, so that every parameter is partitioned (see `tiny_launch.py`).

Each run saves its model and `run_info.json` (`tiny_launch.write_run_info`), and `checkpointing.json`: the
checkpointing set-up on the model and, per process, how often the first gated LoRA layer ran inside `backward()`
(the checkpoint's recompute) and whether its gates were set then.

With `--memory`, the script instead measures what checkpointing saves under ZeRO-3 (BENCHMARKS.md, "ZeRO-3 with
gradient checkpointing"): [`NPRewardTrainer`] on the CPU model of `benchmarks/speed.py` (random-init Qwen2, hidden
256, 4 layers, intermediate 1024, vocabulary 8192; one episode of 16 target pairs of 128 tokens and 10 precomputed
context pairs per process and step, LoRA r=16 on all projections), without and with checkpointing, and writes
`<output_dir>/memory.json`: per process, the step peak of `benchmarks.harness.StepMeter` (the most the CPU allocator
held above its level at step begin, from the profiler's memory events, over one step after one warm-up step). Not
the peak RSS: both runs share the processes, whose high-water mark only grows.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from accelerate.utils import gather_object
from peft import LoraConfig
from tiny_launch import TinyArguments, prepare_base, write_run_info
from train_np_dpo_tiny import make_parser as dpo_parser
from train_np_reward_tiny import make_parser as reward_parser
from transformers.modeling_layers import GradientCheckpointingLayer

from fssa_trl import NPDPOTrainer, NPRewardConfig, NPRewardTrainer
from fssa_trl.testing_utils import style_preference_dataset, tiny_causal_lm, tiny_reward_model, word_tokenizer

REPO = Path(__file__).resolve().parents[2]
# Explicit `use_reentrant=False`: TRL would warn that it forces `True` (PEFT under ZeRO-3), and does not any more.
EXPLICIT_NON_REENTRANT = ["--gradient_checkpointing_kwargs", '{"use_reentrant": false}']
RUNS = {  # name: (trainer, gradient checkpointing flags)
    "reward_off": ("reward", ["--gradient_checkpointing", "false"]),
    "reward_on": ("reward", ["--gradient_checkpointing", "true"]),
    "dpo_off": ("dpo", ["--gradient_checkpointing", "false"]),
    "dpo_on": ("dpo", ["--gradient_checkpointing", "true", *EXPLICIT_NON_REENTRANT]),
}


def lora_config(task_type: str, r: int) -> LoraConfig:
    return LoraConfig(
        task_type=task_type, r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"]
    )


class RecomputeCounter:
    """Counts the calls of one gated LoRA layer made inside `backward()` (a checkpoint recompute), and among them
    those that found the layer's gates set."""

    def __init__(self, layer: torch.nn.Module):
        self.recomputed, self.gated = 0, 0
        self.handle = layer.register_forward_pre_hook(self)

    def __call__(self, module, args) -> None:
        if torch._C._current_graph_task_id() != -1:  # inside an autograd graph task: the backward pass
            self.recomputed += 1
            self.gated += module._fssa_gate is not None


def checkpointing_info(trainer, counter: RecomputeCounter | None) -> dict:
    """What checkpointing the model really runs, read from its decoder layers (where `Trainer` set it up)."""
    layers = [m for m in trainer.model.modules() if isinstance(m, GradientCheckpointingLayer)]
    checkpointed = [m for m in layers if m.gradient_checkpointing]
    functions = {getattr(m._gradient_checkpointing_func, "keywords", {}).get("use_reentrant") for m in checkpointed}
    info = {
        "args_use_reentrant": (trainer.args.activation_checkpointing_kwargs or {}).get("use_reentrant"),
        "decoder_layers": len(layers),
        "checkpointed_layers": len(checkpointed),
        "layers_use_reentrant": sorted(functions, key=str),
    }
    if counter is not None:
        info["recomputed_by_process"] = gather_object([counter.recomputed])  # collective
        info["gated_recomputes_by_process"] = gather_object([counter.gated])
    return info


def train(name: str, kind: str, flags: list[str], root: str, threshold: str, bases: dict):
    """One run in `<root>/<name>`: the trainer of `kind` with the tiny script's defaults and `flags`, trained, saved,
    and described in `run_info.json` and `checkpointing.json`. Returns the trainer (the last run ends it)."""
    parser = reward_parser() if kind == "reward" else dpo_parser()
    cli = ["--output_dir", os.path.join(root, name), "--use_cpu", "true", "--eval_pairs_per_user", "0", *flags]
    script_args, training_args = parser.parse_args_and_config(cli + ["--zero3_param_persistence_threshold", threshold])
    tokenizer, base_model = bases[kind]
    base_path = prepare_base(base_model, tokenizer, script_args, training_args)
    trainer_class, task_type = (NPRewardTrainer, "SEQ_CLS") if kind == "reward" else (NPDPOTrainer, "CAUSAL_LM")
    trainer = trainer_class(
        model=base_path,
        args=training_args,
        train_dataset=style_preference_dataset(script_args.pairs_per_user, seed=0),
        processing_class=tokenizer,
        peft_config=lora_config(task_type, script_args.lora_r),
    )
    counter = RecomputeCounter(trainer._modulator.layers[0][1])
    trainer.train()
    counter.handle.remove()
    trainer.save_model()
    write_run_info(trainer, {})
    info = checkpointing_info(trainer, counter)
    if trainer.accelerator.is_main_process:
        with open(os.path.join(training_args.output_dir, "checkpointing.json"), "w", encoding="utf-8") as f:
            json.dump(info, f)
    return trainer


def measure_memory(root: str) -> None:
    """`--memory`: the step peak of each process, checkpointing off and on (see the module docstring)."""
    sys.path.insert(0, str(REPO))  # the benchmarks' harness
    from benchmarks.harness import LORA_TARGETS, StepMeter, machine_facts, random_qwen2, training_arguments
    from benchmarks.harness import word_tokenizer as benchmark_tokenizer
    from benchmarks.speed import PRESETS, preference_dataset

    shape = SimpleNamespace(**PRESETS["cpu"], seed=0)
    cpu = torch.device("cpu")
    tokenizer = benchmark_tokenizer(shape.vocab_size)
    base_model = random_qwen2(shape, cpu, "reward", shape.seq_len)  # before any training arguments (prepare_base)
    dataset = preference_dataset(128, shape.seq_len, shape.vocab_size, dim=32, seed=0)  # 4 users x 32 pairs
    report = {"model": vars(shape), "machine": machine_facts(cpu), "runs": {}}
    for checkpointing in (False, True):
        name = f"reward_{'on' if checkpointing else 'off'}"
        common = training_arguments(shape, cpu, os.path.join(root, name), shape.seq_len, checkpointing)
        config = NPRewardConfig(
            per_device_train_batch_size=1,
            num_targets=shape.pairs,
            min_context=10,
            max_context=10,
            context_embedding="precomputed",
            max_steps=3,
            **common,
        )
        base_path = prepare_base(base_model, tokenizer, TinyArguments(zero3_param_persistence_threshold=0), config)
        trainer = NPRewardTrainer(
            model=base_path,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=LoraConfig(task_type="SEQ_CLS", r=16, lora_alpha=32, target_modules=LORA_TARGETS),
        )
        meter = StepMeter(cpu, time.process_time)
        meter.plan(warmup=1, timed=1, profiled=1)
        trainer.add_callback(meter)
        trainer.train()
        peaks = gather_object([max(meter.step_peak) / 2**20])  # collective
        report["runs"][name] = {"step_peak_mb_by_process": peaks, "checkpointing": checkpointing_info(trainer, None)}
        trainer.accelerator.wait_for_everyone()
        if checkpointing:
            if trainer.accelerator.is_main_process:
                with open(os.path.join(root, "memory.json"), "w", encoding="utf-8") as f:
                    json.dump(report, f, indent=2)
            trainer.accelerator.wait_for_everyone()
            trainer.end()
        del trainer
        gc.collect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--zero3_param_persistence_threshold", default="0")
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--memory", action="store_true", help="Measure memory instead (see the module docstring).")
    args = parser.parse_args()
    if args.memory:
        measure_memory(args.output_dir)
        return
    # Built before any training arguments exist (see `tiny_launch.prepare_base`).
    tokenizer = word_tokenizer()
    bases = {"reward": (tokenizer, tiny_reward_model(tokenizer)), "dpo": (tokenizer, tiny_causal_lm(tokenizer))}
    trainer = None
    for name in args.runs:
        if trainer is not None:
            trainer.accelerator.wait_for_everyone()
            del trainer
            gc.collect()
        kind, flags = RUNS[name]
        trainer = train(name, kind, flags, args.output_dir, args.zero3_param_persistence_threshold, bases)
    trainer.end()  # destroys the process group; without it a rank can abort at exit ("terminate called ...")


if __name__ == "__main__":
    main()
