# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Aten ops dispatched per training step: `NPRewardTrainer` against TRL's plain `RewardTrainer`, side by side.

On a GPU a reward step of a small model is launch-bound: its time follows the number of ops dispatched more than
their FLOPs. This counts them, on CPU, where the count is deterministic and needs no GPU: every `aten::` event that
`torch.profiler` records (nested ones included) from `on_step_begin` to `on_step_end` of an optimizer step (forward,
backward with the checkpoint recompute, gradient clipping, optimizer step).

Both trainers get the same randomly initialised tiny `Qwen2ForSequenceClassification` (hidden 64; 4, 8 and 24 layers
by default, 24 being Qwen2-0.5B's depth; LoRA r=16 on all seven linear projections of every layer,
`task_type="SEQ_CLS"`), the default optimizer (AdamW) and batches of `--pairs` target pairs of `--seq_len` tokens:

- `plain`: `RewardTrainer`, `per_device_train_batch_size=P`;
- `np`: `NPRewardTrainer`, one episode of P targets per step with exactly `--context` context pairs (precomputed
  context embeddings: the steady state, since embeddings are cached before training).

Each trainer runs `--warmup` unprofiled steps (optimizer state created), then `--steps` profiled ones; the count of
each profiled step is reported (they agree) with the NP / plain ratio, for gradient checkpointing on and off, and the
ops whose counts differ most. The NP trainer's extra ops split into a fixed part (latent encoder and hypernetwork
forward and backward, their optimizer and gradient-clipping work, the gates' preparation, the accuracy counts) and a
per-LoRA-layer part (the gated layer against PEFT's); the depths separate the two. Run (about 2 minutes on 2 CPU
cores)::

    python -m benchmarks.ops
    python -m benchmarks.ops --num_layers 4 --top 20

It writes `benchmarks/results/ops_cpu.json`.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import tempfile
from typing import Any

import datasets
import torch
from torch.profiler import ProfilerActivity, profile
from transformers import PrinterCallback, TrainerCallback

from .harness import LORA_TARGETS, markdown_table, run_stamp, word_tokenizer, write_json
from .speed import build_trainer, preference_dataset

GOAL = 1.03
LABELS = {"plain": "RewardTrainer (TRL)", "np": "NPRewardTrainer"}


class OpCounter(TrainerCallback):
    """Profiles optimizer steps `warmup .. warmup + steps - 1` and keeps the `aten::` op names of each."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.steps: list[collections.Counter] = []
        self._profiler = None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step >= self.warmup:
            self._profiler = profile(activities=[ProfilerActivity.CPU])
            self._profiler.start()

    def on_step_end(self, args, state, control, **kwargs):
        if self._profiler is not None:
            profiler, self._profiler = self._profiler, None
            profiler.stop()
            self.steps.append(collections.Counter(e.name for e in profiler.events() if e.name.startswith("aten::")))


def count(
    kind: str, args, dataset, tokenizer, gradient_checkpointing: bool, workdir: str
) -> list[collections.Counter]:
    """Build `kind`'s trainer as `benchmarks.speed` does, train it, and return the op counts of its profiled steps."""
    trainer, _ = build_trainer(kind, args, dataset, tokenizer, torch.device("cpu"), gradient_checkpointing, workdir)
    trainer.args.max_steps = args.warmup + args.steps
    counter = OpCounter(args.warmup)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(counter)
    trainer.train()
    if kind == "np" and "accuracy_unseen" not in trainer.state.log_history[-1]:
        raise RuntimeError("np: the NP loss path did not run")
    return counter.steps


def main(argv=None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_layers", type=int, nargs="+", default=[4, 8, 24])
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--intermediate_size", type=int, default=128)
    parser.add_argument("--num_heads", type=int, default=4)
    parser.add_argument("--num_kv_heads", type=int, default=2)
    parser.add_argument("--vocab_size", type=int, default=512)
    parser.add_argument("--seq_len", type=int, default=32, help="Tokens of every chosen and rejected sequence.")
    parser.add_argument("--pairs", type=int, default=16, help="Target pairs per step (P).")
    parser.add_argument("--context", type=int, default=10, help="Context pairs of every NP episode.")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--gradient_checkpointing", choices=["on", "off", "both"], default="both")
    parser.add_argument("--top", type=int, default=10, help="List the ops whose counts differ most.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "ops_cpu.json"))
    args = parser.parse_args(argv)
    args.bf16 = False
    logging.getLogger("transformers").setLevel(logging.ERROR)
    logging.getLogger("fssa_trl").setLevel(logging.WARNING)
    datasets.disable_progress_bars()
    torch.set_num_threads(1)
    tokenizer = word_tokenizer(args.vocab_size)
    dataset = preference_dataset(4 * args.pairs * (args.warmup + args.steps), args.seq_len, args.vocab_size, 32, 0)
    report = {**run_stamp("ops", torch.device("cpu"), args), "goal": GOAL, "results": {}}
    rows, details = [], []
    settings = {"on": [True], "off": [False], "both": [True, False]}[args.gradient_checkpointing]
    depths = list(args.num_layers)
    with tempfile.TemporaryDirectory() as workdir:
        for depth in depths:
            args.num_layers = depth
            for gradient_checkpointing in settings:
                setting = "on" if gradient_checkpointing else "off"
                steps = {
                    kind: count(kind, args, dataset, tokenizer, gradient_checkpointing, workdir) for kind in LABELS
                }
                totals = {kind: [sum(step.values()) for step in counts] for kind, counts in steps.items()}
                ratio = totals["np"][-1] / totals["plain"][-1]
                diff = steps["np"][-1].copy()
                diff.subtract(steps["plain"][-1])
                largest = sorted(diff.items(), key=lambda item: -abs(item[1]))[: args.top]
                report["results"][f"{depth} layers, gradient checkpointing {setting}"] = {
                    "num_layers": depth,
                    "lora_layers": depth * len(LORA_TARGETS),
                    "gradient_checkpointing": gradient_checkpointing,
                    "aten_ops_per_step": totals,
                    "ratio": ratio,
                    "goal_met": ratio <= GOAL,
                    "largest_differences": dict(largest),
                }
                for kind in LABELS:
                    ops = "/".join(str(t) for t in totals[kind])
                    rows.append([str(depth), setting, LABELS[kind], ops, f"{ratio:.3f}" if kind == "np" else ""])
                details.append(
                    f"{depth} layers, GC {setting}, np - plain: " + ", ".join(f"{name} {n:+d}" for name, n in largest)
                )
                print(f"  {depth} layers, gradient checkpointing {setting}: {totals}", flush=True)
    args.num_layers = depths
    columns = [
        ("layers", ">6"),
        ("GC", "<3"),
        ("trainer", "<20"),
        ("aten ops per profiled step", ">26"),
        ("np / plain", ">10"),
    ]
    table = markdown_table(columns, rows)
    report["table"] = table
    write_json(report, args.output)
    print(
        f"\nTiny Qwen2 reward model: hidden {args.hidden_size}, LoRA r=16 on {len(LORA_TARGETS)} projections per "
        f"layer; {args.pairs} pairs of {args.seq_len} tokens per step; NP context {args.context} pairs.\n\n{table}\n\n"
        + "\n".join(details)
        + f"\n\nGoal: np / plain <= {GOAL:.2f}. Wrote {args.output}"
    )
    return report


if __name__ == "__main__":
    main()
