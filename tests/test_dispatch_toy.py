"""Issue 29's dispatch toy (``nli_routing/experiments/dispatch_toy.py``): latent groups with conflicting label
rules, readable from the premise's words but never given to a dispatcher.

Measured at the NLI models' defaults (tables at -1, capacity balance 0.5; BENCHMARKS.md, issue 29):
the WP routed on the hidden group solves it (accuracy 1.00 on seeds 0-3), the unrouted twin cannot
(0.33: a shared per-word projection, a sum and a linear classifier are additive in the words, and
every group labels every content word differently). The two-stage dispatcher (the thesis' RL reward
and the best-agent target) recovers the groups. The online dispatchers (basic, RBAE) do not, with the
thesis' training or with any candidate tried (mutual-information weight 0.5 / 1 / 2, the best-agent
target online, a 10x router learning rate, advantage learning): accuracy 0.32-0.36 on every seed but
one (basic with MI 1 + best-agent: 0.58-0.90), NMI with the groups <= 0.56. They are kept here as
strict expected failures, so a fix shows up as an unexpected pass.
"""

import functools

import pytest
import torch

from nli_routing.experiments import dispatch_toy as toy

ORACLE_MIN, UNROUTED_MAX = 0.95, 0.5


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def test_the_group_routed_model_solves_the_toy_and_the_unrouted_twin_cannot():
    assert toy.run("oracle", 0)["accuracy"] >= ORACLE_MIN
    assert toy.run("unrouted", 0)["accuracy"] <= UNROUTED_MAX


@functools.lru_cache(maxsize=None)
def oracle_accuracy(seed: int) -> float:
    return toy.run("oracle", seed)["accuracy"]


@pytest.mark.parametrize("target", ["reward", "best-agent", "meta"])
def test_the_two_stage_dispatcher_recovers_the_groups(target):
    """NMI with the hidden groups >= 0.9 and accuracy within 2 points of the oracle, over 3 seeds."""
    for seed in range(3):
        oracle = oracle_accuracy(seed)
        res = toy.run("two-stage", seed, target=target)
        assert res["nmi"] >= 0.9, (seed, res)
        assert res["accuracy"] >= oracle - 0.02, (seed, oracle, res)


@pytest.mark.xfail(strict=True, reason="online dispatchers do not recover the groups (issue 29, measured in the docstring)")
@pytest.mark.parametrize("kind", ["basic", "rbae-cbow", "rbae-attn", "rbae-onehot", "rbae-seq"])
def test_an_online_dispatcher_recovers_the_groups(kind):
    res = toy.run(kind, 0, balance=1.0)
    assert res["nmi"] >= 0.9 and res["accuracy"] >= ORACLE_MIN - 0.02, res
