"""Known-answer routing problems for every (learner, router) pair the router builder accepts.

A per-step routed layer of ``depth`` steps x 4 blocks; block k of step t adds the unit vector
``e_{t, k}`` to its input (the blocks have no parameters). Each of 3 tasks has one best path
(``BEST``); a sample's task loss is the number of steps that left it (``0.5 * ||y - target||^2``)
and its reward is +1 when the whole path is the task's best, else -1 (the ``"correct"`` reward of
the NLI models). Depth 1 is a contextual bandit, depth 2 needs credit for both steps. Routers are
built by :func:`nli_routing.routing.build_router` exactly as the models build them, start
from a uniform policy, and are trained the way the training loop trains them: the router loss plus
the task loss (which reaches relaxed routers through their straight-through weights).
"""

from __future__ import annotations

import torch
from torch import nn

from nli_routing.routing import build_router
from nli_routing.routing import RoutedLayer, assign_rewards, final_reward

WIDTH = 4
TASKS = 3
BEST = torch.tensor([[2, 1], [0, 3], [3, 0]])  # each task's best path (up to depth 2)
ROUTERS = ("tabular", "approx", "per-step", "dispatched")


class AddUnit(nn.Module):
    """``x + e_index`` (a parameter-free block whose identity is visible in the output)."""

    def __init__(self, dim: int, index: int) -> None:
        super().__init__()
        self.register_buffer("unit", torch.nn.functional.one_hot(torch.tensor(index), dim).float())

    def forward(self, x):
        return x + self.unit


def make_layer(router_type: str, learner: str, depth: int, seed: int, learner_kwargs=None) -> RoutedLayer:
    dim = depth * WIDTH
    torch.manual_seed(seed)  # the approximators' initial weights
    router = build_router(
        router_type, [dim] * (depth + 1), WIDTH, TASKS, learner=learner, exploration={"start": 0.2, "floor": 0.2},
        seed=seed, learner_kwargs=learner_kwargs, router_init=0.0, num_subrouters=2,
    )
    blocks = [[AddUnit(dim, t * WIDTH + k) for k in range(WIDTH)] for t in range(depth)]
    return RoutedLayer(blocks, router, depth=depth, recursive=False)


def optimizers(router: nn.Module, tabular_lr: float, mlp_lr: float = 3e-3) -> list[torch.optim.Optimizer]:
    """SGD on tables (tabular agents, learner-owned critic tables: the update the learners' equations
    are written for), Adam on every MLP (approximator routers, their critic heads, RELAX's critic)."""
    mlp = {id(p) for m in router.modules() if isinstance(m, nn.Linear) for p in m.parameters()}
    tables = [p for p in router.parameters() if id(p) not in mlp]
    mlps = [p for p in router.parameters() if id(p) in mlp]
    opts: list[torch.optim.Optimizer] = []
    if tables:
        opts.append(torch.optim.SGD(tables, lr=tabular_lr))
    if mlps:
        opts.append(torch.optim.Adam(mlps, lr=mlp_lr))
    return opts


def target_of(x: torch.Tensor, meta: torch.Tensor, depth: int) -> torch.Tensor:
    idx = torch.arange(depth) * WIDTH + BEST[meta, :depth]
    return x + torch.zeros_like(x).scatter_(1, idx, 1.0)


def train_layer(
    layer: RoutedLayer, depth: int, seed: int, batches: int, tabular_lr: float, batch: int = 64, reward: str = "correct"
) -> None:
    env = torch.Generator().manual_seed(seed + 1000)  # never shares a stream with the router's
    opts = optimizers(layer.router, tabular_lr)
    dim = depth * WIDTH
    for _ in range(batches):
        meta = torch.randint(0, TASKS, (batch,), generator=env)
        x = 0.1 * torch.randn(batch, dim, generator=env)
        y, traj = layer(x, meta)
        per_sample = 0.5 * (y - target_of(x, meta, depth)).pow(2).sum(1)
        correct = per_sample.detach() < 0.5
        assign_rewards(traj, final_reward(reward, correct=correct, per_sample_loss=per_sample))
        for opt in opts:
            opt.zero_grad()
        (layer.router.loss(traj) + per_sample.mean()).backward()
        for opt in opts:
            opt.step()


def greedy_hit_rate(layer: RoutedLayer, depth: int, n: int = 600) -> torch.Tensor:
    """``[TASKS]`` share of each task's samples whose greedy (eval-mode) path is the best path."""
    gen = torch.Generator().manual_seed(7)
    meta = torch.arange(n) % TASKS
    x = 0.1 * torch.randn(n, depth * WIDTH, generator=gen)
    layer.eval()
    with torch.no_grad():
        _, traj = layer(x, meta)
    layer.train()
    hit = (traj.actions == BEST[meta, :depth]).all(1).float()
    return torch.stack([hit[meta == m].mean() for m in range(TASKS)])
