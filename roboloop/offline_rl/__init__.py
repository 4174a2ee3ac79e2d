"""Offline RL, offline-to-online finetuning and value-guided steering on replayed datasets."""

from roboloop.offline_rl.replay import MixedSampler, ReplayBuffer, Transitions, discounted_returns, replay_from_store

__all__ = ["MixedSampler", "ReplayBuffer", "Transitions", "discounted_returns", "replay_from_store"]
