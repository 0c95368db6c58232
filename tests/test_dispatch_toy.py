"""Issue 29's dispatch toy (``nli_routing/experiments/dispatch_toy.py``): latent groups with conflicting
label rules, readable from the premise's words but never given to a dispatcher.

Measured at the NLI models' defaults (tables at -1, capacity balance 0.5), 600 steps, seeds 0-2
(``benchmarks/dispatch_toy.py``, BENCHMARKS.md issue 29): the WP routed on the hidden group solves it
(accuracy 1.00), the unrouted twin and the keyword twin cannot (0.33-0.34: a shared per-word
projection, a sum and a linear classifier are additive in the words, and every group labels every
content word differently). The two-stage dispatcher recovers the groups under every target. Online,
only RBAE-onehot with the mutual-information term and its agent on the blocks' Adam passes (NMI
>= 0.997, accuracy 1.00 on the 3 seeds); under that setting basic (NMI 0.25 / 0.82 / 0.07), RBAE-CBOW
(0.58 / 0.88 / 0.41) and RBAE-attn (0.44 / 0.81 / 0.48) pass on no seed, RBAE-seq (0.66 / 1.00 / 0.99;
accuracy 0.53 / 1.00 / 1.00) on two of three, and under the thesis' training no online kind passes on any
seed (accuracy 0.33-0.34). The failing kinds are
kept here as strict expected failures (seed 0), so a fix shows up as an unexpected pass. Since every
online dispatcher standardises its agent's input by default, the tests run each kind at the recipes'
resolved defaults (``dispatch_toy.recipe_settings``; ``benchmarks/dispatch_toy.py --settings recipe``).
With the agent's input standardised (``state_norm``) RBAE-seq recovers the groups on 3 seeds (NMI 0.99 /
1.00 / 1.00, accuracy 0.95 / 1.00 / 1.00: seed 0 misses the accuracy bar), but on SCI it still collapses;
rbae-seq's recipe default (the input standardised and the agent training the encoder, which keeps it off
the collapse on SCI) scores NMI 0.50 / 0.60 / 0.31 here (``benchmarks/dispatch_toy.py``, issue 29 continued).
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


ONLINE_FIX = {"balance": 1.0, "agent_optimizer": "blocks"}


def test_the_toy_runs_the_recipes_dispatcher_defaults():
    """What the tests below call "the recipe defaults" is what ``DispatchArgs()`` resolves per kind."""
    assert toy.recipe_settings("rbae-onehot") == {"balance": 1.0, "balance_term": "mi", "target": "reward", "state_norm": True,
                                                  "detach_state": True, "agent_optimizer": "blocks", "pair": False,
                                                  "cbow_pool": "mean", "recon_reward": "raw"}
    assert toy.recipe_settings("basic")["detach_state"] is False
    assert toy.recipe_settings("two-stage")["target"] == "meta" and not toy.recipe_settings("two-stage")["state_norm"]


def test_rbae_onehot_at_the_recipe_defaults_recovers_the_groups():
    """The MI term, the agent on the blocks' Adam and its input standardised (issue 29): NMI >= 0.9 and the
    oracle's accuracy within 2 points on 3 seeds."""
    for seed in range(3):
        res = toy.run("rbae-onehot", seed, **toy.recipe_settings("rbae-onehot"))
        assert res["nmi"] >= 0.9 and res["accuracy"] >= oracle_accuracy(seed) - 0.02, (seed, res)


@pytest.mark.xfail(strict=True, reason="these online dispatchers do not recover the groups (issue 29, measured above)")
@pytest.mark.parametrize("kind", ["basic", "rbae-cbow", "rbae-attn", "rbae-seq"])
def test_the_other_online_dispatchers_at_the_recipe_defaults_recover_the_groups(kind):
    res = toy.run(kind, 0, **toy.recipe_settings(kind))
    assert res["nmi"] >= 0.9 and res["accuracy"] >= oracle_accuracy(0) - 0.02, res


@pytest.mark.xfail(strict=True, reason="under the thesis' training the online dispatchers collapse (issue 29)")
def test_rbae_onehot_under_the_thesis_training_recovers_the_groups():
    res = toy.run("rbae-onehot", 0)
    assert res["nmi"] >= 0.9, res


def test_the_em_target_with_the_mutual_information_term_recovers_the_groups_with_rbae_onehot():
    """Issue 29, generalised EM (``target="em"``): with the MI term RBAE-onehot recovers the groups (seeds
    0-2: NMI 0.99 / 1.00 / 1.00 in benchmarks/results/dispatch_toy_em.json); EM alone does not on any kind
    (accuracy 0.32-0.35), and with the MI term the other kinds score as under the RL reward."""
    res = toy.run("rbae-onehot", 0, target="em", **ONLINE_FIX)
    assert res["nmi"] >= 0.9 and res["accuracy"] >= oracle_accuracy(0) - 0.02, res
