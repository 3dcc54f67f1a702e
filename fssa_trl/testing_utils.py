# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Tiny models, tokenizers and preference data built in code, for tests, benchmarks and offline examples.

Nothing here downloads: the models are randomly initialised transformers configs and the tokenizer is a
`tokenizers` word-level tokenizer.
"""

from __future__ import annotations

import random

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
