# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Step time and peak memory of `NPRewardTrainer` against TRL's plain `RewardTrainer`, side by side in one process.

Both trainers get the same randomly initialised `Qwen2ForSequenceClassification` (built twice from one seed), the
same `LoraConfig(task_type="SEQ_CLS", r=16)` on all attention and MLP projections, the same optimizer settings and
batches of `--pairs` target pairs whose chosen and rejected sequences are all exactly `--seq_len` tokens long:

- `plain`: `RewardTrainer` with `per_device_train_batch_size=P`;
- `np`: `NPRewardTrainer` with one episode per device batch, `num_targets=P` and `min_context=max_context=10`
  (10 context pairs every step), `context_embedding="precomputed"`. In real use the context embeddings are
  computed once and cached before training, so precomputed columns are the steady-state per-step cost;
- `np-base` (optional): `context_embedding="base"`, the same per-step work once the base model has embedded every
  text at construction; only the init time differs, and it is reported separately.

Measurement. Each trainer runs `trainer.train()` for `--rounds` rounds of `--steps / --rounds` steps (the optimizer
persists across rounds, so only the first round has `--warmup` unmeasured steps), the trainers alternating and their
order reversed every round so that machine noise falls evenly on them. A `TrainerCallback` times every optimizer
step from `on_step_begin` to `on_step_end` (forward, backward, clipping, optimizer step) and the "cycle" from one
`on_step_end` to the next, which adds fetching and collating the batch. Medians over all measured steps are
reported. On CPU the clock is the process's CPU time (`time.process_time`) with one intra-op thread: on a shared
machine wall time mostly measures the other processes (with 2 threads on 2 busy cores, steps ran 5-10x slower and
varied 2x), while CPU time is what the step costs; wall time is recorded too. On CUDA the clock is wall time after
`torch.cuda.synchronize()`.

Peak memory of a step (MB = 2**20 bytes) is `static + step_peak`: `static` is the bytes of the trainer's own
parameters, buffers and optimizer state (unique storages; gradients are `None` between steps), `step_peak` the
largest amount allocated above the level at `on_step_begin` during the step:

