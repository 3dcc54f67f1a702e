# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""NPLatentEncoder: a permutation- and padding-invariant set encoder with a learned empty-set prior."""

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from fssa_trl.modeling import LatentOutput, NPLatentEncoder, gaussian_kl
from fssa_trl.modeling.latent_encoder import LATENT_TYPES

D, LATENT, HIDDEN = 6, 4, 16
AGGREGATIONS = ["mean", "shrunk_mean", "sum", "attention"]


def make_encoder(aggregation="mean", latent_type="deterministic"):
    encoder = NPLatentEncoder(D, LATENT, HIDDEN, aggregation=aggregation, latent_type=latent_type, num_heads=2)
    with torch.no_grad():  # a non-zero prior, so "equals the prior" is not trivially "equals zero"
        encoder.empty_set.normal_()
    return encoder.eval()


def context(batch=3, size=5):
    return torch.randn(batch, size, D), torch.randn(batch, size, D)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_permutation_invariance(aggregation):
    encoder = make_encoder(aggregation)
    chosen, rejected = context()
    mask = torch.tensor([[True] * 5, [True, True, True, False, False], [True, False, True, False, True]])
    perm = torch.tensor([3, 0, 4, 2, 1])
    out = encoder(chosen, rejected, mask).z
    permuted = encoder(chosen[:, perm], rejected[:, perm], mask[:, perm]).z
    torch.testing.assert_close(permuted, out, atol=1e-5, rtol=1e-5)
    # Sanity: the pairs matter, so the check above is not vacuous.
    assert not torch.allclose(encoder(chosen.flip(0), rejected.flip(0), mask).z, out)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_padding_invariance(aggregation):
    encoder = make_encoder(aggregation)
    chosen, rejected = context(size=3)
    mask = torch.tensor([[True, True, True], [True, False, False], [True, True, False]])
    out = encoder(chosen, rejected, mask).z
    # Four extra masked pairs with arbitrary (large) values change nothing.
    extra_c, extra_r = 100 * torch.randn(3, 4, D), 100 * torch.randn(3, 4, D)
    padded_mask = torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], dim=1)
    padded = encoder(torch.cat([chosen, extra_c], 1), torch.cat([rejected, extra_r], 1), padded_mask).z
    torch.testing.assert_close(padded, out, atol=1e-5, rtol=1e-5)
    # Each row equals encoding that user alone, with no padding at all.
    for row in range(3):
        size = int(mask[row].sum())
        alone = encoder(chosen[row : row + 1, :size], rejected[row : row + 1, :size], mask[row : row + 1, :size]).z
        torch.testing.assert_close(out[row : row + 1], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_empty_set_gives_the_learned_prior(aggregation):
    encoder = make_encoder(aggregation)
    prior = encoder.latent_head(encoder.empty_set.unsqueeze(0))  # (1, latent_dim)
    chosen, rejected = context(batch=4, size=3)
    mask = torch.tensor([[False] * 3, [True, True, False], [False] * 3, [True, False, False]])
    z = encoder(chosen, rejected, mask).z
    assert torch.isfinite(z).all()  # attention over a fully masked row must not produce NaN
    torch.testing.assert_close(z[0], z[2])  # same z for every empty row, whatever its padded values
    torch.testing.assert_close(z[[0, 2]], prior.expand(2, -1))
    assert not torch.allclose(z[1], prior[0])
    # A context dimension of 0 for the whole batch gives the prior too.
    empty = encoder(torch.zeros(2, 0, D), torch.zeros(2, 0, D), torch.zeros(2, 0, dtype=torch.bool)).z
    torch.testing.assert_close(empty, prior.expand(2, -1))


def test_empty_set_prior_is_learned():
    encoder = make_encoder()
    z = encoder(torch.zeros(1, 0, D), torch.zeros(1, 0, D), torch.zeros(1, 0, dtype=torch.bool)).z
    z.sum().backward()
    assert encoder.empty_set.grad is not None and encoder.empty_set.grad.abs().sum() > 0


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("pair_features", ["concat", "difference"])
def test_every_parameter_gets_a_gradient_on_a_batch_of_empty_sets(aggregation, pair_features):
    """Under DeepSpeed ZeRO-3 every process must run the same modules and reduce a gradient for every parameter: a
    process whose batch holds only 0-shot episodes must not skip the attention."""
    encoder = NPLatentEncoder(D, LATENT, HIDDEN, aggregation=aggregation, num_heads=2, pair_features=pair_features)
    z = encoder(torch.zeros(2, 0, D), torch.zeros(2, 0, D), torch.zeros(2, 0, dtype=torch.bool)).z
    z.sum().backward()
    assert [name for name, p in encoder.named_parameters() if p.requires_grad and p.grad is None] == []


@pytest.mark.parametrize("latent_type", LATENT_TYPES)
@pytest.mark.parametrize("pair_features", ["concat", "difference"])
def test_prior_shift_moves_empty_sets_only(latent_type, pair_features):
    """`prior_shift` (fitted by `calibrate_prior`, never trained) starts at zero, which changes nothing, and then moves
    the latent of empty sets alone."""
    encoder = NPLatentEncoder(D, LATENT, HIDDEN, latent_type=latent_type, pair_features=pair_features)
    assert not encoder.prior_shift.requires_grad and torch.count_nonzero(encoder.prior_shift) == 0
    chosen, rejected = torch.randn(2, 3, D), torch.randn(2, 3, D)
    mask = torch.tensor([[True, True, False], [False, False, False]])  # second set empty
    before = encoder(chosen, rejected, mask)
    with torch.no_grad():
        encoder.prior_shift.copy_(torch.arange(LATENT, dtype=torch.float32))
    after = encoder(chosen, rejected, mask)
    torch.testing.assert_close(after.mean[0], before.mean[0], rtol=0, atol=0)
    torch.testing.assert_close(after.mean[1], before.mean[1] + encoder.prior_shift)
    if latent_type == "gaussian":
        torch.testing.assert_close(after.std, before.std)


def test_sum_is_count_times_mean():
    mean_encoder, sum_encoder = make_encoder("mean"), make_encoder("sum")
    sum_encoder.load_state_dict(mean_encoder.state_dict())
    chosen, rejected = context()
    mask = torch.tensor([[True] * 5, [True, True, False, False, False], [True, False, False, False, False]])
    counts = mask.sum(1, keepdim=True).float()
    torch.testing.assert_close(
        sum_encoder.aggregate(chosen, rejected, mask), counts * mean_encoder.aggregate(chosen, rejected, mask)
    )


def test_shrunk_mean_adds_one_pseudo_pair_at_the_empty_set():
    shrunk, mean = make_encoder("shrunk_mean"), make_encoder("mean")
    mean.load_state_dict(shrunk.state_dict())
    chosen, rejected = context()
    mask = torch.tensor([[True] * 5, [True, True, False, False, False], [False] * 5])
    counts = mask.sum(1, keepdim=True).float()
    expected = (counts * mean.aggregate(chosen, rejected, mask) + shrunk.empty_set) / (counts + 1)
    expected[2] = shrunk.empty_set  # an empty set is the pseudo-pair alone
    torch.testing.assert_close(shrunk.aggregate(chosen, rejected, mask), expected)


@pytest.mark.parametrize("latent_type", ["deterministic", "gaussian"])
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_difference_encoder_is_odd_in_the_choices(aggregation, latent_type):
    """Flipping every choice flips z (the spread of a Gaussian latent stays), and an empty context is z = 0: users
    with opposite tastes sit on either side of the 0-shot model by construction."""
    encoder = NPLatentEncoder(
        D, LATENT, HIDDEN, aggregation=aggregation, latent_type=latent_type, num_heads=2, pair_features="difference"
    ).eval()
    assert encoder.empty_set is None and encoder.antisymmetric
    chosen, rejected = context(batch=4)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False], [False] * 5, [True, False, True, False, True]])
    out, flipped = encoder(chosen, rejected, mask), encoder(rejected, chosen, mask)
    torch.testing.assert_close(flipped.mean, -out.mean)
    if latent_type == "gaussian":
        torch.testing.assert_close(flipped.std, out.std)
    assert out.mean[2].abs().max() == 0 and out.mean[[0, 1, 3]].abs().min() > 0
    empty = encoder(torch.zeros(2, 0, D), torch.zeros(2, 0, D), torch.zeros(2, 0, dtype=torch.bool))
    assert empty.mean.abs().max() == 0


