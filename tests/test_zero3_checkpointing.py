# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Gradient checkpointing under DeepSpeed ZeRO-3 with the gated LoRA trainers.

TRL forces reentrant checkpointing for PEFT models under ZeRO-3 (a workaround for a DeepSpeed bug fixed in 0.19.3),
and reentrant checkpointing gives the hypernetwork no gradient from the gated layers: its gates enter the checkpointed
layers from outside the checkpointed function's inputs. The trainers set non-reentrant checkpointing back
(`GatedLoRATrainerMixin._np_non_reentrant_checkpointing`). Here both trainers train under ZeRO-3 (2 CPU processes,
every parameter partitioned) with and without checkpointing in one `accelerate launch`, and must end with the same
weights: the recompute re-gathered the partitioned weights and ran with the gates, whose gradients reached the
hypernetwork. BENCHMARKS.md, "ZeRO-3 with gradient checkpointing", has the reproductions and the memory it saves.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from fssa_trl.modeling import NPModules, SteerableConfig
from fssa_trl.trainer import gated_lora_mixin
from fssa_trl.trainer.gated_lora_mixin import GatedLoRATrainerMixin

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "scripts" / "zero3_checkpointing_tiny.py"
ZERO3_CPU = REPO / "recipes" / "accelerate_configs" / "zero3_cpu.yaml"
# A fresh machine JIT-compiles DeepSpeed's shared-memory op on the first CPU launch (minutes); warm, about 70 s.
TIMEOUT = 600
TRL_FORCING_WARNING = "`use_reentrant` is forced to `True`"


@pytest.fixture(scope="module")
def zero3_runs(tmp_path_factory):
    """The four runs of `zero3_checkpointing_tiny.py` (reward and DPO, checkpointing off and on) and the launch's
    output."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install fssa_trl[deepspeed])")
    root = tmp_path_factory.mktemp("zero3_checkpointing")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ZERO3_CPU)]
    command += ["--main_process_port", port, str(SCRIPT), "--output_dir", str(root)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return root, result.stdout + result.stderr


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.parametrize("kind", ["reward", "dpo"])
def test_zero3_checkpointing_trains_as_without(zero3_runs, kind):
    """The same losses and weights (LoRA and NP modules) with and without non-reentrant checkpointing under ZeRO-3,
    and the checkpointed run really recomputed the gated layers, with their gates, inside backward on both processes.
    Reentrant checkpointing fails this: its NP modules differed by up to 8e-3 after 3 DPO steps, and the
    zero-initialised hypernetwork output layer stayed exactly 0 (BENCHMARKS.md)."""
    root, output = zero3_runs
    off, on = root / f"{kind}_off", root / f"{kind}_on"
    info = read_json(on / "run_info.json")
    assert (info["distributed_type"], info["num_processes"], info["zero_stage"]) == ("DistributedType.DEEPSPEED", 2, 3)

    checkpointing = read_json(on / "checkpointing.json")
    assert checkpointing["args_use_reentrant"] is False
    assert checkpointing["checkpointed_layers"] == checkpointing["decoder_layers"] > 0
    assert checkpointing["layers_use_reentrant"] == [False]
    recomputed = checkpointing["recomputed_by_process"]
    assert len(recomputed) == 2 and all(count >= info["global_step"] for count in recomputed)
    assert checkpointing["gated_recomputes_by_process"] == recomputed
    not_checkpointed = read_json(off / "checkpointing.json")
    assert not_checkpointed["checkpointed_layers"] == 0 and not_checkpointed["recomputed_by_process"] == [0, 0]
    # The DPO run gives `use_reentrant=False` explicitly: TRL no longer warns that it forces `True`.
    assert TRL_FORCING_WARNING not in output

    assert info["train_losses"] == pytest.approx(read_json(off / "run_info.json")["train_losses"], abs=1e-6)
    for name in ("adapter_model.safetensors", "fssa_np.safetensors"):
        expected, trained = load_file(off / name), load_file(on / name)
        assert trained.keys() == expected.keys()
        for key, value in expected.items():
            torch.testing.assert_close(trained[key], value, atol=1e-6, rtol=1e-5, msg=f"{name}: {key}")

    # The gates' gradient reached the hypernetwork: its zero-initialised output layer was trained.
    fresh = NPModules.from_config(SteerableConfig.from_pretrained(str(on))).state_dict()
    trained = load_file(on / "fssa_np.safetensors")
    zero_init = [k for k, v in fresh.items() if k.startswith("hypernetwork.") and not v.any()]
    assert zero_init and all(trained[k].any() for k in zero_init)


# ------------------------------------------------------------------------------------ before TRL's __init__
def zero3_args(**kwargs) -> SimpleNamespace:
    """The fields `_np_check_checkpointing` reads, as TRL reads them: a ZeRO-3 run with gradient checkpointing."""
    fields = {"gradient_checkpointing": True, "gradient_checkpointing_kwargs": None}
    return SimpleNamespace(**{**fields, "deepspeed_plugin": SimpleNamespace(zero_stage=3), **kwargs})


def test_explicit_non_reentrant_is_not_shown_to_trl():
    """TRL would warn that it forces `use_reentrant=True`; the trainer sets `False` again after TRL's __init__."""
    kwargs = {"use_reentrant": False, "preserve_rng_state": False}
    GatedLoRATrainerMixin._np_check_checkpointing(zero3_args(gradient_checkpointing_kwargs=kwargs))
    assert kwargs == {"preserve_rng_state": False}


def test_reentrant_is_refused_before_the_model_loads():
    for plugin in (None, SimpleNamespace(zero_stage=3)):
        args = zero3_args(deepspeed_plugin=plugin, gradient_checkpointing_kwargs={"use_reentrant": True})
        with pytest.raises(ValueError, match="Reentrant gradient checkpointing does not propagate"):
            GatedLoRATrainerMixin._np_check_checkpointing(args)


def test_old_deepspeed_is_refused_with_a_pointer_to_the_benchmarks(monkeypatch):
    """DeepSpeed < 0.19.3 breaks non-reentrant checkpointing of frozen weights under ZeRO-3: refused before training,
    naming the fix and the BENCHMARKS.md section with the reproduction and the memory cost of turning it off."""
    monkeypatch.setattr(gated_lora_mixin, "version", lambda name: "0.19.2")
    with pytest.raises(
        ValueError, match=r"deepspeed>=0\.19\.3 \(found 0\.19\.2\).*ZeRO-3 with gradient checkpointing"
    ):
        GatedLoRATrainerMixin._np_check_checkpointing(zero3_args())
    GatedLoRATrainerMixin._np_check_checkpointing(zero3_args(deepspeed_plugin=SimpleNamespace(zero_stage=2)))
    GatedLoRATrainerMixin._np_check_checkpointing(zero3_args(gradient_checkpointing=False))
    section = gated_lora_mixin.ZERO3_CHECKPOINTING_DOCS.split('"')[1]
    assert f"\n## {section}\n" in (REPO / "BENCHMARKS.md").read_text()
