# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Step time and peak memory of `NPDPOTrainer` against TRL's plain `DPOTrainer`, side by side in one process.

Both trainers get the same randomly initialised `Qwen2ForCausalLM` (by default the shape of Qwen/Qwen2-0.5B: hidden
896, 24 layers, 14 heads, 2 KV heads, intermediate 4864, vocabulary 151936, tied embeddings; bf16 weights and
`bf16=True` on CUDA), built from one seed, the same `LoraConfig(r=16, lora_alpha=32)` on all attention and MLP
projections, the same optimizer settings, and pairs whose prompt is exactly `--prompt_len` tokens and whose chosen
and rejected completions are exactly `--completion_len` tokens (EOS included; `max_length` is their sum, so nothing
is truncated, and the first batch of each trainer is checked to have the same shape):

- `plain`: `DPOTrainer` with `per_device_train_batch_size=P` pairs;
- `np`: `NPDPOTrainer` with one episode per device batch, `num_targets=P` and `min_context=max_context=10`
  (exactly 10 context pairs every step), `context_embedding="precomputed"` (float-list columns
  `chosen_embedding` / `rejected_embedding`). In real use the context embeddings are computed once and cached
  before training, so this is the steady-state per-step cost. The policy forward carries the LoRA gates of the
  hypernetwork; the reference forward (adapters off) is TRL's own, as in `plain`.

