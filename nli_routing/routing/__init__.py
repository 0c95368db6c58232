"""Domain-agnostic routing engine: routed layers, routers, learners, rewards, trajectories."""

from .exploration import EXPLORATION_PRESETS, ExplorationSchedule, get_schedule
from .layer import RoutedLayer, grouped_apply, mean_state
from .learners import LEARNERS, Learner, QLearner, build_learner, register_learner
from .rewards import REWARD_KINDS, CollaborationReward, assign_rewards, final_reward
from .routers import Router, TabularRouter
from .trajectory import Decision, Trajectory

__all__ = [
    "EXPLORATION_PRESETS",
    "LEARNERS",
    "REWARD_KINDS",
    "CollaborationReward",
    "Decision",
    "ExplorationSchedule",
    "Learner",
    "QLearner",
    "RoutedLayer",
    "Router",
    "TabularRouter",
    "Trajectory",
    "assign_rewards",
    "build_learner",
    "final_reward",
    "get_schedule",
    "grouped_apply",
    "mean_state",
    "register_learner",
]
