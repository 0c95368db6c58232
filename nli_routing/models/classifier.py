"""Classifier: fully connected layers (optionally routed) and a shared final layer."""

from __future__ import annotations

from torch import Tensor, nn

from ..routing import RoutedLayer, Trajectory
from .blocks import fc_block


class Classifier(nn.Module):
    """``layers`` FC layers of ``hidden`` units (ReLU), then a shared linear layer to the classes.

    With ``routed`` (a per-step :class:`RoutedLayer` built by ``routed_fc_stack``) the hidden
    layers are routed; the final layer is always shared.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int = 3,
        hidden: int = 600,
        layers: int = 3,
        dropout: float = 0.0,
        routed: RoutedLayer | None = None,
        entry: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.routed = routed
        self.entry = entry  # an unrouted layer before the routed ones (a recursive set keeps one size)
        if routed is None:
            dims = [in_dim] + [hidden] * layers
            self.hidden = nn.Sequential(*(fc_block(dims[i], dims[i + 1], "relu", dropout) for i in range(layers)))
        else:
            self.hidden = None
        self.out = nn.Linear(hidden if layers else in_dim, num_classes)

    def forward(self, x: Tensor, meta: Tensor | None = None) -> tuple[Tensor, list[Trajectory]]:
        if self.routed is not None:
            if self.entry is not None:
                x = self.entry(x)
            x, traj = self.routed(x, meta)
            return self.out(x), [traj]
        return self.out(self.hidden(x)), []
