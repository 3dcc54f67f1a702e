# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Active onboarding: which pairwise questions to ask a new user next, and a simulation of asking them.

A steerable model infers a user's latent z from that user's choices (the context). Some questions teach it much about
z, others nothing: a pair every user answers alike, or a pair nobody has a preference on. [`suggest_queries`] ranks
candidate pairs the user has not labelled yet by how much the answer is expected to tell about z:

- `"bald"` ([Houlsby et al. 2011](https://huggingface.co/papers/1112.5745)): the mutual information between the
  answer y and z under q(z | context), `H[E_z p(y | z)] - E_z H[p(y | z)]`, from samples of z. High where the
  users the model still finds plausible disagree; zero where all of them would answer alike, and also where each of
  them would answer by a coin flip. Needs a Gaussian latent (`latent_type="gaussian"`).
- `"entropy"`: the predictive entropy `H[E_z p(y | z)]` (for a deterministic latent, `H[p(y | z)]`). High wherever
  the model cannot predict the answer, including pairs nobody has a preference on; works for any latent.
- `"random"`: a random order, the baseline.

For a pair (a, b), `p(y = a | z) = sigmoid(r(x, a, z) - r(x, b, z))` (the Bradley-Terry-Luce model; for a policy, its
implicit DPO reward; for a DPL head, `Phi((mu_a - mu_b) / sqrt(s_a^2 + s_b^2))`)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..modeling.inputs import as_vectors, check_pair_format, check_text, context_rows
from ..modeling.latent_encoder import LatentOutput
from ..modeling.reward_model import SteerableEmbeddingRewardModel
from ..modeling.steerable import Context, SteerableModel

STRATEGIES = ("bald", "entropy", "random")
# Rows of the frozen-embedding decoder per forward pass when scoring many latent samples at once (memory bound).
DECODER_CHUNK_ROWS = 65536
# Answer configurations of the selected pairs that greedy BatchBALD tracks exactly (2**10: the first 11 selections).
MAX_ANSWER_CONFIGURATIONS = 1024


@dataclass
class QuerySuggestions:
    """The questions [`suggest_queries`] proposes.

    Args:
        indices (`list[int]`): indices into the candidates, best first; `min(k, number of distinct candidates)` of
            them.
        scores (`list[float]`): the acquisition value of each selected candidate when it was selected (nats for
            `"bald"` and `"entropy"`, a uniform draw for `"random"`); for `k > 1`, after the earlier selections.
        strategy (`str`): the strategy used.
        candidate_scores (`torch.Tensor` of shape `(N,)`): the acquisition value of every candidate under the given
            context (before any selection); `candidate_scores.argsort(descending=True)` ranks them all.
    """

    indices: list[int]
    scores: list[float]
    strategy: str
    candidate_scores: torch.Tensor


# ------------------------------------------------------------------------------------------------- candidates
@dataclass
class _Candidates:
    """The candidates in a canonical order of their two responses (so that swapping a candidate's labels changes
    nothing, bit for bit), with the distinct (prompt, response) rows they are scored on."""

    swapped: list[bool]  # (N,) whether the canonical first response is the candidate's second (`rejected`)
    first: list[int]  # (N,) row of the canonical first response
    second: list[int]  # (N,) row of the canonical second response
    duplicate_of: list[int]  # (N,) index of the first identical candidate (itself when none)
    prompts: list  # (U,) prompt of each distinct row
    responses: list | torch.Tensor  # (U,) response of each distinct row: text, conversation, or (U, D) embeddings


def _candidate_form(model: SteerableModel) -> tuple[str, str]:
    return ("chosen_embedding", "rejected_embedding") if model.scores_embeddings else ("chosen", "rejected")


def _text_key(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)  # a conversation


def _vectors(candidates: list, name: str, dim: int) -> torch.Tensor:
    """`(N, dim)` float32 vectors of column `name` of the candidates; a `ValueError` names a bad one."""
    try:  # one conversion for the common case, a list of equal-length number lists
        rows = torch.from_numpy(np.asarray([c[name] for c in candidates], dtype=np.float32))
        if rows.shape == (len(candidates), dim) and torch.isfinite(rows).all():
            return rows
    except (TypeError, ValueError):
        pass
    return as_vectors([c[name] for c in candidates], dim, f"`candidates[{{i}}][{name!r}]`")  # names the bad row


def _prepare(model: SteerableModel, candidates: list) -> _Candidates:
    """Check the candidates (a `ValueError` names the index) and put each in canonical order."""
    a_name, b_name = _candidate_form(model)
    for i, pair in enumerate(candidates):
        if not isinstance(pair, Mapping) or not {a_name, b_name} <= set(pair):
            raise ValueError(
                f"candidates[{i}] must be a dict with {a_name!r} and {b_name!r} (the two responses, in any order)"
                f"{', and optionally prompt' if a_name == 'chosen' else ''}; got {pair!r}."
            )
    if model.scores_embeddings:
        dim = model.np_modules.encoder.embedding_dim
        a_rows, b_rows = _vectors(candidates, a_name, dim), _vectors(candidates, b_name, dim)
        prompts = [""] * len(candidates)
        a_keys, b_keys = [v.tobytes() for v in a_rows.numpy()], [v.tobytes() for v in b_rows.numpy()]
        a_values, b_values = list(a_rows), list(b_rows)
    else:
        prompts = [c.get("prompt", "") for c in candidates]
        a_values, b_values = [c[a_name] for c in candidates], [c[b_name] for c in candidates]
        for i, (prompt, a, b) in enumerate(zip(prompts, a_values, b_values, strict=True)):
            check_text(prompt, f"`candidates[{i}]['prompt']`", allow_empty=True)
            for name, value in ((a_name, a), (b_name, b)):
                check_text(value, f"`candidates[{i}][{name!r}]`", allow_empty=False)
                check_pair_format(prompt, value, f"`candidates[{i}]`")
        a_keys, b_keys = [_text_key(v) for v in a_values], [_text_key(v) for v in b_values]

    rows: dict[tuple, int] = {}
    row_prompts, responses, swapped, first, second, duplicate_of = [], [], [], [], [], []
    seen: dict[tuple, int] = {}

    def row(prompt, response, key) -> int:
        if key not in rows:
            rows[key] = len(row_prompts)
            row_prompts.append(prompt)
            responses.append(response)
        return rows[key]

    for i, prompt in enumerate(prompts):
        prompt_key = _text_key(prompt)
        key_a, key_b, a, b = a_keys[i], b_keys[i], a_values[i], b_values[i]
        swapped.append(key_b < key_a)  # canonical order: the labels of a candidate carry no information
        if swapped[-1]:
            key_a, key_b, a, b = key_b, key_a, b, a
        first.append(row(prompt, a, (prompt_key, key_a)))
        second.append(row(prompt, b, (prompt_key, key_b)))
        duplicate_of.append(seen.setdefault((prompt_key, key_a, key_b), i))
    if model.scores_embeddings:
        responses = torch.stack(responses)  # (U, D)
    return _Candidates(swapped, first, second, duplicate_of, row_prompts, responses)


# ---------------------------------------------------------------------------------------------------- scoring
def posterior(model: SteerableModel, context: Context = None) -> LatentOutput:
    """q(z | context) of `model`: its mean `(1, latent_dim)` and, for a Gaussian latent, its std."""
    encoder = model.np_modules.encoder
    param = next(encoder.parameters())
    chosen, rejected, mask = (t.to(param.device) for t in model._context_tensors(context))
    with torch.no_grad():
        return encoder(chosen.to(param.dtype), rejected.to(param.dtype), mask)


class _RowRewards:
    """Rewards (and DPL variances) of the distinct candidate rows under a batch of latents `(S, latent_dim)`.

    A frozen-embedding model embeds each row once (here, or from its cache) and scores all samples in one decoder
    pass; other models call `score(..., latent=z)` once per sample (a policy caches its reference log-probs)."""

    def __init__(self, model: SteerableModel, prompts: list, responses: list, batch_size: int):
        self.model, self.prompts, self.responses, self.batch_size = model, prompts, responses, batch_size
        self.embeddings = None
        if isinstance(model, SteerableEmbeddingRewardModel):
            param = next(model.model.parameters())
            if model.scores_embeddings:
                embeddings = responses  # (U, D), checked
            else:
                embeddings = model.embed_pairs(prompts, responses)
            self.embeddings = embeddings.to(param.device, param.dtype)  # (U, D)

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`(S, U)` rewards and variances (`None` for a BTL head); `latents=None` for a context-free model."""
        if self.embeddings is None:
            if latents is None:
                return self.model.score(self.prompts, self.responses, batch_size=self.batch_size)[None], None
            return torch.stack(
                [self.model.score(self.prompts, self.responses, latent=z, batch_size=self.batch_size) for z in latents]
            ), None
        decoder, rows = self.model.np_modules.decoder, len(self.embeddings)
        latents = latents.to(self.embeddings)
        means, variances = [], []
        step = max(1, DECODER_CHUNK_ROWS // rows)
        for start in range(0, len(latents), step):
            chunk = latents[start : start + step]  # (s, L)
            embeddings = self.embeddings.repeat(len(chunk), 1)  # (s * U, D)
            mean, var = decoder(embeddings, chunk.repeat_interleave(rows, dim=0))
            means.append(mean.view(len(chunk), rows))
            variances.append(None if var is None else var.view(len(chunk), rows))
        mean = torch.cat(means).float().cpu()
        return mean, None if variances[0] is None else torch.cat(variances).float().cpu()


def _first_preferred(rewards: torch.Tensor, variances: torch.Tensor | None, cands: _Candidates) -> torch.Tensor:
    """`(S, N)` p(canonical first response preferred | z_s), float64."""
    first, second = torch.tensor(cands.first), torch.tensor(cands.second)
    diff = (rewards[:, first] - rewards[:, second]).double()
    if variances is None:
        return torch.sigmoid(diff)
    return torch.special.ndtr(diff / (variances[:, first] + variances[:, second]).double().sqrt())


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of a Bernoulli(p), elementwise (0 at p = 0 and 1)."""
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p))