Measurement. The trainers run one at a time: each is built, trained for `--warmup` unmeasured and `--steps` measured
optimizer steps, and freed (`del`, `gc.collect()`, `torch.cuda.empty_cache()`) before the next is built, so each
has the device to itself. `--repeats` rounds alternate the order (plain, np, then np, plain, ...), so drift falls
evenly on both. Gradient checkpointing (TRL's default, non-reentrant: `NPDPOTrainer` rejects reentrant) is measured
on, then off. Timing and memory use the shared `benchmarks.harness.StepMeter` callback: a step is `on_step_begin` ->
`on_step_end` (forward, reference forward, backward, clipping, optimizer step); the cycle adds fetching and collating
the batch. On CUDA the clock is wall time after `torch.cuda.synchronize()`; on CPU it is process CPU time with one
intra-op thread (robust to other processes on a shared machine; wall time is recorded too). Medians over all
measured steps of all repeats are reported.

Peak memory (`peak MB`):

- CUDA: `torch.cuda.max_memory_allocated()` over the measured steps (`torch.cuda.reset_peak_memory_stats()` at
  every step begin), minus what the process held before the trainer was built (`baseline_mb`, recorded). This
  counts the trainer's weights, LoRA and NP modules, optimizer state, activations and temporaries;
- CPU: `static + step_peak` as in `speed.py` (parameters, buffers and optimizer state, plus the peak of the
  allocations recorded by `torch.profiler` during `--memory_steps` extra, untimed steps).

`static + step_peak` is recorded on CUDA too. Run (the defaults are the GPU settings, estimated at 1.5-2 minutes
on an H100; runs beyond the first plain/np pair are skipped once `--budget_s` would be exceeded; the CPU check below
takes about 1.5 minutes on 2 busy cores)::

    python -m benchmarks.dpo_speed
    python -m benchmarks.dpo_speed --device cpu --num_layers 2 --hidden_size 128 \\
        --intermediate_size 512 --num_heads 4 --num_kv_heads 2 --vocab_size 1000 --prompt_len 32 \\
        --completion_len 32 --steps 3 --output /tmp/dpo_speed_check.json   # CPU check

It prints a table with the NP/plain ratios (goals: step time <= 1.15, peak memory <= 1.10) and writes
`benchmarks/results/dpo_speed_<device>.json` after every run, so a run cut short keeps what it measured. Nothing is
downloaded: the model is a random init and the tokenizer a word-level one built in code.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import tempfile
import time
import weakref
from typing import Any

import datasets
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import PrinterCallback
from trl import DPOConfig, DPOTrainer

from fssa_trl import NPDPOConfig, NPDPOTrainer

from .harness import (
    LORA_TARGETS,
    QWEN2_05B,
    StepMeter,
    free_memory,
    markdown_table,
    memory_allocated,
    random_qwen2,
    random_words,
    run_stamp,
    training_arguments,
    word_tokenizer,
    write_json,
)

GOALS = {"step": 1.15, "peak": 1.10}
KINDS = ("plain", "np")
LABELS = {"plain": "DPOTrainer (TRL)", "np": "NPDPOTrainer, precomputed"}
DEFAULT_BUDGET_S = 165.0  # CUDA: the whole script must finish within 3 minutes
_STARTED = time.perf_counter()  # the budget counts from here (after the imports)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    shape = parser.add_argument_group("model shape (defaults: Qwen/Qwen2-0.5B)")
    for name, default in QWEN2_05B.items():
        shape.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--prompt_len", type=int, default=128, help="Tokens of every prompt.")
    parser.add_argument("--completion_len", type=int, default=128, help="Tokens of every completion (with EOS).")
    parser.add_argument(
        "--pairs",
        type=int,
        default=16,
        help="Target pairs per optimizer step (P). NP contexts are drawn from the episode's targets, so P must exceed "
        "--context (some targets must be unseen for the NP accuracy metric); 16 as in speed.py's GPU preset.",
    )
    parser.add_argument("--context", type=int, default=10, help="Context pairs of every NP episode.")
    parser.add_argument("--warmup", type=int, default=3, help="Unmeasured steps at the start of every run.")
    parser.add_argument("--steps", type=int, default=10, help="Measured steps per run.")
    parser.add_argument("--repeats", type=int, default=2, help="Runs per trainer and setting, order alternating.")
    parser.add_argument("--gradient_checkpointing", choices=["on", "off", "both"], default="both")
    parser.add_argument(
        "--memory_steps",
        type=int,
        help="Extra profiled steps per run for the CPU peak-memory method (default: 1 on CPU, 0 on CUDA).",
    )
    parser.add_argument(
        "--budget_s",
        type=float,
        help=f"Skip the remaining runs (after the first plain/np pair) once the next pair would end after this many "
        f"seconds from start (default: {DEFAULT_BUDGET_S:.0f} on CUDA, no limit on CPU; 0: no limit).",
    )
    parser.add_argument("--clock", choices=["auto", "cpu", "wall"], default="auto", help="As in speed.py.")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: 1 on CPU, see speed.py).")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, help="bf16 weights + bf16=True (CUDA).")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="JSON path (default: benchmarks/results/dpo_speed_<device>.json).")
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = args.device == "cuda"
    if args.bf16 is None:
        args.bf16 = cuda
    if args.clock == "auto":
        args.clock = "wall" if cuda else "cpu"
    if args.memory_steps is None:
        args.memory_steps = 0 if cuda else 1
    if args.threads is None and not cuda:
        args.threads = 1
    if args.budget_s is None:
        args.budget_s = DEFAULT_BUDGET_S if cuda else 0.0
    if not cuda and args.memory_steps < 1:
        parser.error("--memory_steps must be >= 1 on CPU: peak memory is measured on profiled steps there.")
    if args.warmup < 1:
        parser.error("--warmup must be >= 1: the optimizer state, part of the static memory, exists after one step.")
    if args.steps < 2:
        parser.error("--steps must be >= 2 (the cycle time needs two consecutive steps).")
    if args.pairs <= args.context:
        parser.error(f"--pairs ({args.pairs}) must be > --context ({args.context}): contexts are drawn from targets.")
    if min(args.prompt_len, args.completion_len) < 2:
        parser.error("--prompt_len and --completion_len must be >= 2.")
    return args


# --------------------------------------------------------------------------------------------------- inputs
def preference_dataset(args, num_pairs: int) -> Dataset:
    """`num_pairs` pairs of 4 users: prompts of `prompt_len` words, completions of `completion_len - 1` words (TRL
    appends EOS), one word per token, and random precomputed context embeddings of dimension `hidden_size`."""
    generator = torch.Generator().manual_seed(args.seed)
    # The prompt ends with a space so that "prompt + completion" splits into the same words.
    prompts = [text + " " for text in random_words(num_pairs, args.prompt_len, args.vocab_size, generator)]
    chosen, rejected = (random_words(num_pairs, args.completion_len - 1, args.vocab_size, generator) for _ in range(2))
    embeddings = torch.randn(2, num_pairs, args.hidden_size, generator=generator)
    return Dataset.from_dict(
        {
            "prompt": prompts,
            "chosen": chosen,
            "rejected": rejected,
            "user_id": [f"user{i % 4}" for i in range(num_pairs)],
            "chosen_embedding": embeddings[0].tolist(),
            "rejected_embedding": embeddings[1].tolist(),
        }
    )


