# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Steering on real data (issue 7): few-shot NP-BTL beside a per-user oracle and a pooled model, on held-out pairs.

All four methods are `NPEmbeddingRewardTrainer` on frozen all-MiniLM-L6-v2 embeddings (the paper's reward setting),
with the data, embedding cache, training settings (`REAL_TRAINING`, concat decoder) and evaluation of
`benchmarks.decoder_conditioning` (imported, not copied):

- `np_btl`: the paper's conditional NP (`context_pair_features="concat"`, `aggregation="mean"`), trained with
  contexts of 0-10 pairs.
- `np_btl_odd`: the same with the odd encoder and shrunk-mean aggregation (`context_pair_features="difference"`,
  `aggregation="shrunk_mean"`): the empty context maps to z = 0 and evidence moves z away from it gradually.
- `oracle`: per user, a context-free model (`max_context=0`, `latent_dim=0`: the decoder is MLP(e(x, y)), one
  Bradley-Terry reward model) trained on that user's training pairs only and evaluated on that user's held-out
  pairs. Same settings, so it passes over its pairs as often as the others (half their optimizer steps with 2 users).
  The bar a few-shot model would reach with the user's whole training set and a model of its own.
- `pooled`: the same context-free model trained on all users' training pairs (the paper's BTL baseline),
  evaluated per user.

NP-BTL accuracy is on held-out pairs at C = 0 / 1 / 3 / 5 / 10 context pairs of the same user, drawn from the other
held-out pairs (contexts disjoint from targets; `evaluate_few_shot`, one target per draw, 5 draws per pair). The
context-free models are evaluated the same way; their accuracy does not depend on C (checked; shown once, in the
C = 0 column). "mean over users" is the mean of the per-user accuracies of one seed; every cell is the mean ± sample
standard deviation over seeds (seed of initialisation, episodes and context draws; the data split is fixed).