@pytest.mark.parametrize("latent_type", LATENT_TYPES)
def test_bounded_latent_is_tanh_of_the_unbounded_one_and_stays_odd(latent_type):
    """`bounded=True` squashes z (a Gaussian's mean) into (-1, 1) with tanh of what the same weights give unbounded; the
    odd encoder stays odd, an empty context stays at 0, and the calibrated prior shift is added after the squash."""
    kwargs = dict(latent_type=latent_type, pair_features="difference")
    unbounded = NPLatentEncoder(D, LATENT, HIDDEN, **kwargs).eval()
    bounded = NPLatentEncoder(D, LATENT, HIDDEN, bounded=True, **kwargs).eval()
    bounded.load_state_dict(unbounded.state_dict())
    with torch.no_grad():  # latents far outside (-1, 1) unbounded
        unbounded.latent_head[-1].weight.mul_(100)
        bounded.latent_head[-1].weight.mul_(100)
    chosen, rejected = context(batch=3)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False], [False] * 5])
    free, out = unbounded(chosen, rejected, mask), bounded(chosen, rejected, mask)
    assert free.mean.abs().max() > 1
    torch.testing.assert_close(out.mean, torch.tanh(free.mean))
    assert out.mean.abs().max() <= 1  # tanh in float32 reaches 1.0 exactly far out
    torch.testing.assert_close(bounded(rejected, chosen, mask).mean, -out.mean)
    assert out.mean[2].abs().max() == 0
    if latent_type == "gaussian":
        torch.testing.assert_close(out.std, free.std)
    with torch.no_grad():
        bounded.prior_shift.fill_(0.5)
    torch.testing.assert_close(bounded(chosen, rejected, mask).mean[2], torch.full((LATENT,), 0.5))


