# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Property-based fuzzing of the data path and of `score` (issue 10): random datasets and inputs full of None, empty
and whitespace texts, unicode, NUL, long texts, NaN / infinite numbers, ragged embeddings and odd columns.

Every example must either raise our `ValueError` (naming a column or argument) before anything is trained or scored,
or train a few steps to finite weights and give finite scores. A `TypeError`, `KeyError`, NaN weight or NaN score
is a failure. A dataset that Arrow itself refuses to build (mixed types in a column) is the user's problem, not ours.

The runs are reproducible (`derandomize=True`, no example database): a failure shows its minimal example. The bugs
the fuzzing found are pinned by the reproductions at the end of this file (fixed: regression tests; bug 3, huge
finite embeddings, is still open: a strict xfail); their inputs are still kept out of the properties (each exclusion
names its bug).
"""

import contextlib
import itertools
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pytest
import torch
from datasets import Dataset, Features, Value, concatenate_datasets
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from peft import LoraConfig

from fssa_trl import (
    NPDPOConfig,
    NPDPOTrainer,
    NPEmbeddingRewardConfig,
    NPEmbeddingRewardTrainer,
    NPRewardConfig,
    NPRewardTrainer,
)
from fssa_trl.data.episode_dataset import EPISODE_COLUMNS, RedrawnEpisodes
from fssa_trl.data.episodes import TOO_FEW_PAIRS_POLICIES
from fssa_trl.data.validation import RESERVED_COLUMNS
from fssa_trl.modeling.latent_encoder import AGGREGATIONS, LATENT_TYPES
from fssa_trl.testing_utils import style_preference_dataset, tiny_causal_lm, tiny_reward_model, word_tokenizer

LATENT_DIM, EMBEDDING_DIM = 4, 4
FAST = dict(report_to="none", use_cpu=True, disable_tqdm=True, save_strategy="no", per_device_train_batch_size=2)
FAST.update(max_steps=2, seed=0, latent_dim=LATENT_DIM, encoder_hidden_dim=8, aggregation_num_heads=2)
CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
# What Arrow raises when it refuses to build a column (mixed types, an int past int64, a lone surrogate).
ARROW_REFUSED = (pa.ArrowException, OverflowError, UnicodeEncodeError)
# What a training error may name instead of a column.
TRAINING_ARGUMENTS = ("user_column", "too_few_pairs", "num_targets", "max_context", "eval_context_sizes", "max_length")
SCORE_ARGUMENTS = ("prompts", "responses", "context", "latent", "batch_size")


def fuzz_settings(max_examples: int):
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


def assume_new(example, seen: set[str]) -> None:
    """Skip an example seen before: draws that end unused (a column drawn, then replaced) make hypothesis count
    one case many times, and `assume` lets it draw another instead."""
    key = repr(example)
    assume(key not in seen)
    seen.add(key)


# ---------------------------------------------------------------------------------------------------- values
PROMPTS = ("p1 p2 ", "p3 ", "p4 p5 p6 ", "Hello, how are you? ")
CLEAN = {"prompt": PROMPTS, "chosen": ("a1 a2", "a3", "a4 a5 a6", "Fine."), "rejected": ("b1 b2", "b3", "Go away.")}
ROLES = {"prompt": "user", "chosen": "assistant", "rejected": "assistant"}
BLANK = ("", " ", "\t\n", "\u3000", "\xa0", "\x1c\x1f", "\u2028", "\x85", " \r\n ")
EXOTIC = (
    "مرحبا بالعالم",  # right to left
    "שלום עולם",
    "\u202eevil\u202c",  # a right-to-left override
    "😀👍🏽 🇫🇷",  # emoji with a skin-tone modifier, a flag
    "e\u0301\u0302\u0303",  # combining marks
    "\u200b",  # zero-width space: not whitespace
    "\ufeff",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "中文字符",
    "a\x00b",
    "\x00",
    "\x00 \x00",
    "<eos>",  # the tokenizer's special tokens, as text
    "<pad> <pad>",
    "<unk>",
    "{{ messages }}",  # template syntax
)
NON_FINITE = (math.nan, math.inf, -math.inf)

long_texts = st.builds(lambda word, n: (word + " ") * n, st.sampled_from(PROMPTS + EXOTIC), st.integers(50, 300))
nasty_texts = st.one_of(st.sampled_from(BLANK), st.sampled_from(EXOTIC), long_texts, st.text(max_size=8))
any_texts = st.one_of(st.sampled_from(PROMPTS + CLEAN["chosen"]), nasty_texts)


def mostly(common, rare, one_in: int = 4):
    """`common`, or `rare` about once in `one_in` draws (`common` is the simpler, towards which failures shrink)."""
    return st.integers(0, one_in - 1).flatmap(lambda k: rare if k == one_in - 1 else common)


def conversations():
    """Lists of messages of any role, their contents any text or None."""
    roles = st.sampled_from(("user", "assistant", "system"))
    message = st.fixed_dictionaries({"role": roles, "content": st.one_of(any_texts, st.none())})
    return st.lists(message, max_size=3)


# Non-text values of a text column: training takes them for text (known bug 1, see the xfails).
NON_TEXT = {
    "ints": st.integers(-3, 3),
    "floats": st.floats(),
    "bools": st.booleans(),
    "bytes": st.binary(max_size=4),
    "string lists": st.lists(st.sampled_from(CLEAN["chosen"]), max_size=2),
    "role-less messages": st.lists(st.fixed_dictionaries({"content": st.sampled_from(CLEAN["chosen"])}), max_size=2),
}


def column(n: int, cells):
    return st.lists(cells, min_size=n, max_size=n)


# ---------------------------------------------------------------------------------------------------- datasets
@dataclass
class Case:
    """One fuzzed training run: the dataset's columns, how the dataset is viewed, and the trainer's settings."""

    columns: dict[str, list]
    user_column: str
    source: str  # `context_embedding`: "base" (texts, embedded by the tiny backbone) or "precomputed"
    view: str = "plain"
    knobs: dict[str, Any] = field(default_factory=dict)
    eval_too: bool = False
    nasty: tuple[str, ...] = ()  # the parts drawn nasty (for the reader of a failure)


@st.composite
def text_column(draw, name: str, n: int, conversational: bool, nasty: bool, non_text: bool, mixed: bool = True):
    """`n` texts (or conversations) of column `name`; nasty: some blank, exotic, long or None, with `mixed` of
    mixed types (which Arrow mostly refuses) or, with `non_text`, values of another type."""
    clean = st.sampled_from(CLEAN[name])
    if conversational:
        clean = clean.map(lambda text: [{"role": ROLES[name], "content": text}])
    if not nasty:
        return draw(column(n, clean))
    modes = ["dirty", "dirty", "long", "none", *(["mixed"] if mixed else []), *(["typed"] if non_text else [])]
    mode = draw(st.sampled_from(modes))
    if mode == "typed":
        kind = draw(st.sampled_from(sorted(NON_TEXT)))
        return draw(column(n, mostly(NON_TEXT[kind], st.none())))
    if mode == "mixed":  # Arrow refuses most of these
        cells = st.one_of(clean, nasty_texts, st.none(), st.integers(0, 2), st.floats(), conversations())
        return draw(column(n, cells))
    nasty = {"dirty": conversations() if conversational else nasty_texts, "long": long_texts, "none": st.none()}[mode]
    if conversational and mode == "long":
        nasty = long_texts.map(lambda text: [{"role": ROLES[name], "content": text}])
    return draw(column(n, mostly(clean, nasty, one_in=3)))


USER_CELLS = {
    "ints": mostly(st.integers(-1, 2), st.none(), one_in=6),
    "floats": st.one_of(st.sampled_from([1.0, 2.0, 2.5]), st.floats()),
    "odd strings": st.sampled_from(["u1", "", " ", "None", "\x00", "مستخدم", "😀", "u1 ", "U1", "nan", "\u3000"]),
    "none": mostly(st.sampled_from(["u1", "u2"]), st.none(), one_in=5),
    "mixed": st.one_of(st.sampled_from(["u1", "u2"]), st.integers(0, 2), st.none(), st.booleans()),
    "one user": st.just("u1"),
    "bools": st.booleans(),
    "lists": st.lists(st.integers(0, 2), max_size=2),
}
MARGIN_CELLS = {
    "non-finite": mostly(st.floats(-3, 3), st.one_of(st.sampled_from(NON_FINITE), st.none())),
    # Beyond float32's range is known bug 2 (see the xfails): a margin that is finite in float64 is inf in the loss.
    "large": st.floats(-1e30, 1e30),
    "ints": st.integers(-(10**6), 10**6),
    "strings": st.sampled_from(["0.5", "", "nan"]),
    "bools": st.booleans(),
    "mixed": st.one_of(st.floats(-3, 3), st.text(max_size=2)),
}


@st.composite
def embedding_columns(draw, n: int, nasty: bool) -> dict[str, list]:
    """`chosen_embedding` and `rejected_embedding` of one dimension; nasty: one or both of them ragged, with None,
    NaN or infinite values, empty, of integers, booleans, strings or lists, or missing."""
    dim = draw(st.integers(1, 4))
    # Bounded: finite embeddings past ~1e20 make Gaussian / attention encoders NaN (known bug 3, see the xfails).
    value = st.floats(-1e4, 1e4, width=32)
    vector = st.lists(value, min_size=dim, max_size=dim)

    def vectors(cells):
        return column(n, cells)

    if not nasty:
        return {"chosen_embedding": draw(vectors(vector)), "rejected_embedding": draw(vectors(vector))}
    cells = {
        "ragged": mostly(vector, st.lists(value, max_size=dim + 2)),
        "none rows": mostly(vector, st.none()),
        "none values": st.lists(mostly(value, st.none(), one_in=5), min_size=dim, max_size=dim),
        "non-finite": st.lists(mostly(value, st.sampled_from(NON_FINITE)), min_size=dim, max_size=dim),
        "empty": st.just([]),
        "some empty": mostly(vector, st.just([])),
        "ints": st.lists(st.integers(-(2**40), 2**40), min_size=dim, max_size=dim),
        "bools": st.lists(st.booleans(), min_size=dim, max_size=dim),
        "strings": st.lists(st.sampled_from(["0.5", "x"]), min_size=dim, max_size=dim),
        "nested": st.lists(st.lists(value, min_size=1, max_size=2), min_size=dim, max_size=dim),
        "mixed": st.one_of(vector, st.text(max_size=2)),
    }
    mode = draw(st.sampled_from([*sorted(cells), "missing"]))
    which = draw(st.sampled_from(["chosen_embedding", "rejected_embedding", "both"]))
    out = {name: draw(vectors(vector)) for name in ("chosen_embedding", "rejected_embedding")}
    for name in ("chosen_embedding", "rejected_embedding"):
        if which in (name, "both"):
            if mode == "missing":
                del out[name]
            else:
                out[name] = draw(vectors(cells[mode]))
    return out


EXTRA_NAMES = ("user", "score", "chosen_ids", "input_ids", "labels", "target_in_context", "_fssa_chosen_text", "")
EXTRA_NAMES += (" ", "列 ☃", "prompt_ids", "completion", "chosen_embedding_index", "attention_mask")
EXTRA_CELLS = (st.integers(0, 5), any_texts, st.none(), st.lists(st.integers(0, 5), max_size=3), st.floats())


NASTY_PARTS = ("prompt", "chosen", "rejected", "user", "margin", "embeddings", "extra")
# The parts of a dataset drawn nasty, up to 1 or 2 of them, about one dataset in eight clean (drawn from a list: a
# strategy of sets draws far more clean datasets, and some parts hardly ever).
NASTY_COMBINATIONS = {
    size: [()] * (3 * size) + [c for k in range(1, size + 1) for c in itertools.combinations(NASTY_PARTS, k)]
    for size in (1, 2)
}


@st.composite
def cases(draw, sources=("base", "precomputed"), max_nasty: int = 2, mixed: bool = True) -> Case:
    """A small preference dataset (4-12 rows, a few users) with up to `max_nasty` nasty parts, and trainer settings.
    Without `mixed`, no column mixes types (which Arrow mostly refuses to build)."""
    source = draw(st.sampled_from(sources))
    n = draw(st.integers(4, 12))
    user_column = draw(st.sampled_from(["user_id", "user_id", "user", "ユーザー id"]))
    nasty = set(draw(st.sampled_from(NASTY_COMBINATIONS[max_nasty])))
    columns = {}
    if "user" in nasty:
        kinds = sorted(kind for kind in USER_CELLS if mixed or kind != "mixed")
        columns[user_column] = draw(column(n, USER_CELLS[draw(st.sampled_from(kinds))]))
    else:
        columns[user_column] = draw(column(n, st.sampled_from(["u1", "u2", "u3"])))
    conversational = draw(st.integers(0, 3)) == 0
    names = ["prompt"] if draw(st.booleans()) else []
    names += ["chosen", "rejected"] if source == "base" or draw(st.booleans()) else []
    for name in names:
        # Text is only read from texts: precomputed embeddings may sit beside any text column.
        non_text = source == "precomputed"
        columns[name] = draw(text_column(name, n, conversational, name in nasty, non_text, mixed))
    if "rejected" in nasty and "chosen" in columns and draw(st.booleans()):  # chosen == rejected in all or some rows
        same = draw(st.one_of(st.just([True] * n), column(n, st.booleans())))
        columns["rejected"] = [
            c if s else r for c, r, s in zip(columns["chosen"], columns["rejected"], same, strict=True)
        ]
    if "margin" in nasty:
        kinds = sorted(kind for kind in MARGIN_CELLS if mixed or kind != "mixed")
        columns["margin"] = draw(column(n, MARGIN_CELLS[draw(st.sampled_from(kinds))]))
    elif draw(st.integers(0, 3)) == 0:
        columns["margin"] = draw(column(n, st.floats(-3, 3)))
    if source == "precomputed" or "embeddings" in nasty:
        columns.update(draw(embedding_columns(n, "embeddings" in nasty)))
    if "extra" in nasty:
        for name in draw(
            st.sets(st.sampled_from([c for c in EXTRA_NAMES if c not in columns]), min_size=1, max_size=2)
        ):
            columns[name] = draw(column(n, draw(st.sampled_from(EXTRA_CELLS))))
    num_targets = draw(st.integers(1, 3))
    max_context = draw(st.integers(0, num_targets))
    knobs = dict(
        user_column=user_column,
        num_targets=num_targets,
        max_context=max_context,
        min_context=draw(st.integers(0, max_context)),
        eval_context_sizes=draw(st.lists(st.integers(0, 3), min_size=1, max_size=2, unique=True)),
        too_few_pairs=draw(st.sampled_from(TOO_FEW_PAIRS_POLICIES)),
        heldout_fraction=draw(st.sampled_from([0.0, 0.0, 0.5])),
        latent_type=draw(st.sampled_from(LATENT_TYPES)),
        aggregation=draw(st.sampled_from(AGGREGATIONS)),
        redraw_episodes=draw(st.booleans()),
    )
    if source == "base":
        knobs["context_embedding_pooling"] = draw(st.sampled_from(["mean", "last"]))
    views = ["plain", "plain", "shuffled", "reversed", "split", "large_string", "chunked", "class_label"]
    view, eval_too = draw(st.sampled_from(views)), draw(st.booleans())
    return Case(columns, user_column, source, view, knobs, eval_too, tuple(sorted(nasty)))


def build_dataset(case: Case) -> Dataset | None:
    """The case's dataset as a user could hold it (indices mappings, several Arrow chunks, large_string, ClassLabel),
    or `None` when Arrow refuses to build it."""
    columns, n = case.columns, len(next(iter(case.columns.values())))
    try:
        if case.view == "chunked":  # two parts, as from two files: each with its own Arrow types
            half = n // 2
            parts = [Dataset.from_dict({k: v[:half] for k, v in columns.items()})]
            parts.append(Dataset.from_dict({k: v[half:] for k, v in columns.items()}))
            return concatenate_datasets(parts)
        dataset = Dataset.from_dict(columns)
    except ARROW_REFUSED:
        return None
    except ValueError as error:  # concatenate_datasets: the parts' types cannot be aligned
        if case.view == "chunked" and "aligned" in str(error):
            return None
        raise
    if case.view == "shuffled":
        return dataset.shuffle(seed=0)
    if case.view == "reversed":
        return dataset.select(range(n - 1, -1, -1))
    if case.view == "split":
        return dataset.train_test_split(test_size=0.25, seed=0)["train"]
    strings = [name for name, feature in dataset.features.items() if feature == Value("string")]
    if case.view == "large_string" and strings:
        features = Features({**dataset.features, **{name: Value("large_string") for name in strings}})
        return dataset.cast(features)
    if case.view == "class_label" and case.user_column in strings and None not in columns[case.user_column]:
        return dataset.class_encode_column(case.user_column)
    return dataset


def text_format(arrow_type: pa.DataType) -> str:
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "text"
    if pa.types.is_null(arrow_type):
        return "none"
    if pa.types.is_list(arrow_type) and pa.types.is_struct(arrow_type.value_type):
        if {"role", "content"} <= {f.name for f in arrow_type.value_type}:
            return "conversation"
    return "other"


def hits_known_bug(dataset: Dataset, case: Case) -> bool:
    """Whether the texts of the dataset hit known bug 1 (text columns of another type, messages without a role, or
    text and conversations mixed across the columns: they pass the checks and fail when the texts are read) or known
    bug 6 (large_string text columns beside a prompt column), see the xfails."""
    if case.source == "precomputed":
        return False
    schema = dataset.data.schema
    types = [schema.field(c).type for c in ("prompt", "chosen", "rejected") if c in schema.names]
    formats = {text_format(t) for t in types}
    large = "prompt" in schema.names and any(pa.types.is_large_string(t) for t in types)
    return "other" in formats or {"text", "conversation"} <= formats or large


def blank(value) -> bool:
    """The documented meaning of an empty text: None, whitespace only, or a conversation without content."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, list):
        return all(blank(m.get("content") if isinstance(m, dict) else m) for m in value)
    return False


