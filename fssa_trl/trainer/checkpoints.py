# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Crash-safe checkpoints: our files are written atomically, and a run resumes only from a complete checkpoint.

A process killed while the Trainer writes `checkpoint-15` leaves a folder with some files whole, one cut short and the
rest missing. `Trainer.train(resume_from_checkpoint=True)` takes the highest-numbered folder
(`transformers.trainer_utils.get_last_checkpoint`) and fails on the cut file (a `SafetensorError`, a
`JSONDecodeError`, torch's "failed finding central directory"), never trying the complete one before it. The trainers
resolve the checkpoint first ([`resolve_checkpoint`]): every file a resume reads must be whole
([`checkpoint_problem`]), else `True` falls back to the newest complete checkpoint with an
[`IncompleteCheckpointWarning`], and an explicit path raises a `ValueError` naming the file.

"Whole" is checked without loading anything: a safetensors header must cover the file (`safe_open`), a `torch.save`
file must be a zip archive with its central directory (written last; never unpickled here), a JSON file must parse.

The Trainer writes a checkpoint in this order (transformers 5.x `Trainer._save_checkpoint`): the model (`save_model`:
weights, tokenizer, `training_args.bin`, then our `fssa_np.safetensors`, `fssa_config.json`, README.md), the optimizer
and scheduler, the RNG states, `trainer_state.json`, and only then deletes old checkpoints (`save_total_limit`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from accelerate.utils.constants import FSDP_MODEL_NAME
from accelerate.utils.constants import OPTIMIZER_NAME as FSDP_OPTIMIZER_NAME
from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_SAFE_WEIGHTS_NAME,
    ADAPTER_WEIGHTS_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
)

from ..modeling.np_modules import check_safetensors

CHECKPOINT_PATTERN = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")  # as `get_last_checkpoint` matches them
# The model weights `Trainer._load_from_checkpoint` resumes from; an index names its shards.
WEIGHTS_NAMES = (SAFE_WEIGHTS_NAME, WEIGHTS_NAME, ADAPTER_SAFE_WEIGHTS_NAME, ADAPTER_WEIGHTS_NAME)
WEIGHTS_INDEX_NAMES = (SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_INDEX_NAME)
ADAPTER_NAMES = (ADAPTER_SAFE_WEIGHTS_NAME, ADAPTER_WEIGHTS_NAME)
DISTRIBUTED_CHECKPOINT_METADATA = ".metadata"  # torch.distributed.checkpoint writes it once every shard is written
STAGING_PREFIX = ".fssa-staging-"


class IncompleteCheckpointWarning(UserWarning):
    """A newer checkpoint was incomplete (a crash while it was written): training resumed from an older one."""


# ------------------------------------------------------------------------------------------------ atomic writes
def write_files_atomically(folder: str, write: Callable[[str], None]) -> list[str]:
    """Call `write(staging)`, which writes files into `staging`, a fresh hidden folder inside `folder`, then move each
    file into `folder` with `os.replace` after an `fsync`, and `fsync` `folder`. Every file in `folder` is then its old
    version or the new one, whole, even after a crash or a power cut; never part of one. Returns the names moved.

    The staging folder is removed, also when `write` fails (a killed process leaves it behind: a hidden folder that no
    loader reads).
    """
    os.makedirs(folder, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=folder)
    try:
        write(staging)
        names = sorted(os.listdir(staging))
        for name in names:
            source = os.path.join(staging, name)
            if not os.path.isfile(source):
                raise ValueError(f"write_files_atomically moves files, but {source!r} is not a file.")
            _fsync(source)
        for name in names:
            os.replace(os.path.join(staging, name), os.path.join(folder, name))
        _fsync_folder(folder)
        return names
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fsync(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_folder(folder: str) -> None:
    """Make renames in `folder` durable (POSIX; Windows cannot open a folder, and needs no such step)."""
    if os.name != "posix":
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# ------------------------------------------------------------------------------------------ completeness check
@dataclass(frozen=True)
class CheckpointLayout:
    """What a complete checkpoint of a run holds: the files a resume reads.

    Args:
        model_weights (`bool`, defaults to `True`): the Trainer's model weights (a PEFT adapter or full weights, maybe
            sharded); `False` when the trainer's own files are the whole model.
        own_files (`tuple[str, ...]`): files the trainer adds to each checkpoint (`fssa_np.safetensors`,
            `fssa_config.json`).
        training_state (`bool`, defaults to `True`): optimizer, scheduler and RNG states (`False` with
            `save_only_model=True`).
        engine (`"deepspeed"` or `"fsdp"`, *optional*): `"deepspeed"` (model and optimizer in the `global_step{N}` folder named by
            `latest`) or `"fsdp"` (FSDP's own model and optimizer checkpoints); `None` otherwise.
    """

    model_weights: bool = True
    own_files: tuple[str, ...] = ()
    training_state: bool = True
    engine: Literal["deepspeed", "fsdp"] | None = None


@dataclass(frozen=True)
class CheckpointProblem:
    """Why a checkpoint folder cannot be resumed from: `file` (relative to `folder`) is missing or not whole."""

    folder: str
    file: str
    reason: str

    def __str__(self) -> str:
        return f"{self.folder}: {self.file} {self.reason}"


def checkpoint_problem(folder: str, layout: CheckpointLayout) -> CheckpointProblem | None:
    """The first reason `folder` is not a complete checkpoint of `layout`, or `None`.

    Required: `trainer_state.json` with a `global_step`, `layout.own_files`, the model weights the Trainer loads, and,
    with `training_state`, the optimizer, the scheduler (not under DeepSpeed, whose own checkpoint holds it) and at
    least one `rng_state*.pth` (a run resumed on another number of processes has other RNG files: the Trainer then
    goes on without them, and so does this check). Every other safetensors, `torch.save` and JSON file at the top of
    the folder must be whole too: a cut file is the mark of an interrupted write.
    """
    if not os.path.isdir(folder):
        return CheckpointProblem(folder, ".", "is not a folder")
    names = set(os.listdir(folder))

    def problem(name: str) -> CheckpointProblem | None:
        reason = "is missing" if name not in names else _file_problem(os.path.join(folder, name))
        return None if reason is None else CheckpointProblem(folder, name, reason)

    required = [TRAINER_STATE_NAME, *layout.own_files]
    if layout.training_state and layout.engine is None:
        required += [OPTIMIZER_NAME, SCHEDULER_NAME]
    if layout.training_state and layout.engine == "fsdp":
        required.append(SCHEDULER_NAME)
    for name in required:
        if found := problem(name):
            return found
    if found := _trainer_state_problem(folder):
        return found
    if layout.training_state and not any(name.startswith("rng_state") and name.endswith(".pth") for name in names):
        return CheckpointProblem(folder, "rng_state.pth", "is missing")
    if found := _weights_problem(folder, names, layout):
        return found
    for name in sorted(names - set(required)):  # the rest: cut short by the crash?
        if os.path.isfile(os.path.join(folder, name)) and (found := problem(name)):
            return found
    return None


def _file_problem(path: str, unknown_zip_ok: bool = False) -> str | None:
    """Why the file at `path` is not whole, by its extension, or `None` (also for a kind of file not checked)."""
    if not os.path.isfile(path):
        return "is missing"
    if path.endswith(".safetensors"):
        try:
            check_safetensors(path)  # reads the header only; refuses one the file does not cover
        except ValueError as error:
            return f"is truncated or not a safetensors file ({error.__cause__})"
    elif path.endswith((".pt", ".pth", ".bin")):
        if unknown_zip_ok and not _starts_like_zip(path):  # another engine's format: not checked
            return None if os.path.getsize(path) else "is empty"
        try:  # torch.save writes a zip whose central directory comes last: a cut file has none
            with zipfile.ZipFile(path):
                pass
        except (zipfile.BadZipFile, OSError) as error:
            return f"is truncated or not a torch.save archive ({error})"
    elif path.endswith(".json"):
        try:
            with open(path, encoding="utf-8") as f:
                json.load(f)
        except (ValueError, OSError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            return f"is truncated or not JSON ({error})"
    return None


def _starts_like_zip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _trainer_state_problem(folder: str) -> CheckpointProblem | None:
    with open(os.path.join(folder, TRAINER_STATE_NAME), encoding="utf-8") as f:
        state = json.load(f)
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        return CheckpointProblem(folder, TRAINER_STATE_NAME, "has no integer `global_step`")
    return None


def _weights_problem(folder: str, names: set[str], layout: CheckpointLayout) -> CheckpointProblem | None:
    """The model weights (and, for DeepSpeed and FSDP, the optimizer) the Trainer loads on resume."""
    if layout.engine == "deepspeed" and layout.training_state:
        return _deepspeed_problem(folder, names)
    if layout.engine == "fsdp" and layout.training_state:
        for name in (FSDP_MODEL_NAME, FSDP_OPTIMIZER_NAME):
            if found := _fsdp_problem(folder, names, name):
                return found
        return None
    if not layout.model_weights:
        return None
    for index in sorted(names & set(WEIGHTS_INDEX_NAMES)):
        if found := _shards_problem(folder, index):
            return found
    adapters = [""] if names & set(ADAPTER_NAMES) else []
    adapters += sorted(  # several adapters: one subfolder each
        name for name in names if any(os.path.isfile(os.path.join(folder, name, a)) for a in ADAPTER_NAMES)
    )
    for subfolder in adapters:
        if found := _adapter_problem(folder, subfolder):
            return found
    if adapters or names & {*WEIGHTS_NAMES, *WEIGHTS_INDEX_NAMES}:
        return None  # full weights are checked with the other files
    return CheckpointProblem(folder, ADAPTER_NAMES[0], "is missing (nor are any other model weights there)")


def _adapter_problem(folder: str, subfolder: str) -> CheckpointProblem | None:
    """A PEFT adapter in `folder/subfolder`: its weights, and its config, which PEFT writes after them."""
    prefix = f"{subfolder}/" if subfolder else ""
    for name in (*ADAPTER_NAMES, ADAPTER_CONFIG_NAME):
        path = os.path.join(folder, subfolder, name)
        if name == ADAPTER_CONFIG_NAME or os.path.isfile(path):
            if reason := _file_problem(path):
                return CheckpointProblem(folder, prefix + name, reason)
    return None


def _shards_problem(folder: str, index: str) -> CheckpointProblem | None:
    with open(os.path.join(folder, index), encoding="utf-8") as f:
        weight_map = json.load(f).get("weight_map", {})
    for shard in sorted(set(weight_map.values())):
        if reason := _file_problem(os.path.join(folder, shard)):
            return CheckpointProblem(folder, shard, reason)
    return None


def _deepspeed_problem(folder: str, names: set[str]) -> CheckpointProblem | None:
    """DeepSpeed writes `global_step{N}/` (model and optimizer states), then `latest`, which names it. Its `.pt` files
    are checked as `torch.save` archives when they start like one (another checkpoint engine's are accepted)."""
    if "latest" not in names:
        return CheckpointProblem(folder, "latest", "is missing (DeepSpeed writes it after its checkpoint)")
    with open(os.path.join(folder, "latest"), encoding="utf-8") as f:
        tag = f.read().strip()
    tag_folder = os.path.join(folder, tag)
    if not tag or not os.path.isdir(tag_folder):
        return CheckpointProblem(folder, "latest", f"names {tag!r}, which is not a folder there")
    files = sorted(os.listdir(tag_folder))
    if not any(name.endswith("model_states.pt") for name in files):
        return CheckpointProblem(folder, f"{tag}/", "has no DeepSpeed model states (`*model_states.pt`)")
    for name in files:
        if name.endswith(".pt") and (reason := _file_problem(os.path.join(tag_folder, name), unknown_zip_ok=True)):
            return CheckpointProblem(folder, f"{tag}/{name}", reason)
    return None


def _fsdp_problem(folder: str, names: set[str], stem: str) -> CheckpointProblem | None:
    """FSDP's checkpoint of the model or the optimizer (accelerate's `save_fsdp_model` / `save_fsdp_optimizer`):
    `{stem}.bin`, `{stem}_{i}.bin` or per-rank `..._rank{r}.bin` files (checked with the other files), or a `{stem}_{i}`
    folder of torch.distributed.checkpoint shards, complete once its `.metadata` is written."""
    if any(re.fullmatch(rf"{stem}(_\d+)?(_rank\d+)?\.bin", name) for name in names):
        return None
    shard_folders = sorted(name for name in names if re.fullmatch(rf"{stem}_\d+", name))
    for name in shard_folders:
        if not os.path.isfile(os.path.join(folder, name, DISTRIBUTED_CHECKPOINT_METADATA)):
            return CheckpointProblem(folder, f"{name}/{DISTRIBUTED_CHECKPOINT_METADATA}", "is missing")
    if not shard_folders:
        return CheckpointProblem(folder, f"{stem}.bin", "is missing (nor is a sharded FSDP checkpoint there)")
    return None


# ----------------------------------------------------------------------------------------------------- resume
def sorted_checkpoints(output_dir: str) -> list[str]:
    """The `checkpoint-N` folders in `output_dir`, newest (highest N) first, as `get_last_checkpoint` ranks them."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = CHECKPOINT_PATTERN.match(name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            found.append((int(match.group(1)), os.path.join(output_dir, name)))
    return [path for _, path in sorted(found, reverse=True)]


def resolve_checkpoint(
    resume_from_checkpoint: str | bool, output_dir: str, layout: CheckpointLayout
) -> tuple[str, list[CheckpointProblem]]:
    """The checkpoint to resume from, and the newer incomplete ones passed over.

    `True` gives the newest complete `checkpoint-N` of `output_dir`; a `ValueError` when there is none (as the
    Trainer raises when there is no checkpoint at all). A path is checked: a `ValueError` names its missing or
    cut file, rather than silently resuming from another checkpoint.
    """
    if not isinstance(resume_from_checkpoint, bool):
        path = os.fspath(resume_from_checkpoint)
        if found := checkpoint_problem(path, layout):
            raise ValueError(
                f"Cannot resume from {path}: {found.file} {found.reason}. The checkpoint is incomplete (was training "
                "interrupted while it was written?); pass an older checkpoint, or `resume_from_checkpoint=True` for "
                "the newest complete one."
            )
        return path, []
    skipped = []
    for path in sorted_checkpoints(output_dir):
        found = checkpoint_problem(path, layout)
        if found is None:
            return path, skipped
        skipped.append(found)
    if not skipped:
        raise ValueError(f"No valid checkpoint found in output directory ({output_dir})")
    listed = "; ".join(str(found) for found in skipped)
    raise ValueError(
        f"No complete checkpoint in output directory ({output_dir}) to resume from: {listed}. Resume from scratch "
        "(`resume_from_checkpoint=None`) or repair a checkpoint."
    )


def incomplete_checkpoint_message(path: str, skipped: list[CheckpointProblem]) -> str:
    listed = "; ".join(str(found) for found in skipped)
    return (
        f"Resuming from {path}, the newest complete checkpoint: newer ones are incomplete (was training interrupted "
        f"while they were written?): {listed}. Training restarts from there and writes them again."
    )
