# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Active onboarding (issue 11): held-out accuracy of simulated new users after 1, 2, 3, 5 and 10 questions chosen by
`bald`, `entropy` and `random` (`fssa_trl.active.suggest_queries`), how many questions each active strategy needs to
match random's accuracy after 10, and how long ranking 1,000 candidate pairs takes.

Models and protocol are those of `examples/active_onboarding.py` (imported from it, so the two cannot drift): NP-BTL
with a Gaussian latent on frozen embeddings (`NPEmbeddingRewardTrainer`), one model per seed (`SYNTHETIC_TRAINING` /
`DEFAULT_TRAINING`), trained here on precomputed embeddings. Each simulated user starts from an empty context and
answers, truthfully, one question at a time from their own pool; after each, the model is scored on the user's
held-out pairs. Cells are mean ± std over (user, seed) runs.

Tasks:

- `synthetic`: `fssa_trl.testing_utils.trait_preference_task`, 8 users (like / dislike of 3 traits); a third of each pool
  splits users by one trait, a third everyone answers alike (consensus), a third is a coin flip for everyone (tie).
  150 training pairs per user; per seed a pool of 30 and 40 held-out decisive pairs per user, freshly drawn.
- `constructed`: the embedded default of the main job (PandaLM responses, users "concise" / "detailed", who
  disagree on every pair), all-MiniLM-L6-v2 embeddings (cached in `outputs/embedding-cache`, as
  `benchmarks.decoder_conditioning`); each user's test pairs are split 50 / 50 into pool and held-out per seed.
- `hh`: HH-RLHF pairs relabelled for helpful / harmless (`../shared/data/hh_rlhf_relabeled_dpl`, objective = user;
  data and embedding as `benchmarks.decoder_conditioning`), same protocol as `constructed`; skipped with a message
  where the folder is absent.

