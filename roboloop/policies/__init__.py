"""BC policies, by name. The registry lists every member here (no registration by import side effect)."""

from __future__ import annotations

from roboloop.core.policy import Policy
from roboloop.core.registry import Registry
from roboloop.policies.act import ACTConfig, ACTPolicy
from roboloop.policies.diffusion import DiffusionConfig, DiffusionPolicy
from roboloop.policies.mlp import MLPConfig, MLPPolicy

POLICIES: Registry[type[Policy]] = Registry("policy", {
    ACTPolicy.name: ACTPolicy,
    DiffusionPolicy.name: DiffusionPolicy,
    MLPPolicy.name: MLPPolicy,
})

__all__ = ["POLICIES", "ACTConfig", "ACTPolicy", "DiffusionConfig", "DiffusionPolicy", "MLPConfig", "MLPPolicy"]
