# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""The `fssa-trl` console script.

```
fssa-trl export --model PATH_OR_ID --context user.jsonl --output DIR [--merge] [--push-to-hub ID]
fssa-trl evaluate --model PATH_OR_ID --dataset PATH_OR_ID [--split test] [--context-sizes 0 1 3 5 10]
```

`export` folds one user's steering into a standard artifact (a PEFT adapter, merged weights, or a
sentence-transformers pipeline) that loads without fssa_trl; `evaluate` prints the few-shot accuracy table of a saved
model on a preference dataset with a user column and saves the plot.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

CONTEXT_FORMAT = (
    'a JSON Lines file (or a JSON list) of the user\'s choices, one {"prompt", "chosen", "rejected"} object per '
    "line; with --user, only the rows whose user column equals it"
)


def load_model(name: str, revision: str | None = None, token: str | None = None, base_model: str | None = None):
    """The steerable reward model or policy saved at `name` (a folder or a hub id), whichever it holds."""
    from .modeling import SteerableModel

    kwargs = {"base_model_name_or_path": base_model}
    if revision is not None:
        kwargs["revision"] = revision
    if token is not None:
        kwargs["token"] = token
    return SteerableModel.from_pretrained(name, **kwargs)


def read_context(path: str, user: str | None = None, user_column: str = "user_id") -> list[dict]:
    """The context pairs in `path` (JSON Lines or a JSON list), optionally one user's rows of a shared file; the user
    column is dropped, every other key kept for the model's own check (a misspelt key is an error there)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        if text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            rows = []
            for number, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    rows.append(_json_line(line, number, path))
    except json.JSONDecodeError as error:
        raise SystemExit(f"error: {path} is not valid JSON: {error}") from error
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise SystemExit(f'error: {path} must hold one {{"prompt", "chosen", "rejected"}} object per line.')
    if user is not None:
        if rows and not all(user_column in row for row in rows):
            raise SystemExit(f"error: --user {user!r} given, but rows of {path} have no {user_column!r} field.")
        rows = [row for row in rows if str(row[user_column]) == user]
        if not rows:
            raise SystemExit(f"error: {path} has no row with {user_column} == {user!r}.")
    if not rows:
        # An empty context would silently export the population prior as if it were a user.
        raise SystemExit(
            f'error: {path} holds no context pairs: give the user\'s choices, one {{"prompt", "chosen", '
            '"rejected"}} object per line (to export the population prior, call `model.export(dir)` in Python).'
        )
    return [{key: value for key, value in row.items() if key != user_column} for row in rows]


def _json_line(line: str, number: int, path: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise SystemExit(f"error: line {number} of {path} is not valid JSON: {error}") from error


def load_preferences(name: str, split: str, config: str | None = None):
    """A preference dataset from a local file (.json, .jsonl, .csv, .parquet) or a hub dataset id."""
    from datasets import load_dataset

    extension = os.path.splitext(name)[1].lower()
    builders = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
    if os.path.isfile(name) and extension in builders:
        return load_dataset(builders[extension], data_files=name, split="train")
    dataset = load_dataset(name, name=config)
    if split not in dataset:
        raise SystemExit(f"error: {name} has no split {split!r} (it has {sorted(dataset)}); pass --split.")
    return dataset[split]


def export_command(args: argparse.Namespace) -> None:
    from .modeling.inputs import context_pairs

    model = load_model(args.model, args.revision, args.token, args.base_model)
    context = read_context(args.context, args.user, args.user_column)
    try:  # the model's own check, with the file named: `context[i]` is the i-th row read (of --user's rows)
        context_pairs(context, model.np_modules.encoder.embedding_dim)
    except ValueError as error:
        rows = f"the rows of user {args.user!r} in {args.context}" if args.user is not None else args.context
        raise SystemExit(f"error: {rows}: {error}") from error
    model.export(args.output, context=context, merge=args.merge)
    print(f"Exported the user of {len(context)} context pairs to {args.output}")
    if args.push_to_hub:
        from .hub import push_folder_to_hub

        url = push_folder_to_hub(args.output, args.push_to_hub, private=args.private, token=args.token)
        print(f"Pushed to {url}")


def evaluate_command(args: argparse.Namespace) -> None:
    from .evaluation import evaluate_few_shot, plot_few_shot

    model = load_model(args.model, args.revision, args.token, args.base_model)
    dataset = load_preferences(args.dataset, args.split, args.dataset_config)
    results = evaluate_few_shot(
        model,
        dataset,
        context_sizes=args.context_sizes,
        num_targets=args.num_targets,
        user_column=args.user_column,
        too_few_pairs=args.too_few_pairs,
        seed=args.seed,
        batch_size=args.batch_size,
        name=args.name or os.path.basename(os.path.normpath(args.model)),
        num_draws=args.num_draws,
    )
    print(results)
    os.makedirs(args.output_dir, exist_ok=True)
    plot = os.path.join(args.output_dir, "few_shot_accuracy.png")
    plot_few_shot([results], plot, title="Accuracy on unseen pairs by context size")
    results.to_json(os.path.join(args.output_dir, "few_shot_accuracy.json"))
    print(f"Saved {plot} and few_shot_accuracy.json")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="Folder or hub id of a model saved by an NP trainer.")
    parser.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of --model.")
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in one, or HF_TOKEN).")
    parser.add_argument(
        "--base-model",
        default=None,
        help="Load this base model instead of the one recorded in the adapter config (e.g. a local copy).",
    )
    parser.add_argument("--user-column", default="user_id", help="The user column (default: user_id).")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fssa-trl", description="Few-shot steerable alignment on TRL and PEFT.")
    commands = parser.add_subparsers(dest="command", required=True)

    export = commands.add_parser(
        "export",
        help="Fold one user's steering into a standard model that loads without fssa_trl.",
        description="Write one user's model: a PEFT adapter with the user's gates folded into the LoRA weights (LoRA "
        "reward models and policies), merged full weights with --merge, or a sentence-transformers pipeline "
        "(frozen-embedding reward models); with a model card and the tokenizer.",
    )
    add_model_arguments(export)
    export.add_argument("--context", required=True, help=f"The user's choices: {CONTEXT_FORMAT}.")
    export.add_argument("--user", default=None, help="Take only this user's rows of --context.")
    export.add_argument("--output", required=True, help="Folder to write the exported model to.")
    export.add_argument("--merge", action="store_true", help="Merge the adapter into the base weights.")
    export.add_argument("--push-to-hub", default=None, metavar="REPO_ID", help="Also upload the export to this repo.")
    export.add_argument("--private", action="store_true", help="Create the hub repo as private.")
    export.set_defaults(func=export_command)

    evaluate = commands.add_parser(
        "evaluate",
        help="Few-shot accuracy on unseen pairs by context size and user; prints the table, saves the plot.",
    )
    add_model_arguments(evaluate)
    evaluate.add_argument(
        "--dataset", required=True, help="Preference data: a .json/.jsonl/.csv/.parquet file or a hub id."
    )
    evaluate.add_argument("--dataset-config", default=None, help="Config name of a hub dataset.")
    evaluate.add_argument("--split", default="test", help="Split of a hub dataset (default: test).")
    evaluate.add_argument("--context-sizes", type=int, nargs="+", default=[0, 1, 3, 5, 10], help="Context sizes.")
    evaluate.add_argument("--num-targets", type=int, default=16, help="Targets per context draw (default: 16).")
    evaluate.add_argument("--num-draws", type=int, default=1, help="Context draws per target chunk (default: 1).")
    evaluate.add_argument(
        "--too-few-pairs",
        choices=("skip", "replace", "error"),
        default="skip",
        help="Users with at most max(context sizes) pairs: skip them, draw contexts with replacement, or fail.",
    )
    evaluate.add_argument("--seed", type=int, default=0, help="Seed of the context draws (default: 0).")
    evaluate.add_argument("--batch-size", type=int, default=16, help="Sequences per forward pass (default: 16).")
    evaluate.add_argument("--name", default=None, help="Label of the model in the table and plot.")
    evaluate.add_argument(
        "--output-dir", default=".", help="Where to save few_shot_accuracy.png and .json (default: .)."
    )
    evaluate.set_defaults(func=evaluate_command)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
