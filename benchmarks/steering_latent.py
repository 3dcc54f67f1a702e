# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Where a trained NP-DPO policy stops steering (issue 7): the encoder's reading of the context or the policy's use
of the latent.

Trains the NP-DPO run of `benchmarks/steering.py` (signal fraction 0.25, two opposite users, same seed, data and
settings; `--np_options` on top of its `NP_OPTIONS`), then, per user, on 100 held-out target pairs with contexts of
10 pairs drawn from that user's other 100 held-out pairs (20 draws):

- `policy_at_context`: the policy's implicit-reward accuracy at each context's latent (mean over draws);
- `policy_at_mean` / `policy_at_x{s}`: at the mean of those latents, and at it scaled by `s` (is the latent too
  small or too large for the hypernetwork?);
- `policy_at_fitted`: at a latent fitted by Adam to the targets' own choices (60 steps of 32 pairs), from the mean:
  the best this policy does for this user at any nearby latent;
- `decoder_at_mean`: the auxiliary NP-BTL decoder's accuracy at the mean latent (does the encoder read the user?);
- `policy_train_pairs`: the policy at the mean latent on 100 of the user's training pairs (memorised or underfit?);
- the norms of the mean and the fitted latent and the spread of the context latents.

If the decoder reads the user (`decoder_at_mean` high) and no latent does better than the context's
(`policy_at_fitted` near `policy_at_mean`), the policy cannot express the user: the encoder is not what fails.

Run (2 CPU cores, one thread: about 6 minutes each)::

    python -m benchmarks.steering_latent --seed 1 --threads 1
    python -m benchmarks.steering_latent --seed 1 --threads 1 --np_options '{"bounded_latent": true}'

Results are appended to `benchmarks/results/steering_latent.json`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import tempfile

import torch
import transformers

from . import steering
from .harness import run_stamp, write_json

RESULTS = os.path.join(os.path.dirname(__file__), "results", "steering_latent.json")


def accuracy(policy, pairs: list[dict], latent: torch.Tensor) -> float:
    prompts = [p["prompt"] for p in pairs]
    with torch.no_grad():
        margins = policy._scores_at(prompts, [p["chosen"] for p in pairs], latent, 64)
        margins = margins - policy._scores_at(prompts, [p["rejected"] for p in pairs], latent, 64)
    return (margins > 0).float().mean().item()


def fitted_latent(policy, pairs: list[dict], start: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """A latent fitted to `pairs`' choices by Adam on DPO's implicit-reward BTL loss, from `start`."""
    latent = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([latent], lr=0.05)
    for _ in range(60):
        batch = rng.sample(pairs, 32)
        prompts = [p["prompt"] for p in batch]
        margins = policy._scores_at(prompts, [p["chosen"] for p in batch], latent, 64)
        margins = margins - policy._scores_at(prompts, [p["rejected"] for p in batch], latent, 64)
        loss = torch.nn.functional.softplus(-margins).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return latent.detach()


def diagnose(trainer, train, test, users) -> dict:
    policy = trainer.steerable_model()
    policy.model.eval()
    decoder = trainer.model.fssa_np.decoder
    rng = random.Random(0)
    out = {}
    for user in users:
        held_out = [row for row in test if row["user_id"] == user]
        pool, targets = held_out[:100], held_out[100:200]
        latents = torch.stack([policy.latent(rng.sample(pool, 10)) for _ in range(20)])
        mean = latents.mean(0)
        result = {"policy_at_context": sum(accuracy(policy, targets, z) for z in latents) / len(latents)}
        for scale in (0.0, 0.5, 1.0, 2.0, 4.0):
            result[f"policy_at_x{scale:g}"] = accuracy(policy, targets, scale * mean)
        result["policy_at_mean"] = result.pop("policy_at_x1")
        fitted = fitted_latent(policy, targets, mean, rng)
        result["policy_at_fitted"] = accuracy(policy, targets, fitted)
        if decoder is not None:
            prompts = [p["prompt"] for p in targets]
            with torch.no_grad():
                chosen = policy.embed_pairs(prompts, [p["chosen"] for p in targets])
                rejected = policy.embed_pairs(prompts, [p["rejected"] for p in targets])
                z = mean.expand(len(targets), -1)
                result["decoder_at_mean"] = (decoder(chosen, z)[0] > decoder(rejected, z)[0]).float().mean().item()
        result["policy_train_pairs"] = accuracy(policy, [r for r in train if r["user_id"] == user][:100], mean)
        result.update(
            mean_latent_norm=mean.norm().item(),
            fitted_latent_norm=fitted.norm().item(),
            context_latent_spread=latents.std(0).norm().item(),
        )
        out[user] = result
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pairs_per_user", type=int, default=2000)
    parser.add_argument("--np_dpo_steps", type=int, default=200)
    parser.add_argument("--np_options", type=json.loads, default={}, help="JSON object over steering.NP_OPTIONS")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", default=RESULTS)
    args = parser.parse_args(argv)
    args.test_pairs_per_user = 200
    steering.NP_OPTIONS.update(args.np_options)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers.logging.set_verbosity_error()
    logging.getLogger("fssa_trl").setLevel(logging.WARNING)
    tokenizer, train, test, users = steering.task(args, 0.25, 2, args.seed)
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = steering.np_dpo_trainer(args, tokenizer, train, args.seed, output_dir)
        trainer.train()
        record = {
            "seed": args.seed,
            "np_options": dict(steering.NP_OPTIONS),
            "users": diagnose(trainer, train, test, users),
        }
    stamp = run_stamp("steering_latent", torch.device("cpu"), args)
    record.update(command=stamp["command"], date_utc=stamp["date_utc"])
    runs = []
    if os.path.exists(args.output):
        with open(args.output, encoding="utf-8") as f:
            runs = json.load(f)["runs"]
    write_json({**stamp, "runs": runs + [record]}, args.output)
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