def not_finite(value) -> bool:
    return value is None or not isinstance(value, (int, float)) or not math.isfinite(value)


def bad_columns(dataset: Dataset, case: Case) -> set[str]:
    """The columns the checks must refuse, computed row by row in Python from what the checks document (an oracle
    for their Arrow implementation): reserved names; user ids None, NaN, blank or not strings or integers; empty
    texts; every pair with chosen == rejected; a margin that is not a finite number; for precomputed embeddings,
    missing columns and vectors that are None, hold None, NaN, infinities or non-numbers, differ in length or are
    all empty."""
    rows = dataset.to_dict()
    bad = {name for name in rows if name in RESERVED_COLUMNS}
    if any(
        u is None or isinstance(u, (bool, list)) or (isinstance(u, str) and not u.strip())
        for u in rows[case.user_column]
    ):
        bad.add(case.user_column)
    if any(isinstance(u, float) and math.isnan(u) for u in rows[case.user_column]):
        bad.add(case.user_column)
    bad.update(name for name in ("prompt", "chosen", "rejected") if name in rows and any(map(blank, rows[name])))
    if {"chosen", "rejected"} <= set(rows) and "other" not in {
        text_format(dataset.data.schema.field(c).type) for c in ("chosen", "rejected")
    }:
        if all(c == r for c, r in zip(rows["chosen"], rows["rejected"], strict=True)):
            bad.update(("chosen", "rejected"))
    if "margin" in rows and any(isinstance(m, bool) or not_finite(m) for m in rows["margin"]):
        bad.add("margin")
    if case.source == "precomputed":
        vectors = [rows.get("chosen_embedding"), rows.get("rejected_embedding")]
        cells = [cell for column in vectors if column is not None for cell in column]
        lengths = {len(cell) for cell in cells if isinstance(cell, list)}
        if (
            None in vectors
            or any(not isinstance(cell, list) or any(map(not_finite, cell)) for cell in cells)
            or len(lengths) != 1
            or lengths == {0}
        ):
            bad.update(("chosen_embedding", "rejected_embedding"))
    return bad


