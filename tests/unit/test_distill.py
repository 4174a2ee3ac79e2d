"""DAgger relabels with the teacher: whoever acts, the recorded action is the teacher's for that observation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from roboloop.core.errors import ConfigError
from roboloop.datasets.collection import env_args_for
from roboloop.datasets.store import EpisodeStore, EpisodeWriter
from roboloop.envs import make
from roboloop.envs.base import PROPRIO_KEY, STATE_KEY
from roboloop.sim2real.distill import DistillConfig, labelled_rollouts, student_env_kwargs


class Scripted:
    """A stand-in actor: its action is a fixed function of the state, so labels can be checked exactly."""

    def __init__(self, sign: float) -> None:
        self.sign, self.calls = sign, 0

    def reset(self, seed: int | None = None) -> None:
        pass

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        self.calls += 1
        x = float(obs[STATE_KEY][0])
        return np.array([self.sign * 0.5, 0.0, self.sign * np.tanh(10 * x), 0.0, -1.0], np.float32)


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_every_recorded_action_is_the_teachers_label(tmp_path: Path, beta: float) -> None:
    env = make("Lift", max_episode_steps=12)
    teacher, student = Scripted(+1.0), Scripted(-1.0)
    with EpisodeWriter(tmp_path / "labels.hdf5", env_args=env_args_for("Lift", {})) as writer:
        t_steps, s_steps = labelled_rollouts(env, teacher, student, beta=beta, n_episodes=3, seed=5, writer=writer,
                                             policy_id="round1")
    assert t_steps + s_steps == 36 and teacher.calls == student.calls == 36
    if beta == 0.0:
        assert t_steps == 0
    else:
        assert 0 < t_steps < 36
    with EpisodeStore(tmp_path / "labels.hdf5") as store:
        for i in range(len(store)):
            states, actions = store.read(i, f"obs/{STATE_KEY}"), store.read(i, "actions")
            labels = np.stack([teacher.act({STATE_KEY: s}) for s in states])  # obs before each action
            np.testing.assert_allclose(actions, labels)
            assert store.attrs(i)["source"] == "teacher_labels"
        if beta == 0.0:
            # The student steered: it moves the gripper in -x (its own action), while the labels say +x.
            states = store.read(0, f"obs/{STATE_KEY}")
            assert states[-1, 0] < states[0, 0] - 0.05
    env.close()


def test_the_student_sees_cameras_and_proprioception_under_visual_randomization() -> None:
    cfg = DistillConfig(teacher="x")
    kwargs = student_env_kwargs({"randomization": {"action_latency_steps": [1, 1]}, "cameras": ["top"]}, cfg)
    assert kwargs["cameras"] == ["front", "wrist"] and kwargs["proprio"] is True and kwargs["image_size"] == 84
    assert kwargs["randomization"]["action_latency_steps"] == [1, 1]  # the teacher's simulation stays
    assert kwargs["randomization"]["camera_angle_jitter"] > 0
    env = make("Lift", **kwargs, max_episode_steps=2)
    obs, _ = env.reset(seed=0)
    assert PROPRIO_KEY in obs and obs["observation.images.wrist"].shape == (84, 84, 3)
    env.close()
    with pytest.raises(ConfigError, match="observation.state"):
        DistillConfig(teacher="x", student=type(cfg.student)(obs_keys=[STATE_KEY]))
