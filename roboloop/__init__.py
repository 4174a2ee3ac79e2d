"""roboloop: robot manipulation policy learning on one policy interface, one episode store and one CLI."""

from __future__ import annotations

import os

# MuJoCo picks its OpenGL backend when it is first imported, so this must run before any
# `import mujoco`. EGL renders headless on CPU (Mesa llvmpipe); users can still choose osmesa.
os.environ.setdefault("MUJOCO_GL", "egl")

__version__ = "0.1.0"

from roboloop.envs import registration as _registration  # noqa: E402  (registers roboloop/* env ids)

_registration.register_all()
