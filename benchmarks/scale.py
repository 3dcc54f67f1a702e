# Copyright 2026 The fssa_trl developers. Apache-2.0.
r"""Scale of the data path (issue 9): how long `NPEmbeddingRewardTrainer(...)` takes to build its episodes from a
large preference dataset, and how much memory that takes, at 100k to millions of pairs.

Data. A synthetic preference dataset in the frozen-embedding path's form: `user_id` (strings `u<k>`, rows of the
users interleaved in random order, as in a dataset not sorted by user) and `chosen_embedding` / `rejected_embedding`
(`--dim` random float32 values each, every vector distinct), `--pairs` rows with `--pairs_per_user` rows per user. It
is written once with `save_to_disk` under `--data_dir` and loaded with `load_from_disk` (memory-mapped, as a dataset
from `load_dataset` is), so that the Arrow data is not copied into the process by loading it.

Measurement. Each (pairs, pairs per user) runs in a fresh Python process: after the imports it loads the dataset,
builds `NPEmbeddingRewardTrainer(model=None, args, train_dataset)` with precomputed context embeddings (init s: the
whole constructor, validation, episodes and the context embedding table included) and trains `--steps` steps
(steps s: `trainer.train()`, its dataloader set-up included). Peak RSS is the `VmHWM` of that process at the end;
it includes the interpreter with torch / transformers / datasets imported ("base RSS", measured before loading), and
the memory-mapped Arrow pages the process touched. Arrow size is `dataset.data.nbytes` of the loaded dataset. The
goal (issue 9) on 2 cores: init <= 10 s per million pairs, linear in pairs, peak RSS <= 2x the Arrow size.

`--data_path_only` measures the data path alone, in the same processes: `check_preference_dataset` and
`build_episode_dataset` of the training pairs as the trainer calls them, with a stand-in store that keeps the vectors
as they come (no deduplication), so that neither the trainer nor `ContextEmbeddingStore` is in the numbers. Without
it, "of which store" is the CPU time spent in `ContextEmbeddingStore.vector_indices` (deduplicating the vectors
into its table) within init.

On a machine shared with other jobs, wall time depends on their load: "init CPU s" (process CPU time) is the measure
that does not, and on an idle machine it is close to the wall time (the construction runs on one thread).

Run::

    python -m benchmarks.scale                                        # 100k, 1M and 5M pairs; 10 and 100 per user
    python -m benchmarks.scale --data_path_only --output benchmarks/results/scale_cpu_data_path.json
    python -m benchmarks.scale --pairs 20000 100000 --pairs_per_user 10 --fssa_path /tmp/fssa_before \
        --label before --output benchmarks/results/scale_cpu_before.json    # other code (e.g. `git archive`)

`--fssa_path` puts another checkout's `fssa_trl` first on the measured processes' `sys.path`. A size that runs past
`--timeout` seconds is recorded as such. It prints a table and writes `benchmarks/results/scale_cpu.json`
(`--output`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

from .harness import markdown_table, run_stamp, write_json

GOAL_S_PER_MILLION = 10.0
GOAL_RSS_RATIO = 2.0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[100_000, 1_000_000, 5_000_000])
    parser.add_argument("--pairs_per_user", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--dim", type=int, default=32, help="Dimension of the precomputed embeddings.")
    parser.add_argument("--steps", type=int, default=20, help="Training steps after construction.")
    parser.add_argument("--num_targets", type=int, default=8)
    parser.add_argument("--max_context", type=int, default=6)
    parser.add_argument("--batch_size", type=int, default=8, help="Episodes per step.")
    parser.add_argument("--heldout_fraction", type=float, default=0.0)
    parser.add_argument("--redraw_episodes", action="store_true")
    parser.add_argument(
        "--data_path_only",
        action="store_true",
        help="Time validation and episodes alone (no trainer), with a store that keeps the vectors as one block.",
    )
    parser.add_argument("--timeout", type=int, default=600, help="Seconds one size may take (init and steps).")
    parser.add_argument("--data_dir", default="/tmp/fssa_scale_data", help="Where the datasets are written once.")
    parser.add_argument("--fssa_path", help="Directory holding the `fssa_trl` package to measure (default: this one).")
    parser.add_argument("--label", default="now", help="Names the code measured in the JSON (e.g. before / now).")
    parser.add_argument("--output", help="JSON path (default: benchmarks/results/scale_cpu.json).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--_measure", help=argparse.SUPPRESS)  # internal: one measurement, JSON on stdout
    parser.add_argument("--_make", help=argparse.SUPPRESS)  # internal: write one dataset
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------------- data
def dataset_path(args, pairs: int, pairs_per_user: int) -> str:
    return os.path.join(args.data_dir, f"pairs{pairs}_ppu{pairs_per_user}_dim{args.dim}_seed{args.seed}")


def make_dataset(path: str, pairs: int, pairs_per_user: int, dim: int, seed: int) -> None:
    """Write the synthetic dataset described in the module docstring to `path` (nothing if it is there)."""
    if os.path.exists(os.path.join(path, "dataset_info.json")):
        return
    import numpy as np
    import pyarrow as pa
    from datasets import Dataset

    rng = np.random.default_rng(seed)
    users = rng.permutation(np.arange(pairs) // pairs_per_user)
    user_ids = pa.array(np.char.add("u", users.astype(str)).astype(object), pa.string())
    offsets = pa.array(np.arange(0, (pairs + 1) * dim, dim, dtype=np.int32))
    columns = {"user_id": user_ids}
    for name in ("chosen_embedding", "rejected_embedding"):
        values = rng.standard_normal((pairs, dim), dtype=np.float32).reshape(-1)
        columns[name] = pa.ListArray.from_arrays(offsets, pa.array(values))
    Dataset(pa.table(columns)).save_to_disk(path, max_shard_size="1GB")


# --------------------------------------------------------------------------------------------------- measuring
def memory_bytes(field: str) -> int:
    """`VmHWM` (peak) or `VmRSS` (current) resident memory of this process, from `/proc/self/status` (Linux).

    Not `ru_maxrss`: Linux carries it over `fork` and `exec`, so a fresh process would report the peak of the process
    that started it (the driver, which may have written a large dataset)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def peak_rss_bytes() -> int:
    return memory_bytes("VmHWM")


