"""Issue 29: the dispatch target "mixture" (soft EM of a mixture of experts) and the marginal-entropy
balance: against their equations, on the dispatch toy (known answer), and their bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nli_routing.experiments import dispatch_toy as toy
from nli_routing.experiments.nli import DispatchArgs
from nli_routing.models.dispatcher import LearnedDispatcher
from nli_routing.models.nli import NLIModelConfig, NLIRoutingModel
from nli_routing.routing import Trajectory

from .test_balance import out_with_logits
from .test_dispatch_learned import embedding, make, two_group_batch


def mixture_model(seed=0, k=3):
    """A WP model whose routes are fixed (no exploration: the same path on every forward) with a basic
    dispatcher of target "mixture" and no balance term."""
    torch.manual_seed(seed)
    cfg = NLIModelConfig(num_meta=k, route="wp", wp_width=k, classifier_layers=0, pair_features="concat",
                         router="fixed-random", router_seed=seed)
    model = NLIRoutingModel(cfg, embedding().weight, 0)
    model.encoder.projection.router.routes.copy_(torch.arange(k).unsqueeze(1))
    model.attach_dispatcher(LearnedDispatcher("basic", model.encoder.embedding, k, hidden=16, target="mixture",
                                              agent_optimizer="blocks", seed=seed))
    return model


def batch(b=16, seed=0):
    ids, mask, _ = two_group_batch(b, seed)
    g = torch.Generator().manual_seed(seed + 1)
    return {"premise_ids": ids, "premise_mask": mask, "hypothesis_ids": ids.flip(1), "hypothesis_mask": mask.flip(1),
            "labels": torch.randint(0, 3, (b,), generator=g)}


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_the_mixture_target_follows_the_gradient_of_the_mixture_likelihood():
    """sum_k q(k) loss_k for the paths plus the cross-entropy of the dispatcher's softmax to q has the
    gradient of -log sum_k pi(k | x) exp(-loss_k) (the EM identity), for every parameter."""
    model = mixture_model()
    model.train()
    b = batch()
    out = model(**b)
    total = out.per_sample_loss.mean() + model.dispatcher.loss(out.dispatch, torch.zeros(16))
    total.backward()
    ours = grads(model)
    model.zero_grad(set_to_none=True)

    inputs = (b["premise_ids"], b["premise_mask"], b["hypothesis_ids"], b["hypothesis_mask"])
    values = model.dispatcher(*inputs).trajectory.values[:, 0]
    losses = torch.stack([F.cross_entropy(model.logits(inputs, torch.full((16,), k))[0], b["labels"], reduction="none")
                          for k in range(3)], 1)
    nll = -torch.logsumexp(F.log_softmax(values, -1) - losses, 1).mean()
    nll.backward()
    theirs = grads(model)
    assert ours.keys() == theirs.keys() and any(n.startswith("dispatcher.") for n in ours)
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-5, rtol=1e-4, msg=name)
    # the batch's dispatch is one class per sample drawn from q, and the outputs are that class's path
    q = out.dispatch.target
    torch.testing.assert_close(q.sum(1), torch.ones(16))
    torch.testing.assert_close(q, torch.softmax(F.log_softmax(values.detach(), -1) - losses.detach(), -1))
    assert torch.equal(out.meta, out.dispatch.meta)
    drawn_logits = torch.stack([model.logits(inputs, torch.full((16,), k))[0] for k in range(3)], 1)
    torch.testing.assert_close(out.logits, drawn_logits[torch.arange(16), out.meta])
    assert out.trajectories[0].actions[:, 0].tolist() == out.meta.tolist()  # route k for class k


def test_with_the_mixture_target_the_routers_neg_loss_reward_is_the_drawn_paths_loss():
    model = mixture_model()
    model.config.reward = "neg_loss"
    b = batch()
    out = model(**b)
    drawn_loss = out.dispatch.agent_losses[torch.arange(16), out.meta]
    torch.testing.assert_close(out.reward_loss, drawn_loss)
    torch.testing.assert_close(out.reward_loss, F.cross_entropy(out.logits, b["labels"], reduction="none").detach())
    model.router_loss(out, b["labels"])
    torch.testing.assert_close(out.trajectories[0].final_reward, -drawn_loss)


def test_the_mixture_target_draws_classes_in_proportion_to_the_posterior():
    model = mixture_model()
    b = batch(b=4000, seed=3)
    b["premise_ids"][:] = b["premise_ids"][:1]  # one premise: the same prior for every sample
    b["premise_mask"][:] = b["premise_mask"][:1]
    b["labels"][:] = 1
    out = model(**b)
    q = out.dispatch.target[0]
    freq = torch.bincount(out.meta, minlength=3).float() / 4000
    assert torch.allclose(out.dispatch.target, q.expand(4000, 3), atol=1e-6)
    torch.testing.assert_close(freq, q, atol=0.03, rtol=0.0)


def test_evaluation_with_the_mixture_target_is_one_greedy_forward():
    model = mixture_model()
    model.eval()
    b = batch()
    out = model(**b)
    assert out.logits.shape == (16, 3) and out.dispatch.target is None
    assert out.meta.tolist() == model.dispatcher(*list(b.values())[:4]).trajectory.values[:, 0].argmax(1).tolist()


def test_trajectory_rows_selects_samples_and_keeps_the_graph():
    v = torch.randn(4, 2, 3, requires_grad=True)
    t = Trajectory(meta=torch.arange(4), actions=torch.tensor([[0, 1], [1, 2], [2, 0], [1, 1]]),
                   explored=torch.zeros(4, 2, dtype=torch.bool), active=torch.ones(4, 2, dtype=torch.bool),
                   values=v, state_index=torch.arange(8).view(4, 2), extra={"logp": torch.randn(4, 2)},
                   num_actions=3, num_states=8)
    r = t.rows(torch.tensor([3, 0, 3]))
    assert r.meta.tolist() == [3, 0, 3] and r.actions.tolist() == [[1, 1], [0, 1], [1, 1]]
    assert torch.equal(r.extra["logp"], t.extra["logp"][[3, 0, 3]]) and r.state_index.tolist() == [[6, 7], [0, 1], [6, 7]]
    r.values.sum().backward()
    assert v.grad[:, 0, 0].tolist() == [1.0, 0.0, 0.0, 2.0]
    t.final_reward = torch.zeros(4)
    with pytest.raises(ValueError, match="before rewards"):
        t.rows(torch.tensor([0]))


def test_the_marginal_balance_is_the_entropy_of_the_mean_dispatch():
    d = make("basic", k=2)
    uncertain = torch.zeros(6, 2)  # every sample 50/50: the marginal is uniform, the MI is 0
    confident_one_class = torch.tensor([[9.0, -9.0]]).expand(6, 2)
    for logits, marginal, mi in ((uncertain, math.log(2), 0.0), (confident_one_class, 0.0, 0.0)):
        out = out_with_logits(d, logits)
        assert float(d.marginal_entropy(out)) == pytest.approx(marginal, abs=1e-6)
        assert float(d.mutual_information(out)) == pytest.approx(mi, abs=1e-6)
    d.balance, d.balance_term = 0.5, "marginal"
    out = out_with_logits(d, uncertain)
    assert float(d.balance_value(out)) == pytest.approx(math.log(2), abs=1e-6)
    d.balance_term = "mi"
    assert float(d.balance_value(out)) == pytest.approx(0.0, abs=1e-6)


def test_the_balance_term_survives_save_and_load():
    d = LearnedDispatcher("basic", embedding(), 3, hidden=8, balance=0.1, balance_term="marginal", target="mixture")
    cfg = d.to_config()
    assert cfg["balance_term"] == "marginal" and cfg["target"] == "mixture"
    assert LearnedDispatcher.from_config(embedding(), cfg).balance_term == "marginal"
    assert "balance_term" not in LearnedDispatcher("basic", embedding(), 3, hidden=8).to_config()  # folders before it: mi


def test_on_the_split_toy_the_mixture_target_recovers_the_groups():
    """Known answer (issue 29): the premise carries the group and nothing else. basic at the recipe
    defaults with --dispatch_target mixture recovers the groups (NMI >= 0.9, the oracle's accuracy within
    2 points) on seed 1, where the RL reward leaves it at a partition of NMI 0.49 (BENCHMARKS.md; the
    reward run is left out here for time)."""
    mixture = toy.run("basic", 1, layout="split", **toy.recipe_settings("basic", dispatch_target="mixture"))
    assert mixture["nmi"] >= 0.9 and mixture["accuracy"] >= 0.98, mixture


def test_the_split_layout_puts_the_content_word_in_the_hypothesis():
    p, s = toy.make_batch(200, 0), toy.make_batch(200, 0, layout="split")
    content = lambda ids: ((ids >= toy.CONTENT_START) & (ids < toy.FILLER_START)).sum(1)
    assert content(p["premise_ids"]).tolist() == [1] * 200 and content(p["hypothesis_ids"]).tolist() == [0] * 200
    assert content(s["premise_ids"]).tolist() == [0] * 200 and content(s["hypothesis_ids"]).tolist() == [1] * 200
    assert torch.equal(p["labels"], s["labels"]) and torch.equal(p["meta"], s["meta"])
    with pytest.raises(ValueError, match="layout must be one of"):
        toy.make_batch(4, 0, layout="hypothesis")


@pytest.mark.parametrize("bad", ["MI", "entropy"])
def test_bad_balance_terms_are_one_line_errors(bad):
    with pytest.raises(ValueError, match=f"dispatch_balance_term must be one of .*got '{bad}'"):
        DispatchArgs(dispatch_balance_term=bad)
    with pytest.raises(ValueError, match=f"balance_term must be one of .*got '{bad}'"):
        LearnedDispatcher("basic", embedding(), 2, balance_term=bad)


@pytest.mark.parametrize("method", ["wp-signature+D", "wp-signature"])
def test_the_mixture_target_needs_an_online_dispatcher(method):
    with pytest.raises(ValueError, match="dispatch_target mixture.*online dispatcher"):
        DispatchArgs(dispatch_target="mixture").check_method(method)
    with pytest.raises(ValueError, match="target 'mixture'.*online dispatcher"):
        LearnedDispatcher("two-stage", embedding(), 2, target="mixture")


@pytest.mark.parametrize(("flags", "pattern"), [
    (["--dispatch_balance_term", "MI"], r"dispatch_balance_term must be one of \('mi', 'marginal', 'auto'\), got 'MI'"),
    (["--dispatch_balance_term", ""], r"dispatch_balance_term must be one of \('mi', 'marginal', 'auto'\), got ''"),
    (["--dispatch_target", "mixture", "--method", "wp-signature"],
     r"wp-signature: --dispatch_target mixture trains the model on the dispatched paths: it needs an online dispatcher"),
    (["--dispatch_target", "Mixture"], r"dispatch_target must be one of .*got 'Mixture'"),
])
def test_the_recipe_refuses_bad_mixture_settings_in_one_line(flags, pattern, tmp_path, monkeypatch, capsys):
    from .test_issue32_flags import (
        test_recipe_flag_refuses_a_bad_value_in_one_line as one_line,
    )

    one_line("sci_wp_dispatch.py", flags, pattern, tmp_path, monkeypatch, capsys)


@pytest.mark.parametrize("argv", [["--layout", "Split"], ["--settings", "recipe-mixtures"]])
def test_the_toy_benchmark_refuses_bad_layouts_and_settings(argv, capsys):
    import importlib

    bench = importlib.import_module("benchmarks.dispatch_toy")
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "invalid choice" in err and argv[1] in err and "Traceback" not in err