def build_trainer(kind: str, args, dataset: Dataset, tokenizer, device, gradient_checkpointing: bool, workdir: str):
    """One trainer and the seconds its construction took (model init excluded)."""
    max_length = args.prompt_len + args.completion_len  # nothing is truncated
    common = training_arguments(args, device, os.path.join(workdir, kind), max_length, gradient_checkpointing)
    model = random_qwen2(args, device, "causal_lm", max_length)
    peft_config = LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    if kind == "plain":
        config = DPOConfig(per_device_train_batch_size=args.pairs, **common)
        train = dataset.remove_columns(["user_id", "chosen_embedding", "rejected_embedding"])
        trainer = DPOTrainer(
            model=model, args=config, train_dataset=train, processing_class=tokenizer, peft_config=peft_config
        )
    else:
        config = NPDPOConfig(
            per_device_train_batch_size=1,
            num_targets=args.pairs,
            min_context=args.context,
            max_context=args.context,
            context_embedding="precomputed",
            **common,
        )
        trainer = NPDPOTrainer(
            model=model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config
        )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return trainer, time.perf_counter() - start


def check_inputs(trainer, kind: str, args) -> dict[str, Any]:
    """Every prompt and completion either trainer will see has exactly the requested length, and its first batch
    holds `pairs` pairs of `prompt_len + completion_len` tokens. Returns the batch's shapes."""
    rows = trainer.train_dataset
    for column, length in (("prompt_ids", args.prompt_len), ("chosen_ids", args.completion_len)):
        for other in (column, "rejected_ids") if column == "chosen_ids" else (column,):
            sequences = rows[other]
            if kind == "np":  # episodes: one list of target sequences per row
                sequences = [seq for episode in sequences for seq in episode]
            lengths = {len(seq) for seq in sequences}
            if lengths != {length}:
                raise RuntimeError(f"{kind}: {other} lengths {sorted(lengths)} != {length}")
    batch = next(iter(trainer.get_train_dataloader()))
    shape = {"input_ids": list(batch["input_ids"].shape), "completion_tokens": int(batch["completion_mask"].sum())}
    expected = {"input_ids": [2 * args.pairs, args.prompt_len + args.completion_len]}
    expected["completion_tokens"] = 2 * args.pairs * args.completion_len
    if shape != expected:
        raise RuntimeError(f"{kind}: first batch {shape} != {expected}")
    if kind == "np":
        context = batch["context_mask"].sum(dim=1).tolist()
        if context != [args.context]:
            raise RuntimeError(f"np: context pairs per episode {context} != [{args.context}]")
        shape["context_pairs"] = args.context
    return shape


