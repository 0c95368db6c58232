"""The toy of issue 15: routing where it is irrelevant must cost (almost) nothing.

A routed MLP (3 routed layers x ``width`` blocks Linear(64, 64) + ReLU, one tabular Q-learning
agent per task for 8 tasks, reward +1/-1 from a shared 10-class head; blocks SGD 0.5, routers SGD
0.01) learns labels that one linear teacher gives, whatever the task, on fresh batches of 128. With
``width = 1`` it is its unrouted twin (the engine is exact). Router settings not given are the
library's defaults (:class:`~nli_routing.routing.RouterConfig`).
"""

from __future__ import annotations

from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import nn

from nli_routing.models.blocks import routed_fc_stack
from nli_routing.routing import RouterConfig
from nli_routing.routing import assign_rewards, final_reward
from nli_routing.training.loop import task_loss

DIM, CLASSES, TASKS, DEPTH = 64, 10, 8, 3


def make_toy(width: int, seed: int = 0, **router_overrides) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    cfg = RouterConfig(num_meta=TASKS, router_seed=seed, **router_overrides)
    kwargs = cfg.router_kwargs()
    stack = routed_fc_stack([DIM] * (DEPTH + 1), width, TASKS, **kwargs)
    head = nn.Linear(DIM, CLASSES)
    return stack, head


def batches(seed: int, n: int):
    """``(x, task, label)`` triples; labels from one fixed linear teacher (routing is irrelevant)."""
    gen = torch.Generator().manual_seed(1234)
    teacher = torch.randn(DIM, CLASSES, generator=gen)
    data = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(128, DIM, generator=data)
        yield x, torch.randint(0, TASKS, (128,), generator=data), (x @ teacher).argmax(-1)


def train_toy(stack, head, steps: int = 300, seed: int = 0, kappa: float = 0.0) -> list[float]:
    """Train (``kappa``: eq. 7.4 squashing of exploratory samples); returns the mean training loss of
    every 50 steps."""
    block_params = [p for n, p in stack.named_parameters() if not n.startswith("router")] + list(head.parameters())
    block_opt = torch.optim.SGD(block_params, lr=0.5)
    router_opt = torch.optim.SGD(stack.router.parameters(), lr=0.01)
    losses, chunk = [], []
    for x, task, y in batches(seed, steps):
        h, traj = stack(x, task)
        logits = head(h)
        per_sample = F.cross_entropy(logits, y, reduction="none")
        loss = task_loss(per_sample, [traj], kappa)
        assign_rewards(traj, final_reward("correct", correct=logits.detach().argmax(-1) == y))
        block_opt.zero_grad()
        router_opt.zero_grad()
        (loss + stack.router.loss(traj)).backward()
        block_opt.step()
        router_opt.step()
        chunk.append(float(per_sample.detach().mean()))
        if len(chunk) == 50:
            losses.append(sum(chunk) / 50)
            chunk = []
    return losses


@torch.no_grad()
def eval_loss(stack, head, n: int = 4) -> float:
    """Greedy (eval-mode) loss on held-out batches."""
    stack.eval()
    total = sum(float(F.cross_entropy(head(stack(x, task)[0]), y)) for x, task, y in batches(999, n)) / n
    stack.train()
    return total


def defaults() -> dict:
    return {k: v for k, v in asdict(RouterConfig()).items() if k in ("exploration", "router_init", "learner")}
