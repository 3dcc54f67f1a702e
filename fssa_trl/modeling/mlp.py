# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""The multi-layer perceptron every NP module is built from."""

from __future__ import annotations

from torch import nn


def mlp(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2) -> nn.Sequential:
    """`num_layers` linear layers with GELU between them: `in_dim -> hidden_dim -> ... -> out_dim`.

    Example:

    ```python
    >>> from fssa_trl.modeling.mlp import mlp
    >>> mlp(4, 8, 2)
    Sequential(
      (0): Linear(in_features=4, out_features=8, bias=True)
      (1): GELU(approximate='none')
      (2): Linear(in_features=8, out_features=2, bias=True)
    )
    ```
    """
    if num_layers < 1:
        raise ValueError(f"An MLP needs at least one layer, got `num_layers={num_layers}`.")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(dim, hidden_dim), nn.GELU()]
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*layers)