- CUDA: `torch.cuda.max_memory_allocated()` after `torch.cuda.reset_peak_memory_stats()` at step begin, minus
  the allocated bytes at step begin (so the other trainers' weights in the process do not count);
- CPU: there is no allocator peak counter. `--memory_steps` extra steps run under
  `torch.profiler.profile(profile_memory=True)`, whose `[memory]` events record every allocation and free of
  PyTorch's CPU allocator with its size and time; `step_peak` is the maximum of their running sum in time order.
  A block allocated before the step and freed during it has no recorded size, so the figure can only overstate
  the peak, by at most such blocks (the previous step's batch and loss: kilobytes). Profiled steps are not timed.
  On CUDA the same method runs on `--memory_steps` extra steps and is stored beside the allocator's counter
  (`memory_method_check` in the JSON), which checks it.

Gradient checkpointing is measured on (TRL's default, non-reentrant: `NPRewardTrainer` rejects reentrant) and
off. Run (about 15 minutes on 2 busy CPU cores; the GPU preset should take 1-2 minutes on one H100)::

    python -m benchmarks.speed
    python -m benchmarks.speed --preset gpu-0.5b --steps 20   # Qwen2-0.5B shape, bf16, CUDA

It prints a table with the NP/plain ratios and writes `benchmarks/results/speed_<device>.json`. Nothing is
downloaded: the model is a random init of the preset's shape and the tokenizer a word-level one built in code.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import statistics
import tempfile
import time
from typing import Any

import datasets
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import PrinterCallback
from trl import RewardConfig, RewardTrainer

from fssa_trl import NPRewardConfig, NPRewardTrainer

from .harness import (
    LORA_TARGETS,
    QWEN2_05B,
    StepMeter,
    markdown_table,
    random_qwen2,
    random_words,
    run_stamp,
    training_arguments,
    word_tokenizer,
    write_json,
)

PRESETS = {
    # Small enough for a 2-core CPU; the LoRA, batch and sequence layout are those of the GPU preset.
    "cpu": {
        "hidden_size": 256,
        "num_layers": 4,
        "num_heads": 4,
        "num_kv_heads": 2,
        "intermediate_size": 1024,
        "vocab_size": 8192,
        "seq_len": 128,
        "pairs": 16,
        "bf16": False,
        "steps": 32,
        "rounds": 8,
        "warmup": 1,
        "threads": 1,
    },
    # The shape of Qwen/Qwen2-0.5B, randomly initialised.
    "gpu-0.5b": {
        **QWEN2_05B,
        "seq_len": 256,
        "pairs": 16,
        "bf16": True,
        "steps": 20,
        "rounds": 4,
        "warmup": 2,
        "threads": None,
    },
}
GOAL = 1.10
LABELS = {
    "plain": "RewardTrainer (TRL)",
    "np": "NPRewardTrainer, precomputed",
    "np-base": "NPRewardTrainer, base",
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "vocab_size"):
        parser.add_argument(f"--{name}", type=int, help="Override the preset's model shape.")
    parser.add_argument("--seq_len", type=int, help="Tokens of every chosen and rejected sequence (with EOS).")
    parser.add_argument("--pairs", type=int, help="Target pairs per optimizer step (P).")
    parser.add_argument("--context", type=int, default=10, help="Context pairs of every NP episode.")
    parser.add_argument("--steps", type=int, help="Measured steps per trainer, over all rounds.")
    parser.add_argument("--rounds", type=int, help="Alternating rounds (one train() call per trainer each).")
    parser.add_argument("--warmup", type=int, help="Unmeasured steps at the start of the first round.")
    parser.add_argument(
        "--clock",
        choices=["auto", "cpu", "wall"],
        default="auto",
        help="Clock of the step times: process CPU time ('auto' on CPU: robust to other processes on a shared "
        "machine) or wall time ('auto' on CUDA, after synchronize). Wall time is always recorded too.",
    )
    parser.add_argument("--memory_steps", type=int, default=1, help="Profiled steps for CPU peak memory.")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (CPU preset: 1, see the docstring).")
    parser.add_argument("--gradient_checkpointing", choices=["on", "off", "both"], default="both")
    parser.add_argument("--np_base", action=argparse.BooleanOptionalAction, default=True, help="Add the np-base row.")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, help="bf16 weights + autocast (GPU).")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="JSON path (default: benchmarks/results/speed_<device>.json).")
    args = parser.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.clock == "auto":
        args.clock = "cpu" if args.device == "cpu" else "wall"
    if args.warmup < 1:
        parser.error("--warmup must be >= 1: the optimizer state, part of the static memory, exists after one step.")
    if args.pairs < args.context:
        parser.error(f"--pairs ({args.pairs}) must be >= --context ({args.context}): contexts are drawn from targets.")
    return args


# --------------------------------------------------------------------------------------------------- inputs
def preference_dataset(num_pairs: int, seq_len: int, vocab_size: int, dim: int, seed: int) -> Dataset:
    """`num_pairs` pairs of 4 users, every response `seq_len - 1` words (TRL appends EOS), with random precomputed
    embeddings of dimension `dim` for the NP trainer's context."""
    generator = torch.Generator().manual_seed(seed)
    chosen, rejected = (random_words(num_pairs, seq_len - 1, vocab_size, generator) for _ in range(2))
    embeddings = torch.randn(2, num_pairs, dim, generator=generator)
    return Dataset.from_dict(
        {
            "chosen": chosen,
            "rejected": rejected,
            "user_id": [f"user{i % 4}" for i in range(num_pairs)],
            "chosen_embedding": embeddings[0].tolist(),
            "rejected_embedding": embeddings[1].tolist(),
        }
    )


def build_trainer(kind: str, args, dataset: Dataset, tokenizer, device, gradient_checkpointing: bool, workdir: str):
    """One trainer and the seconds its construction took (dataset preparation, context embedding, LoRA)."""
    common = training_arguments(args, device, os.path.join(workdir, kind), args.seq_len, gradient_checkpointing)
    model = random_qwen2(args, device, "reward", args.seq_len)
    peft_config = LoraConfig(task_type="SEQ_CLS", r=16, lora_alpha=32, target_modules=LORA_TARGETS)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    if kind == "plain":
        config = RewardConfig(per_device_train_batch_size=args.pairs, **common)
        train = dataset.remove_columns(["user_id", "chosen_embedding", "rejected_embedding"])
        trainer = RewardTrainer(
            model=model, args=config, train_dataset=train, processing_class=tokenizer, peft_config=peft_config
        )
    else:
        config = NPRewardConfig(
            per_device_train_batch_size=1,
            num_targets=args.pairs,
            min_context=args.context,
            max_context=args.context,
            context_embedding="precomputed" if kind == "np" else "base",
            context_max_length=args.seq_len,
            **common,
        )
        train = dataset if kind == "np" else dataset.remove_columns(["chosen_embedding", "rejected_embedding"])
        trainer = NPRewardTrainer(
            model=model, args=config, train_dataset=train, processing_class=tokenizer, peft_config=peft_config
        )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    init_s = time.perf_counter() - start
    check_lengths(trainer, kind, args.seq_len)
    return trainer, init_s


def check_lengths(trainer, kind: str, seq_len: int) -> None:
    """Every chosen and rejected sequence either trainer will see is exactly `seq_len` tokens."""
    rows = trainer.train_dataset
    sequences = [*rows["chosen_ids"], *rows["rejected_ids"]]
    if kind != "plain":  # episodes: one list of target sequences per row
        sequences = [seq for episode in sequences for seq in episode]
    lengths = {len(seq) for seq in sequences}
    if lengths != {seq_len}:
        raise RuntimeError(f"{kind}: sequence lengths {sorted(lengths)} != {seq_len}")


# -------------------------------------------------------------------------------------------------- running
def summary(meter: StepMeter, init_s: float) -> dict[str, Any]:
    peak = max(meter.step_peak)
    return {
        "init_s": init_s,
        "step_ms_median": statistics.median(meter.step_ms),
        "step_ms_min": min(meter.step_ms),
        "step_ms_max": max(meter.step_ms),
        "cycle_ms_median": statistics.median(meter.cycle_ms),
        "step_wall_ms_median": statistics.median(meter.step_wall_ms),
        "static_mb": meter.static / 2**20,
        "step_peak_mb": peak / 2**20,
        "peak_mb": (meter.static + peak) / 2**20,
        "step_ms": meter.step_ms,
        "cycle_ms": meter.cycle_ms,
        "step_wall_ms": meter.step_wall_ms,
        "step_peak_bytes": meter.step_peak,
        "memory_method_check": meter.memory_check,
    }


def run_setting(args, dataset, tokenizer, device, gradient_checkpointing: bool) -> dict[str, Any]:
    kinds = ["plain", "np", "np-base"] if args.np_base else ["plain", "np"]
    per_round = -(-args.steps // args.rounds)
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        # Build a tiny pair of trainers first so that one-off costs (lazy imports, Accelerate state) do not land in
        # the init time of whichever real trainer comes first.
        tiny = argparse.Namespace(**{**vars(args), "hidden_size": 32, "num_layers": 1, "intermediate_size": 64})
        tiny.num_heads, tiny.num_kv_heads = 4, 2
        for kind in ("plain", "np"):
            build_trainer(kind, tiny, dataset, tokenizer, device, gradient_checkpointing, workdir)
        gc.collect()
        trainers = {}
        for kind in kinds:
            trainer, init_s = build_trainer(kind, args, dataset, tokenizer, device, gradient_checkpointing, workdir)
            meter = StepMeter(device, time.process_time if args.clock == "cpu" else time.perf_counter)
            trainer.remove_callback(PrinterCallback)  # no log line at the end of every round
            trainer.add_callback(meter)
            trainers[kind] = (trainer, meter, init_s)
            print(f"  built {kind:8s} in {init_s:6.2f} s", flush=True)
        for round_index in range(args.rounds):
            order = kinds if round_index % 2 == 0 else kinds[::-1]
            for kind in order:
                trainer, meter, _ = trainers[kind]
                # The optimizer persists across rounds: only the first round needs warm-up steps.
                warmup, profiled = (args.warmup, args.memory_steps) if round_index == 0 else (0, 0)
                meter.plan(warmup, per_round, profiled)
                trainer.args.max_steps = warmup + per_round + profiled
                trainer.train()
            print(f"  round {round_index + 1}/{args.rounds} done", flush=True)
        for kind in kinds:
            trainer, meter, init_s = trainers[kind]
            results[kind] = summary(meter, init_s)
            if kind != "plain" and "accuracy_unseen" not in trainer.state.log_history[-1]:
                raise RuntimeError(f"{kind}: the NP loss path did not run")
        for kind in kinds:
            baseline = results["plain"]
            for key in ("step_ms_median", "cycle_ms_median", "step_wall_ms_median", "peak_mb", "step_peak_mb"):
                results[kind][f"ratio_{key}"] = results[kind][key] / baseline[key]
        trainers.clear()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return results


def format_table(setting: str, clock: str, results: dict[str, Any]) -> str:
    columns = [
        (f"trainer ({setting})", "<44"),
        ("init s", ">6"),
        (f"step ms, {clock} (min-max)", ">24"),
        (f"cycle ms, {clock}", ">14"),
        ("step ms, wall", ">13"),
        ("peak MB", ">7"),
        ("step peak MB", ">12"),
        ("step x", ">6"),
        ("cycle x", ">7"),
        ("wall x", ">6"),
        ("peak x", ">6"),
        ("step peak x", ">11"),
    ]
    rows = [
        [
            LABELS[kind],
            f"{r['init_s']:.2f}",
            f"{r['step_ms_median']:.1f} ({r['step_ms_min']:.0f}-{r['step_ms_max']:.0f})",
            f"{r['cycle_ms_median']:.1f}",
            f"{r['step_wall_ms_median']:.1f}",
            f"{r['peak_mb']:.1f}",
            f"{r['step_peak_mb']:.1f}",
            f"{r['ratio_step_ms_median']:.3f}",
            f"{r['ratio_cycle_ms_median']:.3f}",
            f"{r['ratio_step_wall_ms_median']:.3f}",
            f"{r['ratio_peak_mb']:.3f}",
            f"{r['ratio_step_peak_mb']:.3f}",
        ]
        for kind, r in results.items()
    ]
    return markdown_table(columns, rows)


def memory_check_lines(results: dict[str, Any]) -> str:
    """CUDA only: the CPU method (profiler events) beside `torch.cuda.max_memory_allocated` on the same steps."""
    lines = []
    for kind, r in results.items():
        for check in r["memory_method_check"]:
            if "profiler_bytes" in check:
                lines.append(
                    f"memory method check, {LABELS[kind]}: profiler {check['profiler_bytes'] / 2**20:.1f} MB, "
                    f"max_memory_allocated {check['max_memory_allocated_bytes'] / 2**20:.1f} MB"
                )
            else:
                lines.append(f"memory method check, {LABELS[kind]}: {check.get('error')}")
    return "".join("\n" + line for line in lines)


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    logging.getLogger("fssa_trl").setLevel(logging.WARNING)
    device = torch.device(args.device)
    datasets.disable_progress_bars()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    tokenizer = word_tokenizer(args.vocab_size)
    per_round = -(-args.steps // args.rounds)
    steps_per_round = args.warmup + per_round + args.memory_steps
    dataset = preference_dataset(steps_per_round * args.pairs, args.seq_len, args.vocab_size, args.hidden_size, 0)
    settings = {"on": [True], "off": [False], "both": [True, False]}[args.gradient_checkpointing]
    report = {
        **run_stamp("speed", device, args),
        "notes": (
            "np rows use context embeddings cached before training (precomputed columns, or the base model at "
            "construction for np-base): their per-step cost is the steady state. Ratios are NP / plain RewardTrainer."
        ),
        "results": {},
    }
    print(
        f"Qwen2 random init: hidden {args.hidden_size}, {args.num_layers} layers, vocab {args.vocab_size}; "
        f"{args.pairs} target pairs/step of {args.seq_len} tokens; NP context {args.context} pairs; "
        f"{'bf16' if args.bf16 else 'fp32'} on {device}; {args.steps} measured steps/trainer in {args.rounds} rounds",
        flush=True,
    )
    tables = []
    for gradient_checkpointing in settings:
        setting = "gradient checkpointing " + ("on" if gradient_checkpointing else "off")
        print(f"{setting}:", flush=True)
        results = run_setting(args, dataset, tokenizer, device, gradient_checkpointing)
        report["results"][setting] = results
        tables.append(format_table(setting, args.clock, results) + memory_check_lines(results))
    report["total_s"] = time.perf_counter() - started
    print()
    print("\n\n".join(tables))
    print(
        "\nNP rows use context embeddings cached before training (their steady-state per-step cost); np-base embeds "
        "every text with the base model at construction (init s).\nstep: on_step_begin -> on_step_end (forward, "
        "backward, optimizer); cycle: on_step_end -> on_step_end (adds batch fetch + collation); peak = static "
        "(params, buffers, optimizer state) + step peak.\n"
        f"Goals: step x <= {GOAL:.2f}, peak x <= {GOAL:.2f}. Total {report['total_s']:.0f} s."
    )
    output = args.output or os.path.join(os.path.dirname(__file__), "results", f"speed_{device.type}.json")
    write_json(report, output)
    print(f"Wrote {output}")
    return report


if __name__ == "__main__":
    main()
