# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""What the benchmarks share: random-init Qwen2 models and a word-level tokenizer built in code (nothing is
downloaded), the training arguments both trainers of a comparison get, the step meter (time and peak memory per
optimizer step), the aten-op counter, machine facts and Markdown tables.

The benchmarks are modules of this package: run them from the repository root as `python -m benchmarks.<name>`.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2ForSequenceClassification, TrainerCallback

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SPECIAL_TOKENS = ("<pad>", "<eos>", "<unk>")
# The shape of Qwen/Qwen2-0.5B (random init in the benchmarks).
QWEN2_05B = dict(
    hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2, intermediate_size=4864, vocab_size=151936
)


# --------------------------------------------------------------------------------------------------- inputs
def word_tokenizer(vocab_size: int):
    """Whitespace word-level tokenizer over `w0 .. w{V-4}` plus pad/eos/unk: one word is one token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"w{i}": i + len(SPECIAL_TOKENS) for i in range(vocab_size - len(SPECIAL_TOKENS))})
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def random_words(num_rows: int, length: int, vocab_size: int, generator: torch.Generator) -> list[str]:
    """`num_rows` texts of `length` words `w<i>` of the tokenizer above (one word is one token)."""
    ids = torch.randint(0, vocab_size - len(SPECIAL_TOKENS), (num_rows, length), generator=generator)
    return [" ".join(f"w{i}" for i in row) for row in ids.tolist()]


def random_qwen2(args, device: torch.device, head: str = "reward", max_length: int = 512):
    """A randomly initialised Qwen2 of the shape in `args` (`hidden_size`, `num_layers`, `num_heads`,
    `num_kv_heads`, `intermediate_size`, `vocab_size`, `bf16`, `seed`): a sequence-classification model with one label
    (`head="reward"`) or a causal LM (`head="causal_lm"`)."""
    config = Qwen2Config(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads,
        num_key_value_heads=args.num_kv_heads,
        max_position_embeddings=max(max_length, 512),
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
        num_labels=1,
    )
    model_class = Qwen2ForSequenceClassification if head == "reward" else Qwen2ForCausalLM
    torch.manual_seed(args.seed)
    with device:
        return model_class._from_config(
            config, dtype=torch.bfloat16 if getattr(args, "bf16", False) else torch.float32
        )


def training_arguments(args, device: torch.device, output_dir: str, max_length: int, gradient_checkpointing: bool):
    """The arguments every trainer of a comparison shares (plain TRL and NP alike): no logging or saving inside the
    measured loop, constant learning rate, nothing truncated, checkpointing as given (non-reentrant)."""
    return {
        "output_dir": output_dir,
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 10**6,
        "disable_tqdm": True,
        "use_cpu": device.type == "cpu",
        "bf16": bool(getattr(args, "bf16", False)),
        "learning_rate": 1e-4,
        "lr_scheduler_type": "constant",
        "max_length": max_length,
        "seed": args.seed,
        "gradient_checkpointing": gradient_checkpointing,
        "gradient_checkpointing_kwargs": {"use_reentrant": False} if gradient_checkpointing else None,
        "dataloader_num_workers": 0,
    }


# ------------------------------------------------------------------------------------------------ measuring
def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors` (shared and tied tensors counted once)."""
    seen = {}
    for tensor in tensors:
        if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def static_bytes(model: torch.nn.Module, optimizer) -> int:
    """Parameters, buffers and optimizer state of one trainer."""
    tensors = [*model.parameters(), *model.buffers()]
    if optimizer is not None:
        tensors += [v for state in optimizer.state.values() for v in state.values()]
    return storage_bytes(tensors)


def profiled_peak(profiler, device: torch.device) -> int:
    """Peak of the running sum of the allocations and frees on `device` that `profiler` recorded."""
    device_type = torch.autograd.DeviceType.CUDA if device.type == "cuda" else torch.autograd.DeviceType.CPU
    events = [e for e in profiler.profiler.kineto_results.events() if e.name() == "[memory]"]
    events = [e for e in events if e.device_type() == device_type]
    running = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        running += event.nbytes()
        peak = max(peak, running)
    return peak


