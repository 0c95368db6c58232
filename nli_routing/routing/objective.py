"""The routing objective of a whole model: rewards and router losses of every routed layer at once.

A model with several routed layers (an LSTM's input-to-hidden and hidden-to-hidden transforms and its
routed classifier, a vision model's routed convolutions and FC stack) has one trajectory per layer.
:func:`routing_objective` assigns the batch's final reward to all of them and sums their router
losses. Layers whose losses are one computation over their rows (:func:`fusion_key`: tabular agents
under a learner that declares it, same actions and settings, no collaboration reward) are
concatenated along the batch into one ``[L * B, d]`` trajectory (shallower layers padded with inactive
steps), their state ids offset so that every layer keeps its own states, and their loss is computed
once: the same value and gradients as the sum of the per-layer losses (tested), with one set of
operators instead of one per layer. Other layers keep their own loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .rewards import CollaborationReward, assign_rewards
from .routers import Router
from .trajectory import Trajectory


def fusion_key(router: nn.Module, collaboration: CollaborationReward | None, trajectory: Trajectory) -> tuple | None:
    """What a layer's loss computation must share with another's to be fused with it, or None when it
    must stay alone: a router whose loss is its learner's (``Router.loss`` not overridden), a learner
    with ``fusion_settings()`` (its loss a sum over decisions with per-state weights, no parameters of
    its own), tabular states (``state_index`` and ``num_states``), no collaboration reward, no rewards
    assigned yet, and a loss that is not already one operator (``learner.loss_is_one_operator``: the native
    kernel's Q-learning loss, where concatenating the trajectories would dispatch more than it saves)."""
    learner = getattr(router, "learner", None)
    settings = getattr(learner, "fusion_settings", None)
    if (not isinstance(router, Router) or type(router).loss is not Router.loss or settings is None
            or trajectory.state_index is None or not trajectory.num_states or trajectory.final_reward is not None
            or (collaboration is not None and collaboration.rho != 0.0)):
        return None
    found = settings()
    if found is None:
        return None
    one_op = getattr(learner, "loss_is_one_operator", None)
    if one_op is not None and one_op(trajectory):  # concatenating would cost more operators than it saves
        return None
    return (type(learner), found, trajectory.num_actions, trajectory.stop_action,
            tuple(sorted(trajectory.extra)), trajectory.values.dtype, trajectory.values.device)


def _pad_depth(x: Tensor, depth: int, value) -> Tensor:
    """``x [B, d, ...]`` padded with ``value`` to ``[B, depth, ...]``."""
    if x.shape[1] == depth:
        return x
    pad = x.new_full((x.shape[0], depth - x.shape[1], *x.shape[2:]), value)
    return torch.cat([x, pad], 1)


def concat_trajectories(trajectories: Sequence[Trajectory]) -> Trajectory:
    """The trajectories of several layers as one, along the batch (rows of layer 0, then layer 1, ...).

    Each layer's ``state_index`` is offset by the states of the layers before it, so that per-state
    statistics stay per layer; shallower layers are padded to the deepest with inactive steps (action
    -1, value 0, no reward), which no learner reads (their weights are 0, and an active step followed
    by padding is its sample's last). All must have the same number of actions (:func:`fusion_key`)."""
    depth = max(t.depth for t in trajectories)
    offsets, total = [], 0
    for t in trajectories:
        offsets.append(total)
        total += int(t.num_states)

    def cat(get, value) -> Tensor:
        return torch.cat([_pad_depth(get(t), depth, value) for t in trajectories])

    first = trajectories[0]
    return Trajectory(
        meta=torch.cat([t.meta for t in trajectories]),
        actions=cat(lambda t: t.actions, -1),
        explored=cat(lambda t: t.explored, False),
        active=cat(lambda t: t.active, False),
        values=cat(lambda t: t.values, 0.0),
        state_index=torch.cat([_pad_depth(t.state_index + off if off else t.state_index, depth, off)
                               for t, off in zip(trajectories, offsets)]),
        extra={k: cat(lambda t, k=k: t.extra[k], 0) for k in first.extra},
        num_actions=first.num_actions,
        stop_action=first.stop_action,
        num_states=total,
    )


def routing_objective(
    parts: Sequence[tuple[nn.Module, CollaborationReward | None, Trajectory]], reward: Tensor, fuse: bool = True
) -> Tensor:
    """Assign the final ``reward [B]`` to every ``(router, collaboration reward, trajectory)`` of a model
    and return the sum of the router losses; layers that can share one computation (:func:`fusion_key`)
    are computed as one (``fuse=False``: every layer alone, the reference). Every trajectory holds its
    rewards afterwards, as after :func:`assign_rewards`."""
    groups: dict[tuple, list[int]] = {}
    alone: list[int] = []
    for i, (router, collab, traj) in enumerate(parts):
        key = fusion_key(router, collab, traj) if fuse else None
        if key is None:
            alone.append(i)
        else:
            groups.setdefault(key, []).append(i)
    total: Tensor | None = None
    for members in groups.values():
        if len(members) == 1:
            alone.extend(members)
            continue
        trajs = [parts[i][2] for i in members]
        fused = concat_trajectories(trajs)
        final = reward.to(fused.actions.device).float()
        assign_rewards(fused, final.repeat(len(trajs)))
        for traj, steps in zip(trajs, fused.step_rewards.split([t.batch_size for t in trajs])):
            traj.final_reward, traj.step_rewards = final, steps[:, :traj.depth]
        loss = parts[members[0]][0].learner.loss(fused)
        total = loss if total is None else total + loss
    for i in sorted(alone):
        router, collab, traj = parts[i]
        assign_rewards(traj, reward, collab)
        loss = router.loss(traj)
        total = loss if total is None else total + loss
    return total if total is not None else reward.new_zeros((), dtype=torch.float32)
