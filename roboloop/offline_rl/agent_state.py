"""The parts every off-policy agent has: ``Trainables`` (its networks, optimizers and loose tensors: one optimizer
step by name, and the state a checkpoint keeps) and ``SoftActor`` (SAC's actor half, which SAC/RLPD and Cal-QL
share: a squashed-Gaussian actor, its automatically tuned entropy temperature and their optimizers)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from roboloop.core.errors import ConfigError
from roboloop.offline_rl.losses import action_distance, bc_regularized_actor_loss, sac_actor_loss, temperature_loss
from roboloop.policies.tanh_gaussian import TanhGaussianMLP


class FusedAdam(torch.optim.Adam):
    """``torch.optim.Adam(fused=True)`` (the same update, bit for bit, and the same ``state_dict``) whose steps skip
    torch's per-call bookkeeping: after the first step the parameters, moments and step counters of each group are
    kept in lists, and a step is one ``_fused_adam_`` call per group.

    Why: an off-policy update takes three optimizer steps over a handful of 256-unit layers, and torch's ``step``
    spends longer rebuilding and regrouping those lists (every call) than the fused kernel spends on the update
    (a SAC update's profile, one core: 250 us per step, 70 of them in the kernel). Step hooks still run.
    A step where some parameter has no gradient, or a group option the kernel call here does not pass (amsgrad,
    decoupled weight decay), takes torch's own path.
    """

    def __init__(self, params: Iterable[Tensor], lr: float) -> None:
        self._kept: list[tuple[dict[str, Any], list[Tensor], list[Tensor], list[Tensor], list[Tensor]]] | None = None
        super().__init__(params, lr=lr, fused=True)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self._kept = None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._kept = None  # the moments and counters are new tensors

    def zero_grad(self, set_to_none: bool = True) -> None:
        if not set_to_none:
            super().zero_grad(set_to_none=False)
            return
        for group in self.param_groups:
            for param in group["params"]:
                param.grad = None

    def _keep(self) -> None:
        groups = []
        for group in self.param_groups:
            params = list(group["params"])
            if group["amsgrad"] or group["decoupled_weight_decay"] or any(p not in self.state for p in params):
                return
            states = [self.state[p] for p in params]
            groups.append((group, params, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                           [s["step"] for s in states]))
        self._kept = groups

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        grads = None if self._kept is None else [[p.grad for p in kept[1]] for kept in self._kept]
        if closure is not None or grads is None or any(g is None for group_grads in grads for g in group_grads):
            loss = super().step(closure)
            self._keep()
            return loss
        for (group, params, exp_avgs, exp_avg_sqs, steps), group_grads in zip(self._kept, grads, strict=True):
            beta1, beta2 = group["betas"]
            torch._foreach_add_(steps, 1)
            torch._fused_adam_(params, group_grads, exp_avgs, exp_avg_sqs, [], steps, lr=group["lr"], beta1=beta1,
                               beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"], amsgrad=False,
                               maximize=group["maximize"])
        return None


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """No parameter gradients for ``module`` inside the block (gradients still flow through it to its inputs):
    the actor's loss backpropagates through the critic to the actions, and computing the critic's weight
    gradients there would be wasted work."""
    trained = [p for p in module.parameters() if p.requires_grad]
    for p in trained:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trained:
            p.requires_grad_(True)


def as_floats(metrics: dict[str, Tensor]) -> dict[str, float]:
    """An update's 0-d metric tensors as floats, read in one device-to-host copy: each ``.item()`` waits for the
    device's queue to drain, and an update reading its metrics one by one waited five to eight times (on a GPU,
    where the CPU queues kernels ahead of the device, every wait stalls that queueing)."""
    with torch.no_grad():
        values = torch.stack([m.float() for m in metrics.values()]).tolist()
    return dict(zip(metrics, values, strict=True))


def optimizer_step(loss: Tensor, *optimizers: torch.optim.Optimizer) -> None:
    """One backward of ``loss``, then a step of each optimizer (several when ``loss`` sums losses whose parameters
    do not overlap, each already detached from the others' inputs)."""
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for optimizer in optimizers:
        optimizer.step()


@dataclass
class Trainables:
    """Networks (targets included), optimizers by name, and tensors trained outside a module (``log_alpha``)."""

    networks: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    tensors: dict[str, Tensor] = field(default_factory=dict)

    def step(self, name: str, loss: Tensor) -> None:
        optimizer_step(loss, self.optimizers[name])

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs besides the replay data, cloned."""
        return {"networks": {k: m.state_dict() for k, m in self.networks.items()},
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "tensors": {k: t.detach().clone() for k, t in self.tensors.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, module in self.networks.items():
            module.load_state_dict(state["networks"][name])
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        with torch.no_grad():
            for name, tensor in self.tensors.items():
                tensor.copy_(state["tensors"][name])


class SoftActor:
    """SAC's actor objective ``alpha * log pi - Q`` with a reparameterized ``TanhGaussianMLP`` and the temperature
    ``alpha`` tuned toward ``target_entropy``. ``owner`` names the algorithm in errors."""

    def __init__(self, actor: TanhGaussianMLP, *, actor_lr: float, alpha_lr: float, init_alpha: float,
                 target_entropy: float, device: torch.device, owner: str) -> None:
        if not isinstance(actor, TanhGaussianMLP):
            raise ConfigError(f"{owner}'s actor is a TanhGaussianMLP (it needs reparameterized, bounded samples), "
                              f"got {type(actor).__name__}")
        self.actor = actor.to(device)
        self.log_alpha = torch.tensor(math.log(init_alpha), device=device, requires_grad=True)
        self.target_entropy = float(target_entropy)
        self.optimizers = {"actor": FusedAdam(actor.trainable_parameters(), actor_lr),
                           "alpha": FusedAdam([self.log_alpha], alpha_lr)}

    @property
    def alpha(self) -> Tensor:
        return self.log_alpha.exp()

    def update(self, obs: Tensor, critic: nn.Module, reduce: Callable[[Tensor], Tensor], *,
               data_actions: Tensor | None = None, bc_alpha: float | None = None,
               q_at_mode: bool = False) -> dict[str, Tensor]:
        """One actor step against ``reduce(critic(obs, actions) (E, B)) -> (B,)`` (the critic's weights get no
        gradient), then one temperature step. With ``bc_alpha``, the actor's objective is TD3+BC's: SAC's, scaled
        by ``bc_alpha / mean|Q|``, plus the squared distance of the actor's mode to ``data_actions`` (B, A).

        ``q_at_mode`` (with ``bc_alpha``) is DDPG+BC for the mode: the mode climbs Q at the mode, the action
        evaluations run, while the spread keeps SAC's objective at samples drawn around the mode held fixed.
        Without that second part nothing would pull the entropy down to its target (the temperature only ever
        pushes it up), and Cal-QL's backup, at a' ~ pi(s'), would value a near-uniform policy.

        Returns the metrics as detached 0-d tensors (the caller reads them with its own in ``as_floats``)."""
        alpha = self.alpha.detach()
        stats: dict[str, Tensor] = {}
        if bc_alpha is None:
            if q_at_mode:
                raise ConfigError("SoftActor.update: q_at_mode is DDPG+BC's extraction and needs bc_alpha")
            actions, log_probs = self.actor.rsample(obs)
            with frozen(critic):
                q = reduce(critic(obs, actions))
            actor_loss = sac_actor_loss(q, log_probs, alpha)
        else:
            if data_actions is None:
                raise ConfigError("SoftActor.update: bc_alpha needs the batch's data_actions")
            mean, log_std = self.actor(obs)
            mode = self.actor.squash(mean)
            if q_at_mode:
                actions, log_probs = self.actor.rsample_at(mean.detach(), log_std)
                with frozen(critic):
                    q_mode, q_samples = reduce(critic(torch.cat([obs, obs]), torch.cat([mode, actions]))).chunk(2)
                rl_loss, q = alpha * log_probs - q_samples - q_mode, q_mode
            else:
                actions, log_probs = self.actor.rsample_at(mean, log_std)
                with frozen(critic):
                    q = reduce(critic(obs, actions))
                rl_loss = alpha * log_probs - q
            actor_loss = bc_regularized_actor_loss(rl_loss, q, mode, data_actions, bc_alpha)
            stats["bc_distance"] = action_distance(mode, data_actions).detach()
        alpha_loss = temperature_loss(self.log_alpha, log_probs, self.target_entropy)
        # One backward for both: the actor's loss sees alpha detached and the temperature's sees log pi detached,
        # so each optimizer gets exactly the gradient of its own loss (the same steps as two backwards, cheaper).
        optimizer_step(actor_loss + alpha_loss, self.optimizers["actor"], self.optimizers["alpha"])
        return {"actor_loss": actor_loss.detach(), "entropy": -log_probs.detach().mean(), **stats}
