from roboloop.policies.mlp.config import MLPConfig
from roboloop.policies.mlp.policy import MLPPolicy

__all__ = ["MLPConfig", "MLPPolicy"]
