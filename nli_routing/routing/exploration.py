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
    # thesis Figure 7.6: epsilon divided by 4 every 5 epochs, from 0.5 / 0.25 / 0.1 down to 0.01 / 0.005 / 0.002
    "thesis-high": ExplorationSchedule(start=0.5, anneal=0.25, every=5, floor=0.01),
    "thesis-med": ExplorationSchedule(start=0.25, anneal=0.25, every=5, floor=0.005),
    "thesis-low": ExplorationSchedule(start=0.1, anneal=0.25, every=5, floor=0.002),
}

#: a schedule written out on the command line: START/ANNEAL/EVERY/FLOOR, e.g. "0.5/0.25/5/0.01"
SCHEDULE_SPEC = "START/ANNEAL/EVERY/FLOOR"


def get_schedule(spec: str | ExplorationSchedule | dict) -> ExplorationSchedule:
    """A schedule from a preset name (``high``/``med``/``low``/``none``, ``thesis-high``/``-med``/``-low``),
    a ``START/ANNEAL/EVERY/FLOOR`` string (``"0.5/0.25/5/0.01"``), a dict or a schedule."""
    if isinstance(spec, ExplorationSchedule):
        return spec
    if isinstance(spec, dict):
        return ExplorationSchedule(**spec)
    if isinstance(spec, str) and "/" in spec:
        parts = spec.split("/")
        try:
            if len(parts) != 4:
                raise ValueError
            start, anneal, floor = float(parts[0]), float(parts[1]), float(parts[3])
            every = int(parts[2])
        except ValueError:
            raise ValueError(f"exploration schedule {spec!r}: expected {SCHEDULE_SPEC} (numbers; EVERY an integer), "
                             "e.g. 0.5/0.25/5/0.01") from None
        try:
            return ExplorationSchedule(start=start, anneal=anneal, every=every, floor=floor)
        except ValueError as err:
            raise ValueError(f"exploration schedule {spec!r}: {err}") from None
    if spec not in EXPLORATION_PRESETS:
        raise ValueError(f"exploration must be one of {sorted(EXPLORATION_PRESETS)} or {SCHEDULE_SPEC}, got {spec!r}")
    return EXPLORATION_PRESETS[spec]
