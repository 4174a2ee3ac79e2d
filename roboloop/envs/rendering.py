"""Offscreen renderers for an env's model: one per image size, created on first use.

Renderers still open when the interpreter exits are closed by an ``atexit`` hook: otherwise their
GL contexts are garbage-collected after EGL has been torn down, which prints ``EGLError``
tracebacks for every env the user forgot to ``close()``. MuJoCo registers its own ``eglTerminate``
hook when it creates its first context, and hooks run last-registered-first, so ours is registered
just after that first context exists.
"""

from __future__ import annotations

import atexit
import weakref

import mujoco
import numpy as np

_OPEN: weakref.WeakSet[Renderers] = weakref.WeakSet()
_hook_registered = False


class Renderers:
    """Renders cameras of ``model`` at any size (one ``mujoco.Renderer`` per size)."""

    def __init__(self, model: mujoco.MjModel) -> None:
        self.model = model
        self._by_size: dict[tuple[int, int], mujoco.Renderer] = {}
        _OPEN.add(self)

    def render(self, data: mujoco.MjData, camera: str | mujoco.MjvCamera, size: tuple[int, int]) -> np.ndarray:
        """(H, W, 3) uint8 image of ``camera``; ``data``'s derived poses must be current."""
        renderer = self._by_size.get(size)
        if renderer is None:
            renderer = self._by_size[size] = mujoco.Renderer(self.model, height=size[0], width=size[1])
            _register_exit_hook()
        renderer.update_scene(data, camera=camera)
        return renderer.render()

    def close(self) -> None:
        for renderer in self._by_size.values():
            renderer.close()
        self._by_size.clear()


def _register_exit_hook() -> None:
    global _hook_registered
    if not _hook_registered:
        atexit.register(_close_all)
        _hook_registered = True


def _close_all() -> None:
    for renderers in list(_OPEN):
        renderers.close()
