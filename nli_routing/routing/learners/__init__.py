"""Decision-making algorithms, one file per family, registered by name (importing registers them)."""

from .advantage import AdvantageLearner
from .base import LEARNERS, Learner, build_learner, epsilon_greedy, register_learner, state_action_weights
from .critics import ActionValueCritic, StateValueCritic, discounted_returns
from .policy_gradient import ActorCriticLearner, EpsilonGreedyReinforceLearner, ReinforceLearner
from .qlearning import QLearner, q_targets
from .relaxed import RELAXED_WEIGHTS, GumbelLearner, RelaxLearner
from .wpl import WPLApproxLearner, WPLearner, clip_projection, wpl_target

__all__ = [
    "LEARNERS",
    "RELAXED_WEIGHTS",
    "ActionValueCritic",
    "ActorCriticLearner",
    "AdvantageLearner",
    "EpsilonGreedyReinforceLearner",
    "GumbelLearner",
    "Learner",
    "QLearner",
    "RelaxLearner",
    "ReinforceLearner",
    "StateValueCritic",
    "WPLApproxLearner",
    "WPLearner",
    "build_learner",
    "clip_projection",
    "discounted_returns",
    "epsilon_greedy",
    "q_targets",
    "register_learner",
    "state_action_weights",
    "wpl_target",
]