def run_one(kind: str, args, dataset, tokenizer, device, gradient_checkpointing: bool, workdir: str):
    """Build, train and free one trainer; return its measurements."""
    started = time.perf_counter()
    free_memory(device)
    baseline = memory_allocated(device)
    trainer, init_s = build_trainer(kind, args, dataset, tokenizer, device, gradient_checkpointing, workdir)
    shapes = check_inputs(trainer, kind, args)
    meter = StepMeter(device, time.process_time if args.clock == "cpu" else time.perf_counter)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(meter)
    meter.plan(args.warmup, args.steps, args.memory_steps)
    trainer.args.max_steps = args.warmup + args.steps + args.memory_steps
    trainer.train()
    last_log = trainer.state.log_history[-1]
    expected_key = "accuracy_unseen" if kind == "np" else "rewards/accuracies"
    if expected_key not in last_log:
        raise RuntimeError(f"{kind}: {expected_key!r} was not logged; the {LABELS[kind]} loss path did not run")
    model_ref = weakref.ref(trainer.model)
    trainer.remove_callback(meter)
    del trainer
    free_memory(device)
    result = {
        "init_s": init_s,
        "run_s": time.perf_counter() - started,
        "batch": shapes,
        "step_ms": meter.step_ms,
        "cycle_ms": meter.cycle_ms,
        "step_wall_ms": meter.step_wall_ms,
        "static_bytes": meter.static,
        "step_peak_bytes": meter.step_peak,
        "baseline_bytes": baseline,
        "model_freed": model_ref() is None,
        "allocated_after_free_bytes": memory_allocated(device),
    }
    if device.type == "cuda":
        result["peak_bytes"] = max(meter.absolute_peak) - baseline
    else:
        result["peak_bytes"] = meter.static + max(meter.step_peak)
    result["static_plus_step_peak_bytes"] = meter.static + max(meter.step_peak)
    return result


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Pool the measured steps of all runs of one trainer."""
    pooled = {key: [x for run in runs for x in run[key]] for key in ("step_ms", "cycle_ms", "step_wall_ms")}
    mb = 2**20
    return {
        "runs": len(runs),
        "init_s": [run["init_s"] for run in runs],
        "step_ms_median": statistics.median(pooled["step_ms"]),
        "step_ms_min": min(pooled["step_ms"]),
        "step_ms_max": max(pooled["step_ms"]),
        "step_ms_median_per_run": [statistics.median(run["step_ms"]) for run in runs],
        "cycle_ms_median": statistics.median(pooled["cycle_ms"]),
        "step_wall_ms_median": statistics.median(pooled["step_wall_ms"]),
        "peak_mb": max(run["peak_bytes"] for run in runs) / mb,
        "static_mb": max(run["static_bytes"] for run in runs) / mb,
        "static_plus_step_peak_mb": max(run["static_plus_step_peak_bytes"] for run in runs) / mb,
    }


def compare(results: dict[str, Any]) -> None:
    """Add the NP / plain ratios (and whether the goals are met) to the `np` entry."""
    np_, plain = results.get("np"), results.get("plain")
    if not (np_ and plain):
        return
    for key in ("step_ms_median", "cycle_ms_median", "step_wall_ms_median", "peak_mb", "static_plus_step_peak_mb"):
        np_[f"ratio_{key}"] = np_[key] / plain[key]
    np_["goal_step_met"] = np_["ratio_step_ms_median"] <= GOALS["step"]
    np_["goal_peak_met"] = np_["ratio_peak_mb"] <= GOALS["peak"]


RATIO_COLUMNS = ("ratio_step_ms_median", "ratio_step_wall_ms_median", "ratio_peak_mb")


def format_table(clock: str, report: dict[str, Any]) -> str:
    columns = [
        ("setting", "<10"),
        ("trainer", "<26"),
        ("runs", ">4"),
        ("init s", ">6"),
        (f"step ms, {clock} (min-max)", ">24"),
        (f"cycle ms, {clock}", ">14"),
        ("step ms, wall", ">13"),
        ("peak MB", ">8"),
        ("step x", ">6"),
        ("wall x", ">6"),
        ("peak x", ">6"),
    ]
    rows = [
        [
            "GC " + setting.rsplit(" ", 1)[-1],
            LABELS[kind],
            str(r["runs"]),
            f"{statistics.median(r['init_s']):.2f}",
            f"{r['step_ms_median']:.1f} ({r['step_ms_min']:.0f}-{r['step_ms_max']:.0f})",
            f"{r['cycle_ms_median']:.1f}",
            f"{r['step_wall_ms_median']:.1f}",
            f"{r['peak_mb']:.1f}",
            *(f"{r[key]:.3f}" if key in r else "-" for key in RATIO_COLUMNS),
        ]
        for setting, results in report["results"].items()
        for kind, r in results.items()
    ]
    return markdown_table(columns, rows)


# -------------------------------------------------------------------------------------------------- running
def warm_up(args, dataset, tokenizer, device, workdir: str) -> None:
    """A 1-layer pair of trainers, trained 2 steps each, so that one-off costs (CUDA context, cuBLAS workspaces,
    lazy imports, kernel selection) land in no measured run and in every run's baseline alike."""
    tiny = argparse.Namespace(**{**vars(args), "hidden_size": 64, "num_layers": 1, "intermediate_size": 128})
    tiny.num_heads, tiny.num_kv_heads = 4, 2
    tiny_data = dataset.remove_columns(["chosen_embedding", "rejected_embedding"]).add_column(
        "chosen_embedding", [[0.0] * 64] * len(dataset)
    )
    tiny_data = tiny_data.add_column("rejected_embedding", [[1.0] * 64] * len(dataset))
    for kind in KINDS:
        trainer, _ = build_trainer(kind, tiny, tiny_data, tokenizer, device, True, workdir)
        trainer.remove_callback(PrinterCallback)
        trainer.args.max_steps = 2
        trainer.train()
        del trainer
    free_memory(device)