def time_store(totals: dict[str, float]) -> None:
    """Add the CPU seconds spent in `ContextEmbeddingStore.add_vectors` to `totals["add_vectors_cpu_s"]`: the store's
    share of the construction, apart from the data path's (validation, grouping, episodes, dataset)."""
    from fssa_trl.data.embeddings import ContextEmbeddingStore

    # `vector_indices` (what the data path calls now; `add_vectors` calls it too), or `add_vectors` in older code.
    name = "vector_indices" if hasattr(ContextEmbeddingStore, "vector_indices") else "add_vectors"
    add_vectors = getattr(ContextEmbeddingStore, name)
    totals["add_vectors_cpu_s"] = 0.0

    def timed(self, vectors):
        started = time.process_time()
        try:
            return add_vectors(self, vectors)
        finally:
            totals["add_vectors_cpu_s"] += time.process_time() - started

    setattr(ContextEmbeddingStore, name, timed)  # this measuring process only


class BlockStore:
    """Stands in for `ContextEmbeddingStore` with `--data_path_only`: keeps the vectors it is given as they come (no
    deduplication, no table) and numbers them in order, so that the measurement is the data path's own cost."""

    embedder, dim = None, None

    def __init__(self):
        self.blocks, self.size = [], 0

    def add_vectors(self, vectors) -> range:
        self.blocks.append(vectors)
        self.size += len(vectors)
        return range(self.size - len(vectors), self.size)

    def vector_indices(self, vectors):
        import numpy as np

        return np.asarray(self.add_vectors(vectors))


