from roboloop.policies.diffusion.config import DiffusionConfig
from roboloop.policies.diffusion.policy import DiffusionPolicy

__all__ = ["DiffusionConfig", "DiffusionPolicy"]
