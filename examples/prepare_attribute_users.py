# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Build a preference dataset with a user column from a multi-attribute rated dataset (the paper's UltraFeedback
setting): each rated attribute becomes a user, and each pair of responses becomes one row per attribute that prefers
one of them (`fssa_trl.users_from_attributes`). The training recipes in `recipes/<model>/` read its output.

```
python examples/prepare_attribute_users.py --dataset_name openbmb/UltraFeedback \
    --attributes helpfulness honesty --only_conflicting --output_dir data/ultrafeedback-users
```

The input follows UltraFeedback's layout: an `instruction` column and a `completions` column holding, per response,
`response` and `annotations[<attribute>]["Rating"]` (a number as a string, or "N/A"). Every pair of a prompt's
responses is used. Train and test are split by prompt (no prompt in both), and written as
`<output_dir>/train.parquet` and `<output_dir>/test.parquet`, which `load_dataset(<output_dir>)` reads as two splits.
"""

from __future__ import annotations

import argparse
import itertools
import os

from datasets import Dataset, load_dataset

from fssa_trl import users_from_attributes


def rating(completion: dict, attribute: str) -> float | None:
    """The completion's rating for `attribute`, `None` when missing or "N/A"."""
    value = (completion.get("annotations") or {}).get(attribute) or {}
    value = value.get("Rating") if isinstance(value, dict) else value
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def response_pairs(batch: dict, attributes: list[str]) -> dict:
    """Every pair of each prompt's responses, with the two responses' ratings `[a, b]` per attribute (`-1` for a pair
    that an attribute cannot decide: a missing rating)."""
    out = {"prompt": [], "response_a": [], "response_b": [], **{a: [] for a in attributes}}
    for prompt, completions in zip(batch["instruction"], batch["completions"], strict=True):
        for first, second in itertools.combinations(completions, 2):
            out["prompt"].append(prompt)
            out["response_a"].append(first["response"])
            out["response_b"].append(second["response"])
            for attribute in attributes:
                scores = [rating(first, attribute), rating(second, attribute)]
                out[attribute].append(-1 if None in scores else scores)
    return out


def prepare(dataset: Dataset, attributes: list[str], only_conflicting: bool, test_size: float, seed: int):
    """`(train, test)` preference datasets with a `user_id` column (one user per attribute), split by prompt."""
    for column in ("instruction", "completions"):
        if column not in dataset.column_names:
            raise ValueError(
                f"The dataset has no {column!r} column (has {dataset.column_names}): this script reads UltraFeedback's "
                "layout. For a dataset with one row per pair and attribute columns, call "
                "`fssa_trl.users_from_attributes` directly."
            )
    pairs = dataset.map(
        response_pairs,
        batched=True,
        remove_columns=dataset.column_names,
        fn_kwargs={"attributes": attributes},
    )
    rows = users_from_attributes(pairs, attributes, only_conflicting=only_conflicting)
    prompts = sorted(set(rows["prompt"]))
    split = Dataset.from_dict({"prompt": prompts}).train_test_split(test_size=test_size, seed=seed)
    test_prompts = set(split["test"]["prompt"])
    in_test = [p in test_prompts for p in rows["prompt"]]
    train = rows.select([i for i, t in enumerate(in_test) if not t])
    test = rows.select([i for i, t in enumerate(in_test) if t])
    return train, test


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_name", default="openbmb/UltraFeedback", help="A hub id or local dataset folder.")
    parser.add_argument("--dataset_split", default="train")
    parser.add_argument("--attributes", nargs="+", default=["helpfulness", "honesty"], help="Attributes = users.")
    parser.add_argument("--only_conflicting", action="store_true", help="Keep pairs the attributes disagree on.")
    parser.add_argument("--test_size", type=float, default=0.05, help="Fraction of prompts held out for test.")
    parser.add_argument("--max_prompts", type=int, default=None, help="Use only the first N prompts.")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args(argv)

    dataset = load_dataset(args.dataset_name, split=args.dataset_split)
    if args.max_prompts is not None:
        dataset = dataset.select(range(min(args.max_prompts, len(dataset))))
    train, test = prepare(dataset, args.attributes, args.only_conflicting, args.test_size, args.seed)
    os.makedirs(args.output_dir, exist_ok=True)
    train.to_parquet(os.path.join(args.output_dir, "train.parquet"))
    test.to_parquet(os.path.join(args.output_dir, "test.parquet"))
    for name, split in (("train", train), ("test", test)):
        counts = {u: split["user_id"].count(u) for u in args.attributes}
        print(f"{name}: {len(split)} rows, {len(set(split['prompt']))} prompts, rows per user {counts}")
    print(f"Wrote {args.output_dir}/train.parquet and test.parquet (load_dataset({args.output_dir!r}))")


if __name__ == "__main__":
    main()
