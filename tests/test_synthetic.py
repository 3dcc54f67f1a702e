# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""The paper's synthetic task (`benchmarks/synthetic.py`), reduced: NP-BTL must use its context, the BTL baseline
cannot, and a seed fixes the run."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "synthetic.py"


@pytest.fixture(scope="module")
def synthetic():
    spec = importlib.util.spec_from_file_location("synthetic_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data(synthetic):
    # 6000 pairs (4800 train, 600 test) instead of 20000, and fewer epochs: the benchmark's code path at a fifth of
    # its cost.
    return synthetic.synthetic_preferences(num_pairs=6000, seed=0)


def test_synthetic_data_follows_the_two_reward_functions(synthetic, data):
    train = data["train"]
    assert len(train) == 4800 and len(data["validation"]) == 600 and len(data["test"]) == 600
    chosen = np.array(train["chosen_embedding"])[:, 0]
    rejected = np.array(train["rejected_embedding"])[:, 0]
    z = np.array([int(u[-1]) for u in train["user_id"]])
    assert set(z) == {0, 1}
    assert (chosen > rejected)[z == 0].all()  # type 0's reward is increasing in y
    tent = lambda y: np.minimum(y, 1 - y)  # noqa: E731  (type 1's reward)
    assert (tent(chosen) > tent(rejected))[z == 1].all()
    # The types disagree on about half the pairs: a context-free model can get at most ~75%.
    disagree = (synthetic.synthetic_reward(chosen, 1 - z) < synthetic.synthetic_reward(rejected, 1 - z)).mean()
    assert 0.45 < disagree < 0.55


def test_np_btl_uses_the_context_and_btl_cannot(synthetic, data):
    reduced = dict(num_train_epochs=15)
    np_btl, _ = synthetic.train_and_evaluate("NP-BTL", data, "test", eval_context_draws=1, **reduced)
    btl, _ = synthetic.train_and_evaluate("BTL", data, "test", **reduced)

    assert np_btl.accuracy(10) >= 0.90
    assert np_btl.accuracy(10) >= np_btl.accuracy(0) + 0.10
    assert np_btl.accuracy(10) >= btl.accuracy(10) + 0.10
    for user in ("z=0", "z=1"):  # steering works for both types, not only the one the prior favours
        assert np_btl.accuracy(10, user) >= 0.85
    # BTL is context-free (the same score at every context size) and held near the 75% ceiling.
    assert len({btl.accuracy(c) for c in synthetic.CONTEXT_SIZES}) == 1
    assert btl.accuracy(0) <= 0.80
