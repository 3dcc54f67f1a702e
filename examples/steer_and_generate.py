# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Steer a policy trained by NPDPOTrainer: generate for two users from a handful of their choices, for an unknown
user, and along the line between the two users' latents (the paper's continuum of behavioural modes).

```
accelerate launch examples/train_np_dpo.py          # trains outputs/np-dpo-default offline
python examples/steer_and_generate.py --model_path outputs/np-dpo-default
```

With a policy trained on your own data, pass `--context_file` (a JSONL of {"prompt", "chosen", "rejected",
"user_id"}), `--users` and `--prompts`.
"""

from __future__ import annotations

import argparse
import json

import torch

from fssa_trl import SteerablePolicy


def load_contexts(args):
    if args.context_file:
        with open(args.context_file, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
    else:  # the offline default's users
        from fssa_trl.testing_utils import style_preference_dataset

        rows = style_preference_dataset(40, seed=1).to_list()
    users = args.users or sorted({r["user_id"] for r in rows})[:2]
    contexts = {u: [r for r in rows if r["user_id"] == u][: args.context_size] for u in users}
    prompts = args.prompts or [r["prompt"] for r in rows[-3:]]
    return contexts, prompts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", default="outputs/np-dpo-default")
    parser.add_argument("--context_file", default=None)
    parser.add_argument("--users", nargs="*", default=None)
    parser.add_argument("--prompts", nargs="*", default=None)
    parser.add_argument("--context_size", type=int, default=10)
    parser.add_argument("--max_new_tokens", type=int, default=12)
    parser.add_argument("--num_return_sequences", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    policy = SteerablePolicy.from_pretrained(args.model_path)
    contexts, prompts = load_contexts(args)
    sample = dict(do_sample=True, max_new_tokens=args.max_new_tokens, num_return_sequences=args.num_return_sequences)

    torch.manual_seed(args.seed)
    print("== unknown user (context=[])")
    for prompt, text in zip(
        prompts, policy.generate(prompts, context=[], max_new_tokens=args.max_new_tokens), strict=True
    ):
        print(f"{prompt!r} -> {text!r}")
    latents = {}
    for user, context in contexts.items():
        latents[user] = policy.latent(context)
        print(f"\n== user {user!r} from {len(context)} of their choices (sampled, {args.num_return_sequences} each)")
        texts = policy.generate(prompts, context=context, **sample)
        for i, text in enumerate(texts):
            print(f"{prompts[i // args.num_return_sequences]!r} -> {text!r}")
    if len(latents) >= 2:
        (user_a, z_a), (user_b, z_b) = list(latents.items())[:2]
        print(f"\n== between {user_a!r} (t=0) and {user_b!r} (t=1), greedy")
        for t in (0.0, 0.25, 0.5, 0.75, 1.0):
            text = policy.generate(prompts[:1], latent=(1 - t) * z_a + t * z_b, max_new_tokens=args.max_new_tokens)[0]
            print(f"t={t:.2f}: {text!r}")


if __name__ == "__main__":
    main()
