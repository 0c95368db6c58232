"""Exploration schedules for epsilon-greedy routers."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ExplorationSchedule:
    """epsilon(epoch) = max(floor, start * anneal ** (epoch // every)).

    ``every`` is the number of epochs between two annealing steps.
    """

    start: float = 0.5
    anneal: float = 0.9
    every: int = 1
    floor: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 <= self.floor <= self.start <= 1.0:
            raise ValueError(f"need 0 <= floor <= start <= 1, got floor={self.floor}, start={self.start}")
        if not 0.0 < self.anneal <= 1.0:
            raise ValueError(f"anneal must be in (0, 1], got {self.anneal}")
        if self.every < 1:
            raise ValueError(f"every must be >= 1 epoch, got {self.every}")

    def epsilon(self, epoch: int) -> float:
        return max(self.floor, self.start * self.anneal ** (epoch // self.every))

    def to_dict(self) -> dict:
        return asdict(self)


#: The thesis compares a high, a medium and a low exploration regime. These presets are our
#: parameterisation of the three regimes (start / anneal per epoch / floor).
EXPLORATION_PRESETS: dict[str, ExplorationSchedule] = {
    "high": ExplorationSchedule(start=0.9, anneal=0.9, every=1, floor=0.1),
    "med": ExplorationSchedule(start=0.5, anneal=0.9, every=1, floor=0.05),
    "low": ExplorationSchedule(start=0.1, anneal=0.9, every=1, floor=0.01),
    "none": ExplorationSchedule(start=0.0, anneal=1.0, every=1, floor=0.0),
}


def get_schedule(spec: str | ExplorationSchedule | dict) -> ExplorationSchedule:
    """A schedule from a preset name (``high``/``med``/``low``/``none``), a dict or a schedule."""
    if isinstance(spec, ExplorationSchedule):
        return spec
    if isinstance(spec, dict):
        return ExplorationSchedule(**spec)
    if spec not in EXPLORATION_PRESETS:
        raise ValueError(f"unknown exploration preset {spec!r}; choose one of {sorted(EXPLORATION_PRESETS)}")
    return EXPLORATION_PRESETS[spec]
