"""Decision-making algorithms, one file per family, registered by name."""

from .base import LEARNERS, Learner, build_learner, epsilon_greedy, register_learner, state_action_weights
from .qlearning import QLearner, q_targets

__all__ = [
    "LEARNERS",
    "Learner",
    "QLearner",
    "build_learner",
    "epsilon_greedy",
    "q_targets",
    "register_learner",
    "state_action_weights",
]
