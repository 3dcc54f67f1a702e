# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Tiny models, tokenizers and preference data built in code, for tests, benchmarks and offline examples.

Nothing here downloads: the models are randomly initialised transformers configs and the tokenizer is a
`tokenizers` word-level tokenizer.
"""

from __future__ import annotations

import random

import numpy as np
from datasets import Dataset

STYLES = ("a", "b")


NEUTRAL = "n"
# Eight users over four styles: four rankings and their reverses, so that every pair of styles splits them 4 / 4.
EIGHT_USERS = {
    f"U{i}": ranking for i, ranking in enumerate(("abcd", "dcba", "bdac", "cadb", "cabd", "dbac", "acdb", "bdca"))
}


def word_tokenizer(num_words: int = 24, styles=STYLES, neutral: bool = False):
    """A whitespace word-level tokenizer over `p0..pN` (prompt words) and `<style>0..<style>N` (response words), plus
    `n0..nN` (neutral response words, at the end of the vocabulary) with `neutral=True`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for prefix in ("p", *styles, *((NEUTRAL,) if neutral else ())):
        for i in range(num_words):
            vocab[f"{prefix}{i}"] = len(vocab)
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>", bos_token="<eos>"
    )


def tiny_qwen2_config(vocab_size: int, hidden_size: int = 32, num_layers: int = 2, **kwargs):
    from transformers import Qwen2Config

    defaults = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
        tie_word_embeddings=False,
    )
    defaults.update(kwargs)
    return Qwen2Config(**defaults)


def tiny_reward_model(tokenizer, seed: int = 0, **kwargs):
    """A randomly initialised tiny `Qwen2ForSequenceClassification` with one label."""
    import torch
    from transformers import Qwen2ForSequenceClassification

    torch.manual_seed(seed)
    config = tiny_qwen2_config(len(tokenizer), num_labels=1, **kwargs)
    return Qwen2ForSequenceClassification(config)


def tiny_causal_lm(tokenizer, seed: int = 0, **kwargs):
    """A randomly initialised tiny `Qwen2ForCausalLM`."""
    import torch
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    return Qwen2ForCausalLM(tiny_qwen2_config(len(tokenizer), **kwargs))


def untrained_steerable_model(
    base, tokenizer, policy: bool = False, target_modules=("q_proj", "v_proj"), latent_dim=4
):
    """An untrained steerable LoRA reward model (or, with `policy=True`, policy) on the tiny `base`: gated LoRA r=4 on
    `target_modules`, a deterministic mean-pooling encoder of the base's own embeddings, no training step. For tests of
    inputs, saving and loading, not of learning."""
    from peft import LoraConfig, get_peft_model

    from .modeling import (
        ContextEmbeddingConfig,
        HypernetworkConfig,
        LatentEncoderConfig,
        LoRARewardModelConfig,
        NPModules,
        PolicyConfig,
        SteerableLoRARewardModel,
        SteerablePolicy,
        find_gated_lora_layers,
        gated_lora_config,
    )
    from .modeling.steerable import embedder_from_config

    task = {} if policy else {"task_type": "SEQ_CLS"}
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=list(target_modules), **task)
    peft = get_peft_model(base, gated_lora_config(lora))
    config = (PolicyConfig if policy else LoRARewardModelConfig)(
        encoder=LatentEncoderConfig(
            embedding_dim=base.config.hidden_size,
            latent_dim=latent_dim,
            hidden_dim=8,
            aggregation="mean",
            latent_type="deterministic",
            num_heads=2,
        ),
        context_embedding=ContextEmbeddingConfig(source="base", max_length=32),
        hypernetwork=HypernetworkConfig(
            latent_dim=latent_dim, num_layers=len(find_gated_lora_layers(peft)), rank=4, hidden_dim=8
        ),
    )
    peft.fssa_np = NPModules.from_config(config)
    embedder = embedder_from_config(config.context_embedding, peft, tokenizer)
    return (SteerablePolicy if policy else SteerableLoRARewardModel)(peft, tokenizer, config, embedder)


