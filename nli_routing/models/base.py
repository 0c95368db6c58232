"""The base of every routed model: its routed layers by name, their routers, and the routing objective.

A model kind (CBOW/NLI, LSTM, Transformer, vision) builds its encoder and head, then declares its
routed layers with :meth:`RoutedModel.register_routed` (names in routing records, logs and errors). The
training loop, evaluation and numerics read the routed parts only through this interface:

- ``named_routed_layers()`` / ``routed_layers`` / ``routed_layer_names``: the layers in forward order
  (a routed layer with a ``router`` and ``num_actions``; the trajectories of ``forward`` are in this order);
- ``routers()``, ``router_parameters()`` (routers and a learned dispatcher's agent), ``block_parameters()``;
- ``set_epoch(epoch)``: the exploration schedules;
- ``router_loss(out, labels)``: the final reward of every sample (``config.reward``), the collaboration
  reward of each layer, and the sum of the router losses (plus the dispatcher's);
- an optional learned ``dispatcher`` (:meth:`attach_dispatcher`, :meth:`freeze_routing`).
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor, nn

from ..routing import CollaborationReward, assign_rewards, final_reward

__all__ = ["RoutedModel"]


class RoutedModel(nn.Module):
    """Routed layers by name, their routers and rewards, and an optional learned dispatcher.

    ``config`` needs ``num_meta`` (meta classes), ``reward`` (final reward kind) and ``rho``
    (collaboration reward weight), as every routed model config has.
    """

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self._routed: list[tuple[str, nn.Module]] = []  # registered through their parents (no second key)
        self.routing_frozen = False  # stage 2 of two-stage dispatch: only the dispatcher learns
        self._unfrozen: list[nn.Parameter] = []

    # ------------------------------------------------------------------ routed layers
    def register_routed(self, layers: Sequence[tuple[str, nn.Module]]) -> None:
        """Declare the routed layers (``(name, layer)`` in forward order; names must be unique; none for an
        unrouted model) and build each one's collaboration reward. Every model kind calls it once, after
        building its parts."""
        names = [name for name, _ in layers]
        if len(set(names)) != len(names):
            raise ValueError(f"routed layer names must be unique, got {names}")
        self._routed = list(layers)
        self.collaboration = nn.ModuleList(
            CollaborationReward(layer.num_actions, self.config.rho, depths=layer.block_sets) for _, layer in layers
        )

    def named_routed_layers(self) -> list[tuple[str, nn.Module]]:
        return list(self._routed)

    @property
    def routed_layers(self) -> list[nn.Module]:
        return [layer for _, layer in self._routed]

    @property
    def routed_layer_names(self) -> list[str]:
        return [name for name, _ in self._routed]

    def routers(self) -> list[nn.Module]:
        return [layer.router for _, layer in self._routed]

    def router_parameters(self) -> list[nn.Parameter]:
        params = [p for r in self.routers() for p in r.parameters()]
        if self.dispatcher is not None:
            params += self.dispatcher.router_parameters()
        return params

    def block_parameters(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self.router_parameters()}
        return [p for p in self.parameters() if id(p) not in ids and p.requires_grad]

    def set_epoch(self, epoch: int) -> None:
        for r in self.routers():
            r.set_epoch(epoch)
        if self.dispatcher is not None:
            self.dispatcher.set_epoch(epoch)

    # ------------------------------------------------------------------ the routing objective
    def router_loss(self, out: Any, labels: Tensor) -> Tensor:
        """Assign rewards to every trajectory of ``out`` (an output with ``logits``, ``per_sample_loss``,
        ``trajectories`` and ``dispatch``, None without a dispatcher) and return the summed router (and dispatcher) loss."""
        dispatch = out.dispatch
        if not out.trajectories and dispatch is None:
            return out.logits.new_zeros(())
        correct = out.logits.detach().argmax(-1) == labels
        reward = final_reward(self.config.reward, correct=correct, per_sample_loss=out.per_sample_loss)
        total = out.logits.new_zeros(())
        if not self.routing_frozen:
            for (_, layer), collab, traj in zip(self._routed, self.collaboration, out.trajectories):
                assign_rewards(traj, reward, collab)
                total = total + layer.router.loss(traj)
        if dispatch is not None and self.dispatcher.training:
            total = total + self.dispatcher.loss(dispatch, reward)
        return total

    # ------------------------------------------------------------------ learned dispatcher
    @property
    def dispatcher(self) -> nn.Module | None:
        """The learned dispatcher choosing each sample's meta class (see :meth:`attach_dispatcher`)."""
        return self._modules.get("dispatcher")

    def attach_dispatcher(self, dispatcher: nn.Module) -> None:
        """Route with the meta class a learned dispatcher picks from the tokens (the batch's meta
        labels are then never read by the model; they stay in the batch for per-class reports).

        The dispatcher's number of classes must equal the routers' number of meta classes.
        """
        if dispatcher.num_dispatch != self.config.num_meta:
            raise ValueError(
                f"the dispatcher chooses among {dispatcher.num_dispatch} classes but the model's routers "
                f"have {self.config.num_meta} meta classes"
            )
        self._modules["dispatcher"] = dispatcher  # a registered submodule (saved, moved, trained)

    def freeze_routing(self) -> None:
        """Fix every parameter and router outside the dispatcher (stage 2 of two-stage dispatch).

        The frozen parts stay in eval mode (greedy routers, no dropout) even under ``model.train()``
        and their router losses are not computed; only the dispatcher trains.
        """
        if self.dispatcher is None:
            raise ValueError("attach a dispatcher before freezing the routing (nothing would learn)")
        keep = {id(p) for p in self.dispatcher.parameters()}
        self._unfrozen = [p for p in self.parameters() if id(p) not in keep and p.requires_grad]
        for p in self._unfrozen:
            p.requires_grad_(False)
        self.routing_frozen = True
        self.train(self.training)

    def detach_dispatcher(self) -> nn.Module | None:
        """Remove the dispatcher (routing reads the batch's meta labels again) and undo
        :meth:`freeze_routing`; returns the removed dispatcher."""
        dispatcher = self._modules.pop("dispatcher", None)
        for p in self._unfrozen:
            p.requires_grad_(True)
        self._unfrozen = []
        self.routing_frozen = False
        self.train(self.training)
        return dispatcher

    def train(self, mode: bool = True) -> "RoutedModel":
        super().train(mode)
        if self.routing_frozen:
            for child in self.children():
                if child is not self.dispatcher:
                    child.train(False)
        return self