def write(report: dict[str, Any], output: str) -> None:
    report["total_s"] = time.perf_counter() - _STARTED
    write_json(report, output)


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    logging.getLogger("fssa_trl").setLevel(logging.WARNING)
    datasets.disable_progress_bars()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    output = args.output or os.path.join(os.path.dirname(__file__), "results", f"dpo_speed_{device.type}.json")
    tokenizer = word_tokenizer(args.vocab_size)
    steps_per_run = args.warmup + args.steps + args.memory_steps
    dataset = preference_dataset(args, 4 * args.pairs * math.ceil(steps_per_run / 4))  # 4 users, >= P pairs each
    settings = {"on": [True], "off": [False], "both": [True, False]}[args.gradient_checkpointing]
    report = {
        **run_stamp("dpo_speed", device, args),
        "goals": GOALS,
        "notes": (
            "np: NPDPOTrainer with exactly `context` context pairs per episode and precomputed context embeddings "
            "(cached before training in real use: the steady-state per-step cost). Ratios are np / plain DPOTrainer. "
            "CUDA peak: max_memory_allocated over measured steps minus the memory held before the trainer was built; "
            "CPU peak: static (params, buffers, optimizer state) + profiled step peak."
        ),
        "results": {},
        "runs": [],
        "skipped": [],
    }
    print(
        f"Qwen2 random init: hidden {args.hidden_size}, {args.num_layers} layers, vocab {args.vocab_size}; LoRA r=16 "
        f"on {len(LORA_TARGETS)} projections; {args.pairs} pairs/step of {args.prompt_len}+{args.completion_len} "
        f"tokens; NP context {args.context} pairs; {'bf16' if args.bf16 else 'fp32'} on {device}; "
        f"{args.warmup} warmup + {args.steps} measured steps per run, {args.repeats} runs per trainer and setting",
        flush=True,
    )
    longest_run = 0.0
    with tempfile.TemporaryDirectory() as workdir:
        warm_up(args, dataset, tokenizer, device, workdir)
        print(f"  warm-up done at {time.perf_counter() - _STARTED:.0f} s", flush=True)
        for gradient_checkpointing in settings:
            setting = "gradient checkpointing " + ("on" if gradient_checkpointing else "off")
            runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
            for repeat in range(args.repeats):
                elapsed = time.perf_counter() - _STARTED
                if args.budget_s and report["runs"] and elapsed + 2 * longest_run > args.budget_s:
                    report["skipped"].append(f"{setting}, repeat {repeat + 1}: over --budget_s {args.budget_s:.0f}")
                    print(f"  skipped {report['skipped'][-1]}", flush=True)
                    continue
                for kind in KINDS if repeat % 2 == 0 else KINDS[::-1]:
                    run = run_one(kind, args, dataset, tokenizer, device, gradient_checkpointing, workdir)
                    longest_run = max(longest_run, run["run_s"])
                    runs[kind].append(run)
                    report["runs"].append({"setting": setting, "kind": kind, "repeat": repeat, **run})
                    print(
                        f"  {setting}, repeat {repeat + 1}, {kind:5s}: init {run['init_s']:5.1f} s, step "
                        f"{statistics.median(run['step_ms']):8.1f} ms, peak {run['peak_bytes'] / 2**20:8.1f} MB, "
                        f"run {run['run_s']:5.1f} s, at {time.perf_counter() - _STARTED:5.0f} s",
                        flush=True,
                    )
                    if not run["model_freed"]:
                        print(f"  warning: the {kind} model was not freed after its run", flush=True)
                    results = {k: summarise(v) for k, v in runs.items() if v}
                    compare(results)
                    report["results"][setting] = results
                    write(report, output)
    write(report, output)
    print()
    print(format_table(args.clock, report))
    print(
        "\nnp: NPDPOTrainer with exactly "
        f"{args.context} context pairs per episode, context embeddings precomputed (cached before training in real "
        "use: the steady-state per-step cost).\nstep: on_step_begin -> on_step_end (policy + reference forward, "
        "backward, optimizer); cycle adds batch fetch + collation. peak: "
        + (
            "max_memory_allocated over the measured steps minus the memory held before the trainer was built."
            if device.type == "cuda"
            else "static (params, buffers, optimizer state) + profiled step peak."
        )
        + f"\nGoals: step x <= {GOALS['step']:.2f}, peak x <= {GOALS['peak']:.2f}. "
        f"Total {report['total_s']:.0f} s."
        + ("" if not report["skipped"] else "\nSkipped: " + "; ".join(report["skipped"]))
    )
    print(f"Wrote {output}")
    return report


if __name__ == "__main__":
    main()