# ---------------------------------------------------------------------------------------------------- checks
def assert_names_the_problem(error: ValueError, names) -> None:
    message = str(error)
    assert any(name.strip() and name in message for name in names), f"names nothing it checks: {message}"


def check_episodes(trainer) -> None:
    """The embedding table is finite and every episode's indices point into it."""
    table = trainer.data_collator.embeddings().to_tensor()  # the store's VectorTable as one tensor
    assert table.ndim == 2 and len(table) > 0 and torch.isfinite(table).all()
    assert table.shape[1] == trainer.fssa_config.encoder.embedding_dim
    evals = trainer.eval_dataset.values() if isinstance(trainer.eval_dataset, dict) else [trainer.eval_dataset]
    for episodes in (trainer.train_dataset, *evals, trainer.heldout_dataset):
        if episodes is None:
            continue
        episodes = episodes.dataset(0) if isinstance(episodes, RedrawnEpisodes) else episodes
        assert len(episodes) > 0
        for name in EPISODE_COLUMNS[1:]:
            indices = episodes.data.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
            assert ((indices >= 0) & (indices < len(table))).all(), name


def train_steps(trainer, steps: int = 2) -> None:
    """`steps` optimizer steps on the trainer's own batches (`Trainer.train` costs half a second of setup, ten times
    the steps), loss and weights finite after each."""
    trainer.create_optimizer()
    trainer.model.train()
    loader = trainer.get_train_dataloader()
    batches = iter(loader)
    for _ in range(steps):
        batch = next(batches, None)
        if batch is None:
            batches = iter(loader)
            batch = next(batches)
        with step_scope(trainer):
            loss = trainer.compute_loss(trainer.model, batch)
            assert torch.isfinite(loss), loss
            loss.backward()
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
    for name, param in trainer.model.named_parameters():
        assert torch.isfinite(param).all(), name