def measure_data_path(args, dataset) -> dict[str, Any]:
    """`check_preference_dataset` and `build_episode_dataset` of the training pairs, as the trainer calls them."""
    from fssa_trl.data.episode_dataset import build_episode_dataset
    from fssa_trl.data.validation import check_preference_dataset

    started, started_cpu = time.perf_counter(), time.process_time()
    check_preference_dataset(dataset, "train", "user_id", True, text_required=False)
    episodes = build_episode_dataset(
        dataset,
        BlockStore(),
        "train",
        training=True,
        user_column="user_id",
        num_targets=args.num_targets,
        min_context=0,
        max_context=args.max_context,
        eval_context_sizes=[0, args.max_context],
        too_few_pairs="skip",
        episode_passes=1,
        seed=args.seed,
        token_columns=("margin",),
        redraw=args.redraw_episodes,
    )
    init_s, init_cpu_s = time.perf_counter() - started, time.process_time() - started_cpu
    return {"episodes": len(episodes), "init_s": init_s, "init_cpu_s": init_cpu_s, "add_vectors_cpu_s": 0.0}


def measure(args, pairs: int, pairs_per_user: int) -> dict[str, Any]:
    """One measurement, in this (fresh) process."""
    if args.fssa_path:  # before the working directory, which `python -m` puts first
        sys.path.insert(0, os.path.abspath(args.fssa_path))
    import datasets
    import torch
    import transformers

    import fssa_trl
    from fssa_trl import NPEmbeddingRewardConfig, NPEmbeddingRewardTrainer

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    base_rss = memory_bytes("VmRSS")
    dataset = datasets.load_from_disk(dataset_path(args, pairs, pairs_per_user))
    if args.data_path_only:
        measured = measure_data_path(args, dataset)
        return {
            "pairs": pairs,
            "pairs_per_user": pairs_per_user,
            "users": pairs // pairs_per_user,
            **measured,
            "steps": 0,
            "steps_s": 0.0,
            "base_rss_bytes": base_rss,
            "init_peak_rss_bytes": peak_rss_bytes(),
            "peak_rss_bytes": peak_rss_bytes(),
            "arrow_bytes": dataset.data.nbytes,
            "fssa_trl": os.path.dirname(fssa_trl.__file__),
        }
    config = NPEmbeddingRewardConfig(
        output_dir=os.path.join(args.data_dir, "output"),
        context_embedding="precomputed",
        num_targets=args.num_targets,
        max_context=args.max_context,
        per_device_train_batch_size=args.batch_size,
        heldout_fraction=args.heldout_fraction,
        redraw_episodes=args.redraw_episodes,
        max_steps=args.steps,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=10**6,
        use_cpu=True,
        seed=args.seed,
    )
    store_time: dict[str, float] = {}
    time_store(store_time)
    started, started_cpu = time.perf_counter(), time.process_time()
    trainer = NPEmbeddingRewardTrainer(model=None, args=config, train_dataset=dataset)
    init_s, init_cpu_s = time.perf_counter() - started, time.process_time() - started_cpu
    init_rss = peak_rss_bytes()
    started = time.perf_counter()
    trainer.train()
    steps_s = time.perf_counter() - started
    return {
        "pairs": pairs,
        "pairs_per_user": pairs_per_user,
        "users": pairs // pairs_per_user,
        "episodes": len(trainer.train_dataset),
        "init_s": init_s,
        "init_cpu_s": init_cpu_s,
        **store_time,
        "steps": args.steps,
        "steps_s": steps_s,
        "base_rss_bytes": base_rss,
        "init_peak_rss_bytes": init_rss,
        "peak_rss_bytes": peak_rss_bytes(),
        "arrow_bytes": dataset.data.nbytes,
        "fssa_trl": os.path.dirname(fssa_trl.__file__),
        "torch_threads": torch.get_num_threads(),
    }