def style_preference_dataset(
    pairs_per_user: int,
    num_words: int = 24,
    prompt_words: int = 4,
    response_words: tuple[int, int] = (3, 6),
    users: dict[str, str] | None = None,
    seed: int = 0,
    signal_fraction: float = 1.0,
) -> Dataset:
    """Two users with opposite preferences over the same kind of pairs: each pair offers one response in style "a"
    (words `a*`) and one in style "b" (words `b*`); user "A" prefers style a, user "B" prefers style b. A model
    without the user's context cannot beat 50% on both users.

    `users` maps each user to the styles it prefers, best first: `"a"` (or `"ab"`) prefers style a over b. With more
    than two styles in a ranking (for example `EIGHT_USERS`, rankings of four styles closed under reversal, so that
    the users as a whole are indifferent), each pair shows two different styles of the ranking drawn at random and
    the user chooses the higher-ranked one; build the tokenizer with `word_tokenizer(styles=...)` to match.

    With `signal_fraction < 1` only that fraction of each response's words (at least one) carries its style; the
    others are neutral words `n*` at random positions, drawn alike for both responses (use
    `word_tokenizer(neutral=True)`). `signal_fraction=1.0` is the easy task where every token carries the style.

    Returns columns `prompt`, `chosen`, `rejected`, `user_id`.
    """
    if not 0 < signal_fraction <= 1:
        raise ValueError(f"`signal_fraction` must be in (0, 1], got {signal_fraction}.")
    users = users or {"A": "a", "B": "b"}
    for user, ranking in users.items():
        if not ranking or len(set(ranking)) != len(ranking):
            raise ValueError(
                f"`users[{user!r}]` must rank distinct one-letter styles, best first (e.g. 'a' or 'abcd'), "
                f"got {ranking!r}."
            )
    rng = random.Random(seed)

    def sentence(prefix: str, length: int) -> str:
        if prefix == "p" or signal_fraction == 1.0:
            return " ".join(f"{prefix}{rng.randrange(num_words)}" for _ in range(length))
        styled = set(rng.sample(range(length), max(1, round(signal_fraction * length))))
        return " ".join(f"{prefix if i in styled else NEUTRAL}{rng.randrange(num_words)}" for i in range(length))

    rows = {"prompt": [], "chosen": [], "rejected": [], "user_id": []}
    for user, ranking in users.items():
        if len(ranking) == 1:
            ranking += next(s for s in STYLES if s != ranking)
        for _ in range(pairs_per_user):
            # Two styles only: the pair is always (first, second), and no draw (the two-user dataset stays as it was).
            better, worse = (0, 1) if len(ranking) == 2 else sorted(rng.sample(range(len(ranking)), 2))
            rows["prompt"].append(sentence("p", prompt_words) + " ")
            rows["chosen"].append(sentence(ranking[better], rng.randint(*response_words)))
            rows["rejected"].append(sentence(ranking[worse], rng.randint(*response_words)))
            rows["user_id"].append(user)
    return Dataset.from_dict(rows)


# Eight users: every combination of likes (+1) and dislikes (-1) of three traits.
TRAIT_USERS = {
    "".join("+" if s > 0 else "-" for s in signs): np.array(signs, dtype=np.float64)
    for signs in np.array(np.meshgrid([1, -1], [1, -1], [1, -1], indexing="ij")).reshape(3, -1).T.tolist()
}
QUESTION_KINDS = ("trait", "consensus", "tie")


def trait_preference_task(
    pairs_per_user: int, seed: int = 0, kinds: dict[str, float] | None = None, num_traits: int = 3
) -> Dataset:
    """A synthetic task where some questions tell users apart and others cannot (for tests and benchmarks of active
    querying). A response is a vector x of `num_traits + 2` numbers (its own precomputed "embedding"). User u's
    reward is `w_u . x[:num_traits] + x[num_traits]` (`w_u` in {-1, +1}^3: the eight users of `TRAIT_USERS`); the
    last coordinate matters to nobody. The two responses of a pair differ along one coordinate only, which sets its
    kind (drawn with the probabilities `kinds`, default a third each):

    - `"trait"`: one of the traits; half of the users prefer each response, so the answer reveals one sign of w_u.
    - `"consensus"`: the shared coordinate; every user prefers the same response (the answer reveals nothing).
    - `"tie"`: the coordinate nobody cares about; every user is indifferent and answers by a fair coin (the answer
      reveals nothing, and nobody can predict it).

    Returns columns `user_id`, `chosen_embedding`, `rejected_embedding`, `kind`.
    """
    if num_traits != 3:
        raise ValueError("`trait_preference_task` has the eight users of three traits: `num_traits` must be 3.")
    kinds = kinds or dict.fromkeys(QUESTION_KINDS, 1.0)
    names = list(kinds)
    weights = np.array([kinds[k] for k in names], dtype=np.float64)
    rng = np.random.default_rng(seed)
    rows = {"user_id": [], "chosen_embedding": [], "rejected_embedding": [], "kind": []}
    for user, w in TRAIT_USERS.items():
        for _ in range(pairs_per_user):
            kind = names[rng.choice(len(names), p=weights / weights.sum())]
            axis = {"trait": rng.integers(num_traits), "consensus": num_traits, "tie": num_traits + 1}[kind]
            a = rng.normal(size=num_traits + 2)
            b = a.copy()
            b[axis] += rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.5)
            reward = np.append(w, [1.0, 0.0])
            a_wins = reward @ a > reward @ b if kind != "tie" else rng.random() < 0.5
            chosen, rejected = (a, b) if a_wins else (b, a)
            rows["user_id"].append(user)
            rows["chosen_embedding"].append(chosen.tolist())
            rows["rejected_embedding"].append(rejected.tolist())
            rows["kind"].append(kind)
    return Dataset.from_dict(rows)