def step_scope(trainer):
    """The scope of one step's LoRA gates (LoRA trainers), or none."""
    return trainer.np_step() if hasattr(trainer, "np_step") else contextlib.nullcontext()


@torch.no_grad()
def check_losses(trainer) -> None:
    """The loss of every episode, training, evaluation and held-out, is finite: a bad value in a pair that the
    first steps did not draw counts too."""
    trainer.model.eval()
    evals = trainer.eval_dataset.values() if isinstance(trainer.eval_dataset, dict) else [trainer.eval_dataset]
    for loader in (
        trainer.get_train_dataloader(),
        *(trainer.get_eval_dataloader(d) for d in (*evals, trainer.heldout_dataset) if d is not None),
    ):
        for batch in loader:
            with step_scope(trainer):
                loss = trainer.compute_loss(trainer.model, batch)
            assert torch.isfinite(loss), loss


def check_scores(trainer, dataset: Dataset, case: Case) -> None:
    """The trained model scores the dataset's own responses, with its own pairs as context, to finite rewards: what
    training accepted, inference accepts too."""
    model = trainer.steerable_model().eval()
    rows = dataset.select(range(min(3, len(dataset)))).to_list()
    vectors = case.source == "precomputed"
    keys = ("chosen_embedding", "rejected_embedding") if vectors else ("prompt", "chosen", "rejected")
    responses = [row[keys[-2]] for row in rows]
    prompts = [row.get("prompt", "") if not vectors else "" for row in rows]
    context = [{k: row[k] for k in keys if k in row} for row in rows]
    scores = model.score(prompts, responses, context=context)
    assert scores.shape == (len(responses),) and torch.isfinite(scores).all(), scores


