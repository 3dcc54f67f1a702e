# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Active onboarding: which pairwise questions to ask a new user next ([`suggest_queries`], in `selection.py`), and a
simulation of asking them ([`simulate_onboarding`], in `onboarding.py`). The synthetic task where only some questions
tell users apart is `fssa_trl.testing_utils.trait_preference_task`."""

from .onboarding import OnboardingCurves, simulate_onboarding, split_users
from .selection import STRATEGIES, QuerySuggestions, binary_entropy, greedy_batch_bald, posterior, suggest_queries

__all__ = [
    "STRATEGIES",
    "OnboardingCurves",
    "QuerySuggestions",
    "binary_entropy",
    "greedy_batch_bald",
    "posterior",
    "simulate_onboarding",
    "split_users",
    "suggest_queries",
]