def run_one(args, argv: list[str], pairs: int, pairs_per_user: int) -> dict[str, Any]:
    """Make the dataset if needed, then measure it in a fresh process (killed after `--timeout` seconds)."""
    path = dataset_path(args, pairs, pairs_per_user)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    started = time.perf_counter()
    if not os.path.exists(os.path.join(path, "dataset_info.json")):  # in its own process: this one stays small
        make = [sys.executable, "-m", "benchmarks.scale", *argv, "--_make", f"{pairs},{pairs_per_user}"]
        subprocess.run(make, cwd=root, check=True, capture_output=True)
    made_s = time.perf_counter() - started
    command = [sys.executable, "-m", "benchmarks.scale", *argv, "--_measure", f"{pairs},{pairs_per_user}"]
    try:
        done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=args.timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"pairs": pairs, "pairs_per_user": pairs_per_user, "error": f"timeout after {args.timeout} s"}
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-2000:]
        return {"pairs": pairs, "pairs_per_user": pairs_per_user, "error": f"exit {done.returncode}: {tail}"}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["dataset_written_s"] = made_s
    return result


# ----------------------------------------------------------------------------------------------------- report
def table(results: list[dict[str, Any]]) -> str:
    columns = [
        ("pairs", ">9"),
        ("pairs/user", ">10"),
        ("init s", ">7"),
        ("init CPU s", ">10"),
        ("CPU s per M pairs", ">17"),
        ("of which store", ">14"),
        ("steps s", ">7"),
        ("peak RSS GB", ">11"),
        ("base RSS GB", ">11"),
        ("Arrow GB", ">8"),
        ("RSS / Arrow", ">11"),
        ("(RSS - base) / Arrow", ">20"),
    ]
    rows = []
    gb = 1e9
    for r in results:
        if "error" in r:
            rows.append([f"{r['pairs']:,}", str(r["pairs_per_user"]), r["error"][:60], *[""] * 10])
            continue
        rows.append(
            [
                f"{r['pairs']:,}",
                str(r["pairs_per_user"]),
                f"{r['init_s']:.1f}",
                f"{r['init_cpu_s']:.1f}",
                f"{r['init_cpu_s'] / r['pairs'] * 1e6:.1f}",
                f"{r['add_vectors_cpu_s'] / r['pairs'] * 1e6:.1f}",
                f"{r['steps_s']:.1f}",
                f"{r['peak_rss_bytes'] / gb:.2f}",
                f"{r['base_rss_bytes'] / gb:.2f}",
                f"{r['arrow_bytes'] / gb:.3f}",
                f"{r['peak_rss_bytes'] / r['arrow_bytes']:.1f}",
                f"{(r['peak_rss_bytes'] - r['base_rss_bytes']) / r['arrow_bytes']:.2f}",
            ]
        )
    return markdown_table(columns, rows)


def main(argv=None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args._measure:
        pairs, pairs_per_user = (int(x) for x in args._measure.split(","))
        print(json.dumps(measure(args, pairs, pairs_per_user)))
        return {}
    if args._make:
        pairs, pairs_per_user = (int(x) for x in args._make.split(","))
        make_dataset(dataset_path(args, pairs, pairs_per_user), pairs, pairs_per_user, args.dim, args.seed)
        return {}
    import torch

    report = {**run_stamp("scale", torch.device("cpu"), args), "label": args.label, "results": []}
    report["machine"]["memory_gb"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    started = time.perf_counter()
    for pairs_per_user in args.pairs_per_user:
        for pairs in sorted(args.pairs):
            result = run_one(args, argv, pairs, pairs_per_user)
            report["results"].append(result)
            print(json.dumps(result), flush=True)
    report["total_s"] = time.perf_counter() - started
    print()
    print(table(report["results"]))
    print(
        f"\nGoals: init <= {GOAL_S_PER_MILLION:.0f} s per million pairs, linear in pairs; peak RSS <= "
        f"{GOAL_RSS_RATIO:.0f}x the Arrow size. Total {report['total_s']:.0f} s."
    )
    output = args.output or os.path.join(os.path.dirname(__file__), "results", "scale_cpu.json")
    write_json(report, output)
    print(f"Wrote {output}")
    return report


if __name__ == "__main__":
    main()