def test_deterministic_latent():
    out = make_encoder()(*context(), torch.ones(3, 5, dtype=torch.bool), sample=True)
    assert out.std is None
    assert out.z is out.mean
    assert out.z.shape == (3, LATENT)


def test_gaussian_latent():
    encoder = make_encoder(latent_type="gaussian")
    chosen, rejected = context()
    mask = torch.ones(3, 5, dtype=torch.bool)
    out = encoder(chosen, rejected, mask)
    assert out.mean.shape == out.std.shape == (3, LATENT)
    assert (out.std > 0).all()
    torch.testing.assert_close(out.z, out.mean)  # no sampling unless asked
    sampled = encoder(chosen, rejected, mask, sample=True)
    torch.testing.assert_close(sampled.mean, out.mean)
    assert not torch.allclose(sampled.z, out.mean)
    # Reparameterised: the sample carries gradients to the encoder.
    sampled.z.sum().backward()
    assert all(p.grad is not None for p in encoder.latent_head.parameters())


def test_gaussian_kl():
    encoder = make_encoder(latent_type="gaussian")
    chosen, rejected = context()
    q = encoder(chosen, rejected, torch.ones(3, 5, dtype=torch.bool))
    p = encoder(chosen, rejected, torch.tensor([[True, False, False, False, False]] * 3))
    torch.testing.assert_close(gaussian_kl(q, q), torch.zeros(3))
    kl = gaussian_kl(q, p)
    assert kl.shape == (3,)
    assert (kl > 0).all()
    expected = kl_divergence(Normal(q.mean, q.std), Normal(p.mean, p.std)).sum(-1)
    torch.testing.assert_close(kl, expected)
    # KL is not symmetric, and the argument order is KL(q || p).
    expected_reverse = kl_divergence(Normal(p.mean, p.std), Normal(q.mean, q.std)).sum(-1)
    torch.testing.assert_close(gaussian_kl(p, q), expected_reverse)


def test_gaussian_kl_needs_gaussian_latents():
    deterministic = LatentOutput(z=torch.zeros(1, 2), mean=torch.zeros(1, 2))
    with pytest.raises(ValueError, match="latent_type='gaussian'"):
        gaussian_kl(deterministic, deterministic)


def test_unknown_aggregation_or_latent_type_raise():
    with pytest.raises(ValueError, match="`aggregation` must be one of"):
        NPLatentEncoder(D, aggregation="max")
    with pytest.raises(ValueError, match="`latent_type` must be one of"):
        NPLatentEncoder(D, latent_type="flow")