Ranking time: one `suggest_queries(k=1)` call over 1,000 candidate pairs, median of 5 calls after a warm-up, for
the synthetic model (5-d embeddings), the constructed model on precomputed 384-d embeddings, and the same NP modules
behind a MiniLM text embedder (text candidates: the first call embeds the 456 distinct texts, later calls read the
model's cache); and greedy BatchBALD with k = 5.

Run (2 CPU cores, embeddings cached: about 6 minutes)::

    python -m benchmarks.active
    python -m benchmarks.active --tasks synthetic --seeds 0 1 2 3

It prints Markdown tables and writes `benchmarks/results/active.json`.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import statistics
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch
import transformers

from fssa_trl.active import OnboardingCurves, simulate_onboarding, split_users, suggest_queries
from fssa_trl.modeling import SteerableEmbeddingRewardModel
from fssa_trl.testing_utils import trait_preference_task

from . import decoder_conditioning as real
from .harness import markdown_table, run_stamp, write_json

HERE = os.path.dirname(os.path.abspath(__file__))
TASKS = ("synthetic", "constructed", "hh")
QUESTIONS = (0, 1, 2, 3, 5, 10)
STRATEGIES = ("bald", "entropy", "random")
NUM_CANDIDATES = 1000


def onboarding_example():
    """`examples/active_onboarding.py` as a module: its training settings and `train_model`."""
    path = os.path.join(real.ROOT, "examples", "active_onboarding.py")
    spec = importlib.util.spec_from_file_location("active_onboarding", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def run_task(task: str, seeds: Sequence[int], example, data=None) -> tuple[OnboardingCurves, list, dict]:
    """Train one model per seed and simulate onboarding; returns the curves, the models and training times."""
    curves, models, seconds = OnboardingCurves(name=task), [], {}
    for seed in seeds:
        start = time.perf_counter()
        if task == "synthetic":
            sizes = example.SYNTHETIC_PAIRS
            model = example.train_model(
                trait_preference_task(sizes["train"], seed=100), example.SYNTHETIC_TRAINING, seed
            )
            pool = trait_preference_task(sizes["pool"], seed=seed)
            heldout = trait_preference_task(sizes["heldout"], seed=50 + seed, kinds={"trait": 1, "consensus": 1})
        else:
            model = example.train_model(data["train"], example.DEFAULT_TRAINING, seed)
            pool, heldout = split_users(data["test"], 0.5, seed)
        seconds[seed] = round(time.perf_counter() - start, 1)
        curves += simulate_onboarding(model, pool, heldout, STRATEGIES, max(QUESTIONS), seed)
        models.append(model)
        print(f"{task}, seed {seed}: trained in {seconds[seed]} s, simulated", flush=True)
    return curves, models, seconds


def accuracy_table(curves: OnboardingCurves) -> tuple[str, dict]:
    columns = [("strategy", "<8")] + [(f"{q} q", ">11") for q in QUESTIONS] + [("= random@10 after", ">17")]
    rows, summary = [], {}
    for strategy in curves.strategies:
        needed = curves.questions_to_match(strategy, "random", max(QUESTIONS))
        cells = [f"{100 * curves.mean(strategy, q):.1f} ± {100 * curves.std(strategy, q):.1f}" for q in QUESTIONS]
        rows.append([strategy, *cells, "—" if strategy == "random" else str(needed)])
        summary[strategy] = {
            "mean": {q: 100 * curves.mean(strategy, q) for q in QUESTIONS},
            "std": {q: 100 * curves.std(strategy, q) for q in QUESTIONS},
            "questions_to_match_random_at_10": needed,
        }
    return markdown_table(columns, rows), summary


def median_seconds(call, repeats: int = 5) -> float:
    call()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ranking_times(synthetic_model, constructed_model, constructed_data) -> list[list[str]]:
    """Seconds to rank `NUM_CANDIDATES` candidates with `suggest_queries`, per model and strategy."""
    rng = np.random.default_rng(0)
    rows = []

    def pairs_of(values, key_a, key_b):
        picks = [rng.choice(len(values), 2, replace=False) for _ in range(NUM_CANDIDATES)]
        return [{key_a: values[i], key_b: values[j]} for i, j in picks]

    synthetic = trait_preference_task(NUM_CANDIDATES // 8, seed=9).to_list()
    cases = [("synthetic (5-d, precomputed)", synthetic_model, synthetic)]
    if constructed_model is not None:
        vectors = {}
        for split in constructed_data.values():
            for column in ("chosen", "rejected"):
                for prompt, text, vector in zip(
                    split["prompt"], split[column], split[f"{column}_embedding"], strict=True
                ):
                    vectors[prompt + text] = vector
        embedded = pairs_of(list(vectors.values()), "chosen_embedding", "rejected_embedding")
        cases.append(("constructed (384-d, precomputed)", constructed_model, embedded))
        responses = sorted(
            {r for split in constructed_data.values() for c in ("chosen", "rejected") for r in split[c]}
        )
        texts = pairs_of(responses, "chosen", "rejected")
        text_model = SteerableEmbeddingRewardModel(
            constructed_model.model, None, constructed_model.fssa_config, real.minilm_embedder(128)
        )
        start = time.perf_counter()
        suggest_queries(text_model, texts, strategy="bald")
        first = time.perf_counter() - start
        rows.append(["constructed (MiniLM, text), first call", "bald", "1", f"{first:.2f}"])
        cases.append(("constructed (MiniLM, text), cached", text_model, texts))
    for name, model, candidates in cases:
        for strategy, k in (("bald", 1), ("entropy", 1), ("random", 1), ("bald", 5)):
            seconds = median_seconds(
                lambda m=model, c=candidates, s=strategy, k=k: suggest_queries(m, c, k=k, strategy=s)
            )
            rows.append([name, strategy, str(k), f"{seconds:.3f}"])
    return rows


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="Seeds of models, pools, draws.")
    parser.add_argument("--embedding-cache-dir", default=os.path.join(real.ROOT, "outputs", "embedding-cache"))
    parser.add_argument("--hh-pairs-per-user", type=int, default=500, help="Pairs drawn per HH objective.")
    parser.add_argument("--output", default=os.path.join(HERE, "results", "active.json"))
    cli = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    transformers.logging.set_verbosity_error()
    # Tiny MLPs: per-op overhead dominates, and two threads on a busy 2-core machine made each step ~20x slower.
    torch.set_num_threads(1)
    example = onboarding_example()

    start = time.perf_counter()
    report = {**run_stamp("active", torch.device("cpu"), cli), "tasks": {}}
    models, datasets_ = {}, {}
    for task in cli.tasks:
        data = None
        if task == "hh" and not os.path.exists(real.HH_DATA):
            print(f"Skipping the hh task: {real.HH_DATA} is absent (see ../shared/data/README.md).")
            report["tasks"][task] = {"skipped": f"{real.HH_DATA} is absent"}
            continue
        if task != "synthetic":
            data, _ = real.real_data(task, cli.embedding_cache_dir, cli.hh_pairs_per_user)
            datasets_[task] = data
        curves, trained, seconds = run_task(task, cli.seeds, example, data)
        models[task] = trained[0]
        table, summary = accuracy_table(curves)
        print(f"\n{task}: held-out accuracy (%) after n questions, mean ± std over users and seeds {cli.seeds}")
        print(table + "\n", flush=True)
        report["tasks"][task] = {"table": table, "summary": summary, "train_seconds": seconds, **curves.__dict__}

    timing = []
    if "synthetic" in models:
        timing = ranking_times(models["synthetic"], models.get("constructed"), datasets_.get("constructed"))
        columns = [("model", "<40"), ("strategy", "<8"), ("k", ">2"), ("seconds", ">8")]
        table = markdown_table(columns, timing)
        print(f"Seconds to rank {NUM_CANDIDATES} candidates (suggest_queries; median of 5 after a warm-up):\n{table}")
        report["ranking_seconds"] = {"table": table, "rows": timing}
    report["total_seconds"] = round(time.perf_counter() - start, 1)
    print(f"(total {report['total_seconds']:.0f} s)")
    write_json(report, cli.output)
    return report


if __name__ == "__main__":
    main()