def run_case(case: Case, trainer_factory, names=TRAINING_ARGUMENTS) -> str:
    """Build the trainer on the case's dataset: a `ValueError` naming the problem (one of the [`bad_columns`], if
    any), or a run whose every loss is finite, that trains to finite weights and scores finitely. Returns the
    outcome."""
    dataset = build_dataset(case)
    if dataset is None:
        return "refused by Arrow"
    expected = bad_columns(dataset, case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # identical pairs, skipped users: legal
        try:
            trainer = trainer_factory(case, dataset)
        except ValueError as error:
            assert_names_the_problem(error, expected or [*dataset.column_names, *names])
            return "refused by a ValueError"
        except (TypeError, KeyError, AttributeError, pa.ArrowNotImplementedError):
            if hits_known_bug(dataset, case):
                return "known bug"
            raise
        assert not expected, f"trained on a dataset with bad {sorted(expected)}"
        check_episodes(trainer)
        check_losses(trainer)
        train_steps(trainer)
        check_scores(trainer, dataset, case)
    return "trained"


# ---------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def _quiet_datasets():
    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    yield
    if enabled:
        datasets.enable_progress_bars()


@pytest.fixture(scope="module")
def tokenizer():
    tokenizer = word_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE  # as real chat models have: conversational rows are legal
    return tokenizer


@pytest.fixture(scope="module")
def backbone(tokenizer):
    """The tiny frozen body that embeds texts (`context_embedding="base"`), built once."""
    body = tiny_reward_model(tokenizer).model
    body.config._name_or_path = "tiny-qwen2-body"
    return body


@pytest.fixture(scope="module")
def output_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fuzz"))


def embedding_trainer(backbone, tokenizer, output_dir):
    def build(case: Case, dataset: Dataset) -> NPEmbeddingRewardTrainer:
        base = case.source == "base"
        args = NPEmbeddingRewardConfig(
            output_dir=output_dir, context_embedding=case.source, decoder_hidden_dim=8, **FAST, **case.knobs
        )
        return NPEmbeddingRewardTrainer(
            model=backbone if base else None,
            args=args,
            train_dataset=dataset,
            eval_dataset=dataset if case.eval_too else None,
            processing_class=tokenizer if base else None,
        )

    return build


def lora_trainer(tokenizer, output_dir):
    def build(case: Case, dataset: Dataset) -> NPRewardTrainer:
        args = NPRewardConfig(output_dir=output_dir, bf16=False, hypernetwork_hidden_dim=8, **FAST, **case.knobs)
        return NPRewardTrainer(
            model=tiny_reward_model(tokenizer),
            args=args,
            train_dataset=dataset,
            eval_dataset=dataset if case.eval_too else None,
            processing_class=tokenizer,
            peft_config=LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["q_proj"]),
        )

    return build


# ------------------------------------------------------------------------------------------- 1. the data path
def test_embedding_trainer_refuses_or_trains_finitely(backbone, tokenizer, output_dir):
    """The constructor of NPEmbeddingRewardTrainer (checks, embedding, held-out split, episodes) on nasty datasets,
    then the loss of every episode, two steps and a score: texts embedded by a tiny backbone, or precomputed
    vectors."""
    outcomes, seen = Counter(), set()
    build = embedding_trainer(backbone, tokenizer, output_dir)

    @fuzz_settings(max_examples=250)
    @given(case=cases())
    def run(case):
        assume_new(case, seen)
        outcomes[run_case(case, build)] += 1

    run()
    print(dict(outcomes))
    # The fuzzer reaches both sides of the checks (the counts are those of the derandomized run).
    assert outcomes["trained"] >= 40 and outcomes["refused by a ValueError"] >= 40, outcomes


def test_lora_reward_trainer_refuses_or_trains_finitely(tokenizer, output_dir):
    """The same for NPRewardTrainer: TRL's tokenization and length filter, then episodes, on text data."""
    outcomes, seen = Counter(), set()
    build = lora_trainer(tokenizer, output_dir)

    @fuzz_settings(max_examples=30)
    @given(case=cases(sources=("base",), max_nasty=1, mixed=False))
    def run(case):
        assume_new(case, seen)
        outcomes[run_case(case, build)] += 1

    run()
    print(dict(outcomes))
    assert outcomes["trained"] >= 8, outcomes


# ---------------------------------------------------------------------------------------------------- 2. score
@pytest.fixture(scope="module")
def text_models(tokenizer, backbone, output_dir):
    """One model of each text kind, trained two steps: a LoRA reward model, a reward model on frozen embeddings of
    the tiny backbone, and a policy. Each as a function that wraps it anew (a new wrapper has an empty embedding
    cache: one example's texts do not change the next one's outcome), with the module its forward passes run
    through."""
    pairs = style_preference_dataset(4)
    tiny = dict(num_targets=2, max_context=1, eval_context_sizes=[0, 1], hypernetwork_hidden_dim=8)
    lora = NPRewardTrainer(
        model=tiny_reward_model(tokenizer),
        args=NPRewardConfig(output_dir=output_dir, bf16=False, **FAST, **tiny),
        train_dataset=pairs,
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["q_proj", "v_proj"]),
    )
    tiny.pop("hypernetwork_hidden_dim")
    embedding = NPEmbeddingRewardTrainer(
        model=backbone,
        args=NPEmbeddingRewardConfig(output_dir=output_dir, decoder_hidden_dim=8, **FAST, **tiny),
        train_dataset=pairs,
        processing_class=tokenizer,
    )
    dpo = NPDPOTrainer(
        model=tiny_causal_lm(tokenizer),
        args=NPDPOConfig(output_dir=output_dir, bf16=False, hypernetwork_hidden_dim=8, **FAST, **tiny),
        train_dataset=pairs,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, target_modules=["q_proj"]),
    )
    models = {}
    for name, trainer in (("lora reward", lora), ("embedding reward", embedding), ("policy", dpo)):
        train_steps(trainer)
        model = trainer.steerable_model()
        body = model.embedder.model if name == "embedding reward" else model.model.get_base_model().model
        models[name] = (trainer.steerable_model, [body])
    return models


@pytest.fixture(scope="module")
def vector_model(output_dir):
    """A reward model trained two steps on precomputed embeddings: responses and contexts are vectors."""
    g = torch.Generator().manual_seed(0)
    train = Dataset.from_dict(
        {
            "chosen_embedding": torch.randn(8, EMBEDDING_DIM, generator=g).tolist(),
            "rejected_embedding": torch.randn(8, EMBEDDING_DIM, generator=g).tolist(),
            "user_id": ["u1", "u2"] * 4,
        }
    )
    tiny = dict(num_targets=2, max_context=1, eval_context_sizes=[0, 1], decoder_hidden_dim=8)
    args = NPEmbeddingRewardConfig(output_dir=output_dir, context_embedding="precomputed", **FAST, **tiny)
    trainer = NPEmbeddingRewardTrainer(model=None, args=args, train_dataset=train)
    train_steps(trainer)
    model = trainer.steerable_model().eval()
    return model, [model.np_modules.encoder, model.np_modules.decoder]