class StepMeter(TrainerCallback):
    """Times optimizer steps and measures their peak memory.

    A step is `on_step_begin` -> `on_step_end` (forward, backward, clipping, optimizer step), timed with `clock`
    (process CPU time on CPU: robust to other processes on a shared machine; wall time after
    `torch.cuda.synchronize()` on CUDA) and with wall time; the cycle, from one `on_step_end` to the next, adds fetching
    and collating the batch. Peak memory of a step is `static + step_peak`: `static` is the bytes of the trainer's
    parameters, buffers and optimizer state (unique storages), `step_peak` the most allocated above the level at step
    begin: on CUDA from `torch.cuda.max_memory_allocated()`; on CPU, which has no allocator peak counter, from the
    `[memory]` events of `torch.profiler.profile(profile_memory=True)` over `profiled` extra, untimed steps (the
    maximum of their running sum; it can only overstate the peak, by blocks allocated before the step and freed in
    it). On CUDA the profiler method also runs on the profiled steps and is stored beside the counter as a check.
    """

    def __init__(self, device: torch.device, clock):
        self.device = device
        self.clock = clock  # the clock of `step_ms` and `cycle_ms`; `step_wall_ms` is always wall time
        self.step_ms: list[float] = []
        self.cycle_ms: list[float] = []
        self.step_wall_ms: list[float] = []
        self.step_peak: list[int] = []
        self.memory_check: list[dict[str, int]] = []  # CUDA: profiler method vs allocator counter, same step
        self.absolute_peak: list[int] = []  # CUDA: max_memory_allocated of every timed step
        self.static: int | None = None
        self.plan(0, 0, 0)

    def plan(self, warmup: int, timed: int, profiled: int) -> None:
        """The next `train()` call: `warmup` unmeasured steps, `timed` timed steps, then `profiled` memory steps."""
        self.warmup, self.timed, self.profiled = warmup, timed, profiled
        self._last_end = None
        self._profiler = None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        step = state.global_step
        if step >= self.warmup and self.static is None:
            self.static = static_bytes(model, optimizer)
        self._sync()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._allocated = torch.cuda.memory_allocated(self.device)
        if step >= self.warmup + self.timed:
            try:
                self._profiler = torch.profiler.profile(
                    activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
                )
                self._profiler.start()
            except Exception as error:  # on CUDA the profiler only checks the method: never lose the run to it
                if self.device.type != "cuda":
                    raise
                self._profiler = None
                self.memory_check.append({"error": repr(error)})
        self._begin, self._begin_wall = self.clock(), time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        end, end_wall = self.clock(), time.perf_counter()
        step = state.global_step - 1  # global_step was incremented before on_step_end
        cuda_peak = None
        if self.device.type == "cuda":
            cuda_peak = torch.cuda.max_memory_allocated(self.device) - self._allocated
        if self._profiler is not None:
            profiler, self._profiler = self._profiler, None
            if cuda_peak is None:
                profiler.stop()
                self.step_peak.append(profiled_peak(profiler, self.device))
            else:  # the CPU method, checked against the allocator's own counter on the same step
                try:
                    profiler.stop()
                    check = {"profiler_bytes": profiled_peak(profiler, self.device)}
                except Exception as error:
                    check = {"error": repr(error)}
                self.memory_check.append({**check, "max_memory_allocated_bytes": cuda_peak})
        elif self.warmup <= step < self.warmup + self.timed:
            self.step_ms.append(1000 * (end - self._begin))
            self.step_wall_ms.append(1000 * (end_wall - self._begin_wall))
            if self._last_end is not None:
                self.cycle_ms.append(1000 * (end - self._last_end))
            if cuda_peak is not None:
                self.step_peak.append(cuda_peak)
                self.absolute_peak.append(cuda_peak + self._allocated)
        self._last_end = end


def memory_allocated(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def machine_facts(device: torch.device) -> dict[str, Any]:
    import peft
    import transformers
    import trl

    facts = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "peft": peft.__version__,
    }
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts


def markdown_table(columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table; `columns` are `(name, format alignment)` pairs such as `("step x", ">6")`."""
    lines = ["| " + " | ".join(f"{name:{align}}" for name, align in columns) + " |"]
    lines.append("|" + "|".join("-" * (len(f"{name:{align}}") + 2) for name, align in columns) + "|")
    for cells in rows:
        lines.append(
            "| " + " | ".join(f"{cell:{align}}" for cell, (_, align) in zip(cells, columns, strict=True)) + " |"
        )
    return "\n".join(lines)


def run_stamp(name: str, device: torch.device, args) -> dict[str, Any]:
    """Command, date, device, machine and arguments of a run of `benchmarks.<name>`, for its JSON."""
    return {
        "command": " ".join(["python -m", f"benchmarks.{name}", *sys.argv[1:]]),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": str(device),
        "machine": machine_facts(device),
        "arguments": vars(args),
    }


def write_json(report: dict[str, Any], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
