"""Domain-agnostic routing engine: routed layers, routers, learners, rewards, trajectories."""

from .approx import ApproxRouter
from .bank import LinearBank
from .config import RouterConfig, parse_learner_args
from .baselines import FixedRandomRouter, NoUpdateLearner, SoftGate, SoftMixtureLayer
from .exploration import EXPLORATION_PRESETS, ExplorationSchedule, get_schedule
from .decision import RoutingPass, mean_state
from .execution import EXECUTIONS, Execution, GroupPlan, execution_for, grouped_apply
from .layer import RoutedLayer
from .learners import (
    LEARNERS,
    RELAXED_WEIGHTS,
    GumbelLearner,
    Learner,
    QLearner,
    RelaxLearner,
    build_learner,
    register_learner,
)
from .rewards import REWARD_KINDS, CollaborationReward, assign_rewards, final_reward
from .objective import concat_trajectories, routing_objective
from .registry import ROUTER_TYPES, ROUTERS, RouterSpec, build_router, check_router_learner, register_router
from .routers import DispatchedRouter, PerStepRouter, Router, TabularRouter, select_samples
from .trajectory import Decision, Trajectory

__all__ = [
    "ROUTERS",
    "ROUTER_TYPES",
    "RouterConfig",
    "RouterSpec",
    "build_router",
    "check_router_learner",
    "parse_learner_args",
    "register_router",
    "EXECUTIONS",
    "EXPLORATION_PRESETS",
    "Execution",
    "GroupPlan",
    "RoutingPass",
    "execution_for",
    "LEARNERS",
    "RELAXED_WEIGHTS",
    "REWARD_KINDS",
    "ApproxRouter",
    "CollaborationReward",
    "Decision",
    "DispatchedRouter",
    "ExplorationSchedule",
    "FixedRandomRouter",
    "GumbelLearner",
    "Learner",
    "LinearBank",
    "NoUpdateLearner",
    "PerStepRouter",
    "QLearner",
    "RelaxLearner",
    "RoutedLayer",
    "Router",
    "SoftGate",
    "SoftMixtureLayer",
    "TabularRouter",
    "Trajectory",
    "assign_rewards",
    "build_learner",
    "final_reward",
    "routing_objective",
    "concat_trajectories",
    "get_schedule",
    "grouped_apply",
    "mean_state",
    "register_learner",
    "select_samples",
]