def score_outcome(model, watched, prompts, responses, context, latent, batch_size, refused_for=()) -> str:
    """`score` raises a `ValueError` naming an argument before any forward pass of the `watched` modules, or returns
    one finite float per prompt. `refused_for`: the arguments of a call that must be refused, one of which the
    error must name."""
    forwards = []
    handles = [module.register_forward_pre_hook(lambda *args: forwards.append(1)) for module in watched]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores = model.score(prompts, responses, context=context, latent=latent, batch_size=batch_size)
    except ValueError as error:
        assert not forwards, f"a forward pass ran before the ValueError: {error}"
        assert_names_the_problem(error, refused_for or SCORE_ARGUMENTS)
        return "refused"
    finally:
        for handle in handles:
            handle.remove()
    assert not refused_for, f"scored despite bad {refused_for}"
    expected = 1 if isinstance(prompts, str) else len(prompts)
    assert isinstance(scores, torch.Tensor) and scores.shape == (expected,), scores
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all(), scores
    return "scored"


# Inputs of `score`: each call breaks at most one part (texts, their form, context, latent or batch size), so that
# most calls reach the model, and says which arguments must then be refused. Left out, as known bug 4 (see the
# xfails): lone surrogates, conversations as tuples, dict contexts whose columns are not sequences, float64 latents
# past float32's range. Legal latents are moderate (|z| <= 1e4): the models check no magnitude.
PARTS = (None, None, None, "texts", "form", "context", "typo", "latent", "both", "batch_size")
bad_values = st.one_of(
    st.none(),
    st.integers(-3, 3),
    st.floats(),
    st.booleans(),
    st.binary(max_size=3),
    st.dictionaries(st.sampled_from(["role", "content", "text"]), st.integers(), max_size=2),
    st.lists(st.integers(), max_size=2),
    st.just(torch.zeros(2)),
)
good_texts = st.one_of(
    st.sampled_from(PROMPTS + CLEAN["chosen"]), st.sampled_from(EXOTIC), long_texts, st.text(max_size=8)
)
chat_message = st.fixed_dictionaries({"role": st.sampled_from(("user", "assistant")), "content": good_texts})
chats = st.lists(chat_message, min_size=1, max_size=2)
# What a text may not be, or not in a call whose texts are plain (`False`) or conversations (`True`).
off_texts = {
    False: st.one_of(chats, conversations(), bad_values),
    True: st.one_of(any_texts, conversations(), bad_values),
}
# Misspellings of each key of a context pair: the checks must refuse a pair that has one instead of the key.
TYPOS = {
    "prompt": ("promt", "Prompt", "prompts"),
    "chosen": ("choosen", "Chosen"),
    "rejected": ("rejceted", "Rejected"),
    "chosen_embedding": ("chosen_embeddings", "Chosen_embedding"),
    "rejected_embedding": ("rejected_embeding",),
}


@st.composite
def contexts(draw, values, off_values, keys, broken: str | None = None):
    """`(context, refused_for)`: None, [], a list of pairs or a dict of columns. Broken, `"typo"`: a key misspelt in
    every pair that has it, as a script building the pairs would (refused, naming `context`); `"context"`: pairs
    with bad values or a prompt in only some of them, one pair alone, or no pairs at all (the last two refused)."""
    optional = {"user_id": st.sampled_from(["u1", None, 3]), "score": st.floats()}  # ignored keys
    prompted = "prompt" in keys and draw(st.booleans())
    pair = st.fixed_dictionaries({k: values for k in keys if k != "prompt" or prompted}, optional=optional)
    if broken is None:
        form = draw(st.sampled_from(["pairs", "pairs", "pairs", "none", "empty", "columns"]))
        if form in ("none", "empty"):
            return None if form == "none" else [], ()
        rows = draw(st.lists(pair, min_size=1, max_size=4))
        if form == "columns":
            return {key: [row[key] for row in rows] for key in rows[0] if all(key in row for row in rows)}, ()
        return rows, ()
    if broken == "typo":  # the prompt first: a misspelt `prompt` is the one that would pass unnoticed
        pair = st.fixed_dictionaries({k: values for k in keys}, optional=optional)
        rows = draw(st.lists(pair, min_size=1, max_size=4))
        key = draw(st.sampled_from(keys))
        typo = draw(st.sampled_from(TYPOS[key]))
        return [{typo if k == key else k: v for k, v in row.items()} for row in rows], ("context",)
    form = draw(st.sampled_from(["pairs", "pairs", "pairs", "one pair", "not pairs"]))
    if form == "not pairs":
        context = st.one_of(any_texts, st.integers(), st.lists(st.one_of(any_texts, st.integers()), min_size=1))
        return draw(context), ("context",)
    if form == "one pair":
        return draw(pair), ("context",)
    if "prompt" in keys:
        optional["prompt"] = values
    pair = st.fixed_dictionaries({k: values for k in keys if k != "prompt"}, optional=optional)
    rows = draw(st.lists(pair, min_size=1, max_size=4))
    for row in rows:
        if draw(st.booleans()):
            row[draw(st.sampled_from(sorted(row)))] = draw(st.one_of(bad_values, off_values))
    return rows, ()


good_latents = st.lists(st.floats(-3, 3), min_size=LATENT_DIM, max_size=LATENT_DIM).map(torch.tensor)
moderate = st.floats(-1e4, 1e4, width=32)
# Legal latents of other types: floats as Python, NumPy (float64) or integers.
odd_latents = st.one_of(
    st.lists(moderate, min_size=LATENT_DIM, max_size=LATENT_DIM),
    st.lists(moderate, min_size=LATENT_DIM, max_size=LATENT_DIM).map(np.array),
    st.lists(st.integers(-3, 3), min_size=LATENT_DIM, max_size=LATENT_DIM).map(torch.tensor),
)


def with_non_finite(position: int, value: float) -> torch.Tensor:
    latent = torch.zeros(LATENT_DIM)
    latent[position] = value
    return latent


