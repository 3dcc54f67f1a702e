# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""LoRAHypernetwork: z -> rank-wise gates (and a reward-head direction), the identity at initialisation."""

import torch

from fssa_trl.modeling import LoRAHypernetwork


def test_identity_at_init_and_shapes():
    hypernet = LoRAHypernetwork(latent_dim=5, num_layers=3, rank=4, hidden_dim=16, head_dim=7)
    modulation = hypernet(torch.randn(2, 5))
    assert modulation.gates.shape == (2, 3, 4) and modulation.head.shape == (2, 7)
    torch.testing.assert_close(modulation.gates, torch.ones(2, 3, 4))
    torch.testing.assert_close(modulation.head, torch.zeros(2, 7))
    assert LoRAHypernetwork(latent_dim=5, num_layers=3, rank=4).forward(torch.randn(1, 5)).head is None


def test_different_latents_give_different_gates_once_trained():
    hypernet = LoRAHypernetwork(latent_dim=5, num_layers=3, rank=4, hidden_dim=16)
    torch.nn.init.normal_(hypernet.mlp[-1].weight)
    gates = hypernet(torch.randn(2, 5)).gates
    assert not torch.allclose(gates[0], gates[1])