def _pick(values: torch.Tensor, eligible: torch.Tensor) -> int:
    """The first maximum of `values` among the eligible candidates (ties go to the lower index)."""
    return int(torch.where(eligible, values, -math.inf).argmax())


def greedy_batch_bald(
    p: torch.Tensor, eligible: torch.Tensor, k: int, max_configurations: int = MAX_ANSWER_CONFIGURATIONS
) -> tuple[list[int], list[float], torch.Tensor]:
    """Greedy BatchBALD ([Kirsch et al. 2019](https://huggingface.co/papers/1906.08158)) on `(S, N)` answer
    probabilities under S samples of z.

    Each round adds the candidate j that most raises the joint mutual information `I(y_selected, y_j; z) =
    H[y_selected, y_j] - sum_i E_z H[y_i | z]`, with the joint predictive `p(y_1..y_m) = mean_s prod_i p(y_i | z_s)`
    over the same samples. The first round is BALD. A candidate whose answer the samples tie to an earlier
    selection's (a near-duplicate, or a question about the same trait) adds little, so the batch spreads over what is
    still unknown. The answer configurations of the selected pairs are enumerated exactly up to
    `max_configurations`, then only the most probable are kept. With S samples the information a batch can show is
    at most log S nats.

    Returns the selected indices, the gain of each when selected, and the first round's values (BALD) of all.
    """
    samples = p.shape[0]
    answers = torch.stack([p, 1 - p], dim=-1)  # (S, N, 2)
    conditional = binary_entropy(p).mean(dim=0)  # (N,) E_z H[y_j | z]
    joint = p.new_ones(samples, 1)  # (S, C): p(the selected pairs' answers = configuration c | z_s)
    eligible = eligible.clone()
    selected_information, selected_conditional = 0.0, 0.0
    indices, gains, first_round = [], [], None
    for _ in range(k):
        mixture = torch.einsum("sc,snk->nck", joint, answers) / samples  # (N, C, 2): joint predictive
        joint_entropy = -torch.special.xlogy(mixture, mixture).sum(dim=(1, 2))
        information = joint_entropy - selected_conditional - conditional  # (N,) I(selected + j; z)
        gain = (information - selected_information).clamp_min(0.0)  # clamped against rounding
        first_round = gain if first_round is None else first_round
        best = _pick(gain, eligible)
        indices.append(best)
        gains.append(gain[best].item())
        eligible[best] = False
        selected_information = information[best].item()
        selected_conditional += conditional[best].item()
        joint = (joint[:, :, None] * answers[:, best, None, :]).reshape(samples, -1)  # (S, 2C)
        if joint.shape[1] > max_configurations:
            joint = joint[:, joint.mean(dim=0).topk(max_configurations).indices.sort().values]
    return indices, gains, first_round


