from roboloop.policies.act.config import ACTConfig
from roboloop.policies.act.policy import ACTPolicy

__all__ = ["ACTConfig", "ACTPolicy"]
