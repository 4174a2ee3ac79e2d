"""The vectorized critic ensemble computes exactly what E separate MLPs with the same weights compute."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from roboloop.core.errors import InputError
from roboloop.offline_rl.networks import EnsembleLayerNorm, EnsembleLinear, QEnsemble


def member_mlp(ensemble: QEnsemble, e: int) -> nn.Sequential:
    """Member ``e`` of ``ensemble`` as a plain Linear/LayerNorm/ReLU stack holding a copy of its weights."""
    layers: list[nn.Module] = []
    for layer in ensemble.net:
        if isinstance(layer, EnsembleLinear):
            linear = nn.Linear(*layer.weight.shape[1:])
            linear.weight.data.copy_(layer.weight[e].T)
            linear.bias.data.copy_(layer.bias[e, 0])
            layers.append(linear)
        elif isinstance(layer, EnsembleLayerNorm):
            norm = nn.LayerNorm(layer.weight.shape[-1])
            norm.weight.data.copy_(layer.weight[e, 0])
            norm.bias.data.copy_(layer.bias[e, 0])
            layers.append(norm)
        else:
            layers.append(layer)
    return nn.Sequential(*layers)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_ensemble_equals_separate_members(layer_norm: bool) -> None:
    torch.manual_seed(0)
    ensemble = QEnsemble(5, 2, [16, 8], n_critics=3, layer_norm=layer_norm)
    with torch.no_grad():  # non-trivial LayerNorm affines, so a mixed-up member index shows
        for p in ensemble.parameters():
            p.add_(0.1 * torch.randn_like(p))
    obs, actions = torch.randn(7, 5), torch.randn(7, 2)
    q = ensemble(obs, actions)
    assert q.shape == (3, 7)
    for e in range(3):
        expected = member_mlp(ensemble, e)(torch.cat([obs, actions], -1)).squeeze(-1)
        torch.testing.assert_close(q[e], expected, rtol=1e-5, atol=1e-5)
    # members start different (independent initialization) and get their own gradients
    assert not torch.allclose(q[0], q[1])
    q[1].sum().backward()
    first = ensemble.net[0].weight.grad
    assert first[0].abs().sum() == 0 and first[2].abs().sum() == 0 and first[1].abs().sum() > 0
    # the scalar head (a dot product, not bmm) gets the gradient nn.Linear would
    member = member_mlp(ensemble, 1)
    member(torch.cat([obs, actions], -1)).sum().backward()
    torch.testing.assert_close(ensemble.net[-1].weight.grad[1], member[-1].weight.grad.T, rtol=1e-5, atol=1e-5)


def test_ensemble_rejects_wrong_shapes() -> None:
    with pytest.raises(InputError, match=r"obs \(B, 5\)"):
        QEnsemble(5, 2, [8])(torch.zeros(3, 4), torch.zeros(3, 2))