# -------------------------------------------------------------------------------------------------- selection
def _check(model: SteerableModel, strategy: str, k: int, num_samples: int) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES}, got {strategy!r}.")
    for name, value in (("k", k), ("num_samples", num_samples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    if strategy != "bald":
        return
    if model.is_context_free:
        raise ValueError(
            "strategy='bald' needs a steerable model with a Gaussian latent; a context-free reward model has no "
            "latent. Use strategy='entropy' or 'random'."
        )
    if model.np_modules.encoder.latent_type != "gaussian":
        raise ValueError(
            "strategy='bald' needs a Gaussian latent: this model's q(z | context) is deterministic "
            "(latent_type='deterministic'), so the answer carries no information about z that the model can measure. "
            "Train with `latent_type='gaussian'` (NPEmbeddingRewardConfig, NPRewardConfig or NPDPOConfig), or use "
            "strategy='entropy'."
        )


def _latents(model: SteerableModel, context: list, noise: torch.Tensor) -> torch.Tensor | None:
    """`(S, latent_dim)` samples of q(z | context) (S = 1, the mean, for a deterministic latent); `None` for a
    context-free model."""
    if model.is_context_free:
        return None
    q = posterior(model, context)
    if q.std is None:
        return q.mean
    return q.mean + q.std * noise.to(q.mean)


def _answered(model: SteerableModel, pair: Mapping, own_first_wins: bool) -> dict:
    """Candidate `pair` as a context pair in the model's form, answered for its own first response (`chosen`) or
    for its second."""
    a_name, b_name = _candidate_form(model)
    winner, loser = (pair[a_name], pair[b_name]) if own_first_wins else (pair[b_name], pair[a_name])
    answered = {a_name: winner, b_name: loser}
    if "prompt" in pair and not model.scores_embeddings:
        answered["prompt"] = pair["prompt"]
    return answered


@torch.no_grad()
def suggest_queries(
    model: SteerableModel,
    candidates: Sequence[dict],
    context: Context = None,
    k: int = 1,
    strategy: str = "bald",
    num_samples: int = 32,
    seed: int = 0,
    batch_size: int = 16,
) -> QuerySuggestions:
    r"""The `k` candidate pairs to ask a user next, best first, given that user's `context` so far.

    Each candidate is scored once per sample of z ~ q(z | context) (`num_samples` samples for a Gaussian latent,
    the latent itself for a deterministic one), on the distinct (prompt, response) rows of the candidates, whose
    embeddings are computed once (a frozen-embedding model scores all samples in one decoder pass).

    The two responses of a candidate are its labels only: their order does not matter (the ranking is the same, bit
    for bit, with `chosen` and `rejected` swapped). Identical candidates (same prompt and the same two responses in
    either order) are never both selected: only the first of them is eligible.

    `k > 1` selects greedily, so that the batch does not spend questions on near-duplicates:

    - `"bald"`: greedy BatchBALD ([`greedy_batch_bald`]): each next pair is the one that most raises the joint
      mutual information of the batch's answers and z under the same samples of z. A pair whose answer the samples
      tie to an earlier pick's (a near-duplicate, or a question about the same trait) adds little. This relies only
      on the samples of q(z | context), not on how the encoder would update from answers it has not seen.
    - `"entropy"` (which a deterministic latent has no samples for): after each pick, the pair joins the context with
      the answer the model finds most likely, z is inferred again and every candidate is rescored.
    - `"random"`: one random order drawn from `seed`.

    With `k` larger than the number of distinct candidates, all of them are returned.

    Args:
        model ([`SteerableRewardModel`] or [`SteerablePolicy`]): the model (a policy is scored by its implicit reward).
        candidates (`Sequence[dict]`): pairs `{"prompt", "chosen", "rejected"}` (any order of the two responses;
            `prompt` optional), or `{"chosen_embedding", "rejected_embedding"}` for a model trained on precomputed
            embeddings. A `datasets.Dataset` of such rows works too.
        context (`list[dict]`, *optional*): the user's choices so far (`None` or `[]`: a new user).
        k (`int`, *optional*, defaults to `1`): how many questions to return.
        strategy (`str`, *optional*, defaults to `"bald"`): `"bald"` (needs `latent_type="gaussian"`), `"entropy"`
            or `"random"`.
        num_samples (`int`, *optional*, defaults to `32`): samples of z for a Gaussian latent.
        seed (`int`, *optional*, defaults to `0`): seed of the samples of z and of `"random"`; the result is a
            deterministic function of the model, context, candidates and seed.
        batch_size (`int`, *optional*, defaults to `16`): sequences per forward pass of a LoRA model or policy.

    Returns:
        [`QuerySuggestions`]

    Example:

    ```python
    >>> pool = [{"prompt": "Q: ", "chosen": "Short.", "rejected": "A long answer ..."}, ...]  # unlabelled pairs
    >>> ask = rm.suggest_queries(pool, context=[], k=3, strategy="bald")
    >>> [pool[i] for i in ask.indices]  # ask these three, then pass the answers as the context
    ```
    """
    _check(model, strategy, k, num_samples)
    context = context_rows(context)
    candidates = list(candidates)
    if not candidates:
        raise ValueError("`candidates` is empty: give at least one pair the user has not labelled yet.")
    cands = _prepare(model, candidates)
    eligible = torch.tensor([d == i for i, d in enumerate(cands.duplicate_of)])
    num_select = min(k, int(eligible.sum()))
    generator = torch.Generator().manual_seed(seed)
    if strategy == "random":
        values = torch.rand(len(candidates), generator=generator, dtype=torch.float64)
        order = [i for i in values.argsort(descending=True, stable=True).tolist() if eligible[i]][:num_select]
        return QuerySuggestions(order, [values[i].item() for i in order], strategy, values.float())

    latent_dim = 0 if model.is_context_free else model.np_modules.encoder.latent_dim
    noise = torch.randn(num_samples, latent_dim, generator=generator)  # the same draws in every greedy round
    rewards = _RowRewards(model, cands.prompts, cands.responses, batch_size)
    if strategy == "bald":
        p = _first_preferred(*rewards(_latents(model, context, noise)), cands)  # (S, N)
        indices, scores, candidate_scores = greedy_batch_bald(p, eligible, num_select)
        return QuerySuggestions(indices, scores, strategy, candidate_scores.float())

    indices, scores, candidate_scores = [], [], None
    for _ in range(num_select):  # "entropy": greedy, the model answering each selected pair itself
        p = _first_preferred(*rewards(_latents(model, context, noise)), cands)  # (S, N)
        values = binary_entropy(p.mean(dim=0))
        candidate_scores = values.float() if candidate_scores is None else candidate_scores
        best = _pick(values, eligible)
        indices.append(best)
        scores.append(values[best].item())
        eligible[best] = False
        if len(indices) < num_select:
            first_wins = bool(p[:, best].mean() >= 0.5)
            context.append(_answered(model, candidates[best], first_wins != cands.swapped[best]))
    return QuerySuggestions(indices, scores, strategy, candidate_scores)
