"""What every off-policy agent does alike: one optimizer step, and its state for checkpoints and resume."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn


def optimizer_step(optimizer: torch.optim.Optimizer, loss: Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def agent_state(networks: Mapping[str, nn.Module], optimizers: Mapping[str, torch.optim.Optimizer],
                tensors: Mapping[str, Tensor] | None = None) -> dict[str, Any]:
    """Networks (incl. targets), optimizers and loose tensors (e.g. ``log_alpha``), all cloned."""
    return {"networks": {k: m.state_dict() for k, m in networks.items()},
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "tensors": {k: t.detach().clone() for k, t in (tensors or {}).items()}}


def load_agent_state(state: Mapping[str, Any], networks: Mapping[str, nn.Module],
                     optimizers: Mapping[str, torch.optim.Optimizer], tensors: Mapping[str, Tensor] | None = None
                     ) -> None:
    for name, module in networks.items():
        module.load_state_dict(state["networks"][name])
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(state["optimizers"][name])
    with torch.no_grad():
        for name, tensor in (tensors or {}).items():
            tensor.copy_(state["tensors"][name])