Tasks (`--task`, see `benchmarks/decoder_conditioning.py`): `constructed` (PandaLM responses, users "concise" and
"detailed" that disagree on every pair) and `hh` (HH-RLHF pairs relabelled for helpfulness or harmlessness,
`../shared/data/hh_rlhf_relabeled_dpl`; each pair carries one objective's label; skipped where the folder is absent).

Run (2 shared CPU cores, cached embeddings: 5 models per seed, 10-40 s each; 3 seeds take about 7 minutes for
`constructed` and 10 for `hh`)::

    python -m benchmarks.real_steering --task constructed --seeds 0 1 2
    python -m benchmarks.real_steering --task hh --seeds 0 1 2

Each prints Markdown tables and writes `benchmarks/results/real_steering_<task>.json` (per-seed values, per-model
training times, machine facts and date).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Sequence

import numpy as np
import torch
import transformers
from datasets import DatasetDict

from fssa_trl import FewShotResults

from . import decoder_conditioning as real
from .harness import markdown_table, run_stamp, write_json

HERE = os.path.dirname(os.path.abspath(__file__))
TASKS = ("constructed", "hh")
CONTEXT_SIZES = real.CONTEXT_SIZES
# Config fields each method overrides in `real.REAL_TRAINING` (the concat decoder for all).
NP_METHODS = {
    "np_btl": {},
    "np_btl_odd": dict(context_pair_features="difference", aggregation="shrunk_mean"),
}
CONTEXT_FREE = dict(max_context=0, latent_dim=0)
METHODS = (*NP_METHODS, "oracle", "pooled")
MEAN = "mean over users"


def one_user(data: DatasetDict, user: str) -> DatasetDict:
    """The splits of `data` restricted to `user`'s pairs."""
    return DatasetDict(
        {name: split.filter(lambda u: u == user, input_columns="user_id") for name, split in data.items()}
    )


def per_user(results: FewShotResults, users: Sequence[str], user_of_results: str | None = None) -> dict:
    """`{user: {context size: accuracy (%)}}` of `results`; with `user_of_results`, only that user's entry."""
    wanted = [user_of_results] if user_of_results else users
    return {u: {c: 100 * results.accuracy(c, u) for c in CONTEXT_SIZES} for u in wanted}


def context_spread(accuracy: dict) -> float:
    """Largest change of a context-free model's accuracy across context sizes (0 when it ignores the context)."""
    return max(max(sizes.values()) - min(sizes.values()) for sizes in accuracy.values())


def run_seed(data: DatasetDict, users: Sequence[str], seed: int) -> tuple[dict, list[dict]]:
    """Train and evaluate every method once: `{method: {user: {size: accuracy (%)}}}` and one record per model."""
    accuracy, runs = {}, []

    def record(method: str, results: FewShotResults, seconds: float, user: str | None = None) -> None:
        print(f"seed {seed}, {results}\n(trained in {seconds:.0f} s)\n", flush=True)
        accuracy.setdefault(method, {}).update(per_user(results, users, user))
        runs.append(
            {"seed": seed, "method": method, "user": user, "train_seconds": round(seconds, 1), **results.to_dict()}
        )

    for method, overrides in NP_METHODS.items():
        results, seconds = real.train_and_evaluate_real(data, "concat", seed, name=method, **overrides)
        record(method, results, seconds)
    for user in users:
        results, seconds = real.train_and_evaluate_real(
            one_user(data, user), "concat", seed, name=f"oracle[{user}]", **CONTEXT_FREE
        )
        record("oracle", results, seconds, user)
    results, seconds = real.train_and_evaluate_real(data, "concat", seed, name="pooled", **CONTEXT_FREE)
    record("pooled", results, seconds)
    for method in ("oracle", "pooled"):
        spread = context_spread(accuracy[method])
        if spread > 1e-9:
            print(f"Warning: the context-free {method} model's accuracy moved by {spread:.2f} points with C.")
    for by_user in accuracy.values():
        by_user[MEAN] = {c: float(np.mean([by_user[u][c] for u in users])) for c in CONTEXT_SIZES}
    return accuracy, runs


def tables(accuracy: dict, users: Sequence[str]) -> str:
    """One Markdown table per user group (mean over users first): rows = method, columns = context size.
    `accuracy[method][user][size]` lists one accuracy (%) per seed; context-free methods are shown once."""
    columns = [("method", "<21")] + [(f"C = {c}", ">11") for c in CONTEXT_SIZES]
    out = []
    for user in [MEAN, *users]:
        rows = []
        for method in METHODS:
            label = method if method in NP_METHODS else f"{method} (no context)"
            cells = [real.mean_std(accuracy[method][user][c]) for c in CONTEXT_SIZES]
            if method not in NP_METHODS:
                cells = [cells[0]] + ["—"] * (len(cells) - 1)
            rows.append([label, *cells])
        title = MEAN if user == MEAN else f"user {user}"
        out.append(f"{title}:\n{markdown_table(columns, rows)}")
    return "\n\n".join(out)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="constructed", choices=TASKS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="Seeds of init, episodes, contexts.")
    parser.add_argument("--embedding-cache-dir", default=os.path.join(real.ROOT, "outputs", "embedding-cache"))
    parser.add_argument("--hh-pairs-per-user", type=int, default=500, help="Pairs drawn per HH objective.")
    parser.add_argument("--output", default=None, help="Defaults to results/real_steering_<task>.json.")
    cli = parser.parse_args(argv)
    cli.output = cli.output or os.path.join(HERE, "results", f"real_steering_{cli.task}.json")
    logging.basicConfig(level=logging.WARNING)
    transformers.logging.set_verbosity_error()
    # Tiny MLPs: per-op overhead dominates, and two threads on a busy 2-core machine made each step ~20x slower.
    torch.set_num_threads(1)

    if cli.task == "hh" and not os.path.exists(real.HH_DATA):
        print(f"Skipping the hh task: {real.HH_DATA} is absent (see ../shared/data/README.md).")
        return {}
    start = time.perf_counter()
    data, facts = real.real_data(cli.task, cli.embedding_cache_dir, cli.hh_pairs_per_user)
    print(f"Embedded {facts['distinct_texts']} distinct texts in {facts['embedding_seconds']} s", flush=True)
    users = sorted(set(data["test"]["user_id"]))
    accuracy: dict = {}
    runs = []
    for seed in cli.seeds:
        by_method, seed_runs = run_seed(data, users, seed)
        runs += seed_runs
        for method, by_user in by_method.items():
            for user, sizes in by_user.items():
                for size, value in sizes.items():
                    accuracy.setdefault(method, {}).setdefault(user, {}).setdefault(size, []).append(value)
    table = tables(accuracy, users)
    total = time.perf_counter() - start
    print(f"Accuracy (%) on held-out pairs, mean ± std over seeds {cli.seeds}:\n{table}\n(total {total:.0f} s)")

    report = {
        **run_stamp("real_steering", torch.device("cpu"), cli),
        "task": cli.task,
        "seeds": cli.seeds,
        "context_sizes": list(CONTEXT_SIZES),
        "training": real.REAL_TRAINING,
        "method_overrides": {**NP_METHODS, "oracle": CONTEXT_FREE, "pooled": CONTEXT_FREE},
        "eval": {"num_targets": real.REAL_EVAL_NUM_TARGETS, "context_draws": real.REAL_EVAL_CONTEXT_DRAWS},
        "data": facts,
        "accuracy": {
            m: {u: {str(s): v for s, v in sizes.items()} for u, sizes in by.items()} for m, by in accuracy.items()
        },
        "table": table,
        "total_seconds": round(total, 1),
        "runs": runs,
    }
    write_json(report, cli.output)
    return report


if __name__ == "__main__":
    main()