invalid_latents = st.one_of(
    st.builds(with_non_finite, st.integers(0, LATENT_DIM - 1), st.sampled_from(NON_FINITE)),
    st.lists(moderate, max_size=6).filter(lambda v: len(v) != LATENT_DIM).map(torch.tensor),
    st.tuples(st.integers(1, 2), st.integers(1, 5)).map(lambda shape: torch.zeros(*shape)),
    st.sampled_from([torch.ones(LATENT_DIM, dtype=torch.bool), torch.zeros(LATENT_DIM, dtype=torch.cfloat)]),
    st.sampled_from(["z", b"z", 3, [None] * LATENT_DIM, [[0.0]] * LATENT_DIM, [math.nan] * LATENT_DIM]),
    st.just(np.full(LATENT_DIM, np.inf)),
)
good_batch_sizes = st.one_of(st.just(16), st.integers(1, 3))
bad_batch_sizes = st.sampled_from([0, -1, 1.5, True, None, "2", np.int64(2)])


@st.composite
def user_and_batch_size(draw, broken, values, off_values, keys):
    """`(context, latent, batch_size, refused_for)`: the user given by a context or a latent (broken: by both), and
    the arguments for which the call must be refused (one of which the error must name)."""
    context, latent, refused_for = None, None, ()
    if broken == "latent":
        invalid = draw(st.booleans())
        latent, refused_for = draw(invalid_latents if invalid else odd_latents), ("latent",) if invalid else ()
    elif broken == "both":
        context = draw(st.lists(st.fixed_dictionaries({k: values for k in keys if k != "prompt"}), max_size=2))
        latent, refused_for = draw(good_latents), ("context", "latent")
    elif broken not in ("context", "typo") and draw(st.integers(0, 3)) == 0:
        latent = draw(good_latents)
    else:
        context, refused_for = draw(
            contexts(values, off_values, keys, broken if broken in ("context", "typo") else None)
        )
    if broken == "batch_size":
        return context, latent, draw(bad_batch_sizes), ("batch_size",)
    return context, latent, draw(good_batch_sizes), refused_for


@st.composite
def text_calls(draw):
    """Texts in one format (plain, or conversations), and a context in the same format."""
    broken, chat = draw(st.sampled_from(PARTS)), draw(st.integers(0, 3)) == 0
    texts = chats if chat else any_texts
    cells = mostly(texts, off_texts[chat], one_in=3) if broken == "texts" else texts
    n = draw(st.integers(1, 3))
    if broken == "form":
        if draw(st.booleans()):
            prompts, responses = draw(column(n, cells)), draw(column(draw(st.integers(0, 4).filter(n.__ne__)), cells))
        else:
            prompts, responses = draw(st.one_of(bad_values, st.just({"prompt": "p1"}))), draw(column(n, cells))
    elif not chat and draw(st.integers(0, 4)) == 0:
        prompts, responses = draw(any_texts), draw(any_texts)  # a single string is a batch of one
    else:
        prompts, responses = draw(column(n, cells)), draw(column(n, cells))
    values = chats if chat else good_texts  # a context's chosen and rejected must not be empty
    keys = ("prompt", "chosen", "rejected")
    *user, refused_for = draw(user_and_batch_size(broken, values, off_texts[chat], keys))
    return prompts, responses, *user, ("prompts", "responses") if broken == "form" else refused_for


def has_blank_texts(prompts, responses) -> bool:
    """Whether a (prompt, response) is plain text of whitespace only: known bug 5, a frozen-embedding model fails to
    embed a text of no tokens unless others share its batch."""
    if isinstance(prompts, str):
        prompts, responses = [prompts], [responses]
    if not (isinstance(prompts, list) and isinstance(responses, list)):
        return False
    return any(
        isinstance(p, str) and isinstance(r, str) and not (p + r).strip()
        for p, r in zip(prompts, responses, strict=False)
    )


def test_score_of_text_models_refuses_or_is_finite(text_models):
    """`score` of a LoRA reward model, a frozen-embedding reward model and a policy on nasty texts, contexts (typos,
    wrong types, empty), latents (wrong shape, NaN) and batch sizes."""
    outcomes, seen = Counter(), set()

    @fuzz_settings(max_examples=150)
    @given(call=text_calls())
    def run(call):
        assume_new(call, seen)
        for name, (steerable_model, watched) in text_models.items():
            if name == "embedding reward" and has_blank_texts(*call[:2]):
                continue  # known bug 5 (see the xfails)
            outcomes[score_outcome(steerable_model().eval(), watched, *call)] += 1

    run()
    print(dict(outcomes))
    assert outcomes["scored"] >= 60 and outcomes["refused"] >= 40, outcomes


vector = st.lists(st.floats(-10, 10, width=32), min_size=EMBEDDING_DIM, max_size=EMBEDDING_DIM)
bad_vectors = st.one_of(
    st.lists(st.one_of(st.floats(), st.none()), max_size=EMBEDDING_DIM + 1),
    st.lists(st.sampled_from(["0.5", "x"]), min_size=EMBEDDING_DIM, max_size=EMBEDDING_DIM),
    st.lists(vector, min_size=1, max_size=2),
    st.lists(st.floats(-1e39, 1e39), min_size=EMBEDDING_DIM, max_size=EMBEDDING_DIM).map(np.array),
    st.just(torch.zeros(EMBEDDING_DIM)),
    any_texts,
    bad_values,
)


@st.composite
def vector_calls(draw):
    """Responses as lists of vectors or `(N, D)` tensors, as many prompts (which only count), a context of vector
    pairs; broken: vectors of any shape, type or value, prompts of another count."""
    broken, n = draw(st.sampled_from(PARTS)), draw(st.integers(1, 3))
    cells = mostly(vector, bad_vectors, one_in=3) if broken == "texts" else vector
    if broken == "form":
        shape = draw(st.sampled_from([(0, EMBEDDING_DIM), (n, 2), (n, EMBEDDING_DIM, 1), (EMBEDDING_DIM,)]))
        responses = draw(st.sampled_from([torch.zeros(shape), draw(vector)]))
    elif draw(st.booleans()):
        responses = torch.tensor(draw(column(n, vector)))
    else:
        responses = draw(column(n, cells))
    count = len(responses) if broken != "form" or draw(st.booleans()) else draw(st.integers(0, 4))
    prompts = draw(column(count, st.one_of(st.just(""), any_texts, st.none())))
    keys = ("chosen_embedding", "rejected_embedding")
    *user, refused_for = draw(user_and_batch_size(broken, vector, st.one_of(bad_vectors, chats), keys))
    return prompts, responses, *user, ("prompts", "responses") if broken == "form" else refused_for


