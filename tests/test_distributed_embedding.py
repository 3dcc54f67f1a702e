# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""A distributed ContextEmbeddingStore with 2 CPU processes (`accelerate launch`): the texts are embedded once, split
between the processes, and both end with the table one process would build; a re-run over the cache embeds nothing.

One launch of `tests/scripts/embed_texts_tiny.py` (about 20 s on 2 cores) serves every default test. The ZeRO-3 test
(a second launch, DeepSpeed's hooks on a partitioned model) is marked slow.
"""

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from fssa_trl.data import ContextEmbeddingStore, TextEmbedder

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "scripts" / "embed_texts_tiny.py"
TIMEOUT = 300
# Accelerate runs several CPU processes only through its multi-GPU launcher (torchrun); `--use_cpu` alone starts one
# process, and MULTI_CPU needs mpirun. The script asks for CPU itself (`PartialState(cpu=True)`, gloo).
CONFIG = """\
compute_environment: LOCAL_MACHINE
distributed_type: MULTI_GPU
num_processes: 2
num_machines: 1
machine_rank: 0
mixed_precision: 'no'
use_cpu: true
rdzv_backend: static
same_network: true
"""
NUM_TEXTS, BATCH_SIZE = 150, 4  # 100 distinct chosen texts, then 50 new rejected ones
# Chunks of 4 batches x 4 texts x 2 processes = 32 texts, the cache written after each: 4 + 2 chunks and part files.
CHUNKS = ["--chunk_batches", "4", "--flush_bytes", "1"]


def load_script():
    spec = importlib.util.spec_from_file_location("embed_texts_tiny", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(root: Path, *args: str) -> list[dict]:
    """Run the script on 2 CPU processes; returns each process's record, by rank."""
    config = root / "two_cpu_processes.yaml"
    config.write_text(CONFIG)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    command += ["--main_process_port", str(free_port()), str(SCRIPT), "--output_dir", str(root / "out")]
    command += ["--cache_dir", str(root / "cache"), "--num_texts", str(NUM_TEXTS), "--batch_size", str(BATCH_SIZE)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*command, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return [json.loads((root / "out" / f"rank{rank}.json").read_text()) for rank in range(2)]


@pytest.fixture(scope="module")
def script():
    return load_script()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("embed")
    return root, launch(root, *CHUNKS)


@pytest.fixture(scope="module")
def one_process(script) -> tuple[list[int], torch.Tensor]:
    """The same texts through a store in this one process (another batch size: other padding, same vectors)."""
    model, tokenizer = script.tiny_embedder_model()
    store = ContextEmbeddingStore(TextEmbedder(model, tokenizer, batch_size=7, name="tiny"))
    chosen, rejected = script.tiny_texts(NUM_TEXTS)
    return store.add_texts(chosen) + store.add_texts(rejected), store.table


def test_texts_are_split_between_the_processes(two_processes, script):
    _, records = two_processes
    assert [(r["rank"], r["world_size"]) for r in records] == [(0, 2), (1, 2)]
    chosen, rejected = script.tiny_texts(NUM_TEXTS)
    distinct = len(set(chosen) | set(rejected))
    counts = [r["passes"][0]["texts_embedded"] for r in records]
    assert sum(counts) == distinct == NUM_TEXTS  # each text embedded once, by one process
    assert all(abs(count - distinct / 2) <= 6 for count in counts), counts  # about half each (6 chunks)


def test_processes_end_with_the_same_table(two_processes):
    root, records = two_processes
    first, second = (r["passes"][0] for r in records)
    assert first["indices"] == second["indices"]
    assert first["table_sha256"] == second["table_sha256"]
    assert torch.equal(
        load_file(root / "out" / "rank0.safetensors")["table"], load_file(root / "out" / "rank1.safetensors")["table"]
    )


def test_table_is_the_one_process_table(two_processes, one_process):
    root, records = two_processes
    indices, table = one_process
    assert records[0]["passes"][0]["indices"] == indices  # same rows in the same order
    distributed = load_file(root / "out" / "rank0.safetensors")["table"]
    torch.testing.assert_close(distributed, table, atol=1e-5, rtol=1e-5)


def test_rerun_over_the_cache_embeds_nothing(two_processes, one_process, script):
    root, records = two_processes
    for record in records:  # a fresh store on each process, in the same run
        rerun = record["passes"][1]
        assert rerun["texts_embedded"] == 0
        assert (rerun["indices"], rerun["table_sha256"]) == ((p := record["passes"][0])["indices"], p["table_sha256"])

    # One process, later: the cache written by the distributed run (one part per chunk, each written whole once).
    parts = sorted((root / "cache").iterdir())
    assert len(parts) == 6 and all(
        part.name.startswith("embeddings-") and part.suffix == ".safetensors" for part in parts
    )
    model, tokenizer = script.tiny_embedder_model()
    embedder = script.CountingEmbedder(model, tokenizer, batch_size=BATCH_SIZE, name="tiny")
    with safe_open(str(parts[0]), "pt") as f:
        assert f.metadata()["fingerprint"] == embedder.fingerprint
    store = ContextEmbeddingStore(embedder, cache_dir=str(root / "cache"))
    chosen, rejected = script.tiny_texts(NUM_TEXTS)
    assert store.add_texts(chosen) + store.add_texts(rejected) == one_process[0]
    assert embedder.texts == 0
    assert torch.equal(store.table, load_file(root / "out" / "rank0.safetensors")["table"])


@pytest.mark.slow
def test_zero3_partitioned_embedder(tmp_path, script):
    """Every parameter of the embedder partitioned by ZeRO-3 and DeepSpeed's hooks on it, so every forward pass
    gathers parameters: the processes' shares are padded to as many forward passes (without, this run fails with
    "Cannot partition a param in flight" or a gloo "Connection reset by peer")."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install fssa_trl[deepspeed])")
    # Batches of one text and 149 texts: the shares of the last chunk differ by one forward pass.
    records = launch(tmp_path, *CHUNKS, "--zero3", "engine", "--batch_size", "1", "--num_texts", "149")
    first, second = (r["passes"][0] for r in records)
    assert first["forwards"] == second["forwards"]
    assert first["table_sha256"] == second["table_sha256"]
    assert first["texts_embedded"] + second["texts_embedded"] == 149 + 1  # one padding text
    model, tokenizer = script.tiny_embedder_model()
    store = ContextEmbeddingStore(TextEmbedder(model, tokenizer, name="tiny"))
    chosen, rejected = script.tiny_texts(149)
    assert store.add_texts(chosen) + store.add_texts(rejected) == first["indices"]
    distributed = load_file(tmp_path / "out" / "rank0.safetensors")["table"]
    torch.testing.assert_close(distributed, store.table, atol=1e-5, rtol=1e-5)