def test_score_of_a_model_on_precomputed_embeddings_refuses_or_is_finite(vector_model):
    """`score` of a reward model trained on precomputed embeddings: responses and contexts are vectors (ragged,
    None, NaN, of the wrong size or type), prompts only count."""
    outcomes, seen = Counter(), set()
    model, watched = vector_model

    @fuzz_settings(max_examples=80)
    @given(call=vector_calls())
    def run(call):
        assume_new(call, seen)
        outcomes[score_outcome(model, watched, *call)] += 1

    run()
    print(dict(outcomes))
    assert outcomes["scored"] >= 15 and outcomes["refused"] >= 10, outcomes


# ------------------------------------------------------------------------------------------------ found by fuzzing
# Minimal reproductions of what the fuzzing found (bugs 1-6, all fixed but 3, which stays a strict xfail); the
# properties above still leave these inputs out, so each is pinned here.
USERS = ["u1", "u2"] * 4


def message(content, role="assistant"):
    return [{"role": role, "content": content}]


@pytest.mark.parametrize(
    ("columns", "lora"),
    [
        ({"chosen": list(range(8)), "rejected": ["b1"] * 8}, False),
        ({"chosen": ["a1"] * 8, "rejected": [0.5] * 8}, False),
        ({"prompt": [True] * 8, "chosen": ["a1"] * 8, "rejected": ["b1"] * 8}, False),
        ({"chosen": [b"a1"] * 8, "rejected": ["b1"] * 8}, False),
        ({"chosen": [["a1", "a2"]] * 8, "rejected": [["b1"]] * 8}, False),
        ({"prompt": ["p1 "] * 8, "chosen": [message("a1")] * 8, "rejected": [message("b1")] * 8}, False),
        ({"prompt": [message("p1", "user")] * 8, "chosen": ["a1"] * 8, "rejected": ["b1"] * 8}, False),
        ({"chosen": [[{"content": "a1"}]] * 8, "rejected": [[{"content": "b1"}]] * 8}, True),
    ],
    ids=["int", "float", "bool-prompt", "bytes", "string-lists", "text-prompt", "chat-prompt", "role-less"],
)
def test_texts_of_another_type_are_refused(backbone, tokenizer, output_dir, columns, lora):
    case = Case({"user_id": USERS, **columns}, "user_id", "base", knobs=dict(num_targets=2, max_context=1))
    build = lora_trainer(tokenizer, output_dir) if lora else embedding_trainer(backbone, tokenizer, output_dir)
    assert run_case(case, build) == "refused by a ValueError"


@pytest.mark.parametrize("lora", [False, True], ids=["embedding", "lora"])
def test_large_string_texts_train(backbone, tokenizer, output_dir, lora):
    columns = {"user_id": USERS, "prompt": ["p1 "] * 8, "chosen": ["a1", "a2"] * 4, "rejected": ["b1"] * 8}
    case = Case(columns, "user_id", "base", view="large_string", knobs=dict(num_targets=2, max_context=1))
    build = lora_trainer(tokenizer, output_dir) if lora else embedding_trainer(backbone, tokenizer, output_dir)
    assert run_case(case, build) == "trained"


def precomputed(**columns) -> dict[str, list]:
    g = torch.Generator().manual_seed(0)
    return {
        "chosen_embedding": torch.randn(8, EMBEDDING_DIM, generator=g).tolist(),
        "rejected_embedding": torch.randn(8, EMBEDDING_DIM, generator=g).tolist(),
        "user_id": USERS,
        **columns,
    }


def with_value(value) -> list[list[float]]:
    rows = precomputed()["chosen_embedding"]
    rows[3][1] = value
    return rows


@pytest.mark.parametrize(
    "columns",
    [precomputed(chosen_embedding=with_value(1e39)), precomputed(margin=[0.0] * 7 + [1e39])],
    ids=["embedding", "margin"],
)
def test_values_past_float32_are_refused(backbone, tokenizer, output_dir, columns):
    case = Case(columns, "user_id", "precomputed", knobs=dict(num_targets=2, max_context=1))
    assert run_case(case, embedding_trainer(backbone, tokenizer, output_dir)) in ("refused by a ValueError", "trained")


@pytest.mark.xfail(
    strict=True,
    reason="known bug 3: no magnitude bound on precomputed embeddings; a finite 1e20 makes a Gaussian latent "
    "encoder train to NaN / inf weights in two steps.",
)
def test_known_bug_huge_finite_embeddings_train_finitely(backbone, tokenizer, output_dir):
    columns = precomputed(chosen_embedding=with_value(1e20))
    case = Case(columns, "user_id", "precomputed", knobs=dict(num_targets=2, max_context=1, latent_type="gaussian"))
    assert run_case(case, embedding_trainer(backbone, tokenizer, output_dir)) in ("refused by a ValueError", "trained")


@pytest.mark.parametrize(
    "call",
    [
        dict(prompts=["\ud800"], responses=["a1"]),
        dict(prompts=["p1 "], responses=["a1"], context=[{"chosen": "a\udcff", "rejected": "b1"}]),
        dict(prompts=["p1 "], responses=["a1"], context={"chosen": None, "rejected": None}),
        dict(prompts=["p1 "], responses=["a1"], latent=np.full(LATENT_DIM, 1e39)),
        dict(prompts=[""], responses=[({"role": "assistant", "content": "a1"},)]),
    ],
    ids=["surrogate-text", "surrogate-context", "context-columns", "float64-latent", "tuple-conversation"],
)
def test_score_refuses_bad_unicode_columns_tuples_and_float32_overflow(text_models, call):
    steerable_model, watched = text_models["lora reward"]
    arguments = [call.get(name) for name in ("prompts", "responses", "context", "latent")]
    score_outcome(steerable_model().eval(), watched, *arguments, 16)


@pytest.mark.parametrize("texts", [("", ""), ("", " "), (" ", "\t")])
def test_blank_texts_are_refused_by_a_frozen_embedding_model(text_models, texts):
    steerable_model, watched = text_models["embedding reward"]
    score_outcome(steerable_model().eval(), watched, [texts[0]], [texts[1]], None, None, 16)
