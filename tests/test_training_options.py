"""Options the thesis studies: router architectures in the NLI model, kappa squashing, data split."""

import pytest
import torch

from nli_routing.routing import ROUTER_TYPES, parse_learner_args
from nli_routing.models.nli import NLIModelConfig, NLIRoutingModel
from nli_routing.routing import Trajectory
from nli_routing.training.loop import TrainConfig, exploration_squash, is_router_batch, task_loss, train

from .helpers import batch, tiny_loader, weight


@pytest.mark.parametrize("router", ROUTER_TYPES)
def test_every_router_architecture_trains_the_nli_model(router):
    torch.manual_seed(0)
    cfg = NLIModelConfig(num_meta=3, route="wp+classifier", wp_width=3, wp_depth=2, classifier_hidden=16,
                         classifier_width=2, router=router, exploration="high")
    model = NLIRoutingModel(cfg, weight(), pad_id=0)
    router_params = model.router_parameters()
    before = [p.detach().clone() for p in router_params]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for seed in range(3):
        b = batch(b=16, seed=seed)
        out = model(**b)
        assert out.logits.shape == (16, 3) and len(out.trajectories) == 2
        loss = out.per_sample_loss.mean() + model.router_loss(out, b["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    changed = any(not torch.equal(a, p.detach()) for a, p in zip(before, router_params))
    if router == "fixed-random":
        assert router_params == [] or not changed
        fixed = [layer.router.routes.clone() for layer in model.routed_layers]
        out = model(**batch(b=16, seed=0))
        for layer, routes, traj in zip(model.routed_layers, fixed, out.trajectories):
            assert torch.equal(layer.router.routes, routes)
            assert torch.equal(traj.actions, routes[batch(b=16, seed=0)["meta"]])
    else:
        assert changed, f"{router}: routing parameters did not change"


def test_router_gradient_into_activations_is_off_by_default():
    for flag in (False, True):
        cfg = NLIModelConfig(num_meta=2, route="wp", wp_width=2, wp_depth=2, classifier_hidden=8, router="approx",
                             router_grad_to_activations=flag)
        model = NLIRoutingModel(cfg, weight(), pad_id=0)
        b = batch(num_meta=2)
        out = model(**b)
        model.zero_grad()
        model.router_loss(out, b["labels"]).backward()
        bank = model.encoder.projection.blocks  # the recursive projection's LinearBank
        # the gates of the ReZero blocks are 0 at init: the gates' gradient is the probe
        got = any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in (bank.weight, bank.gate))
        assert got == flag


def test_kappa_squashes_by_the_exploratory_fraction_eq_7_4():
    """alpha_exp = (1 - #exploratory / trajectory length) ** kappa on each sample's task loss."""
    loss = torch.tensor([1.0, 2.0, 3.0, 4.0])
    explored = torch.tensor([[False, True], [False, False], [True, True], [True, False]])
    active = torch.tensor([[True, True], [True, True], [True, True], [True, False]])  # sample 3 stopped
    traj = Trajectory(meta=torch.zeros(4, dtype=torch.long), actions=torch.zeros(4, 2, dtype=torch.long),
                      explored=explored & active, active=active, values=torch.zeros(4, 2, 2))
    # fractions: 1/2, 0, 2/2, 1/1 -> alpha = 0.5 ** k, 1, 0, 0 (for k > 0)
    for kappa in (0.5, 1.0, 3.0):
        alpha = torch.tensor([0.5 ** kappa, 1.0, 0.0, 0.0])
        torch.testing.assert_close(task_loss(loss, [traj], kappa), (alpha * loss).mean())
    torch.testing.assert_close(task_loss(loss, [traj], 0.0), loss.mean())  # kappa = 0 changes nothing
    # two routed layers: counts add up over the sample's whole trajectory (here 1 of 4 steps explored)
    clean = Trajectory(meta=traj.meta, actions=traj.actions, explored=torch.zeros_like(explored),
                       active=torch.ones_like(active), values=traj.values)
    torch.testing.assert_close(exploration_squash([traj, clean], 2.0)[:2], torch.tensor([0.75 ** 2, 1.0]))
    assert TrainConfig().explore_kappa == 0.0  # off by default
    with pytest.raises(ValueError, match="explore_kappa"):
        TrainConfig(explore_kappa=-0.5)


def test_router_data_split_is_exact_and_deterministic():
    picks = [is_router_batch(i, 0.25) for i in range(100)]
    assert sum(picks) == 25 and picks == [is_router_batch(i, 0.25) for i in range(100)]
    assert not any(is_router_batch(i, 0.0) for i in range(10))


def test_training_loop_with_split_data_and_kappa_runs():
    cfg = NLIModelConfig(num_meta=3, route="wp", wp_width=2, wp_depth=1, classifier_hidden=8)
    model = NLIRoutingModel(cfg, weight(), pad_id=0)
    table_before = model.routers()[0].table.detach().clone()
    tc = TrainConfig(epochs=1, cpu=True, progress=False, router_data_fraction=0.5, explore_kappa=2.0,
                     max_grad_norm=1.0, select_best=False)
    res = train(model, tiny_loader(), {"validation": tiny_loader(16, 1)}, tc)
    assert res["history"][0]["validation"]["n"] == 16
    assert not torch.equal(table_before, model.routers()[0].table.detach())


def test_learner_args_parsing():
    assert parse_learner_args("entropy_coef=0.01, target=td,num_states=4,flag=true") == {
        "entropy_coef": 0.01, "target": "td", "num_states": 4, "flag": True}
    with pytest.raises(ValueError, match="key=value"):
        NLIModelConfig(learner_args="entropy_coef")
    cfg = NLIModelConfig(num_meta=2, route="wp", wp_depth=2, learner="aac", learner_args="entropy_coef=0.05")
    model = NLIRoutingModel(cfg, weight(), pad_id=0)
    assert model.routers()[0].learner.entropy_coef == 0.05


@pytest.mark.parametrize("kwargs, message", [
    ({"learner_args": "ties=first"}, "ties must be one of"),
    ({"learner_args": "batch_mean=x"}, "batch_mean must be one of"),
    ({"learner_args": "colour=red"}, "learner 'qlearning'.*colour.*--learner_args"),
    ({"learner": "aac", "learner_args": "value_head=maybe"}, "value_head must be true or false"),
    ({"learner": "wpl", "router": "per-step"}, "learner 'wpl' does not work with router 'per-step'"),
    ({"learner": "wpl-approx", "learner_args": "weighting=inverse"}, "WPL weighting must be one of"),
])
def test_router_options_are_checked_when_the_config_is_made(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NLIModelConfig(**kwargs)
    with pytest.raises(ValueError, match="collapse_warmup"):
        TrainConfig(collapse_warmup=-1)


@pytest.mark.parametrize("name", ["sgd", "adam", "adagrad", "rmsprop"])
def test_fused_optimizers_give_the_default_update_up_to_rounding(name):
    """Issue 33: ``fused_optimizers`` (the default) runs torch's fused kernel where one exists (sgd, adam,
    adagrad on the CPU) and gives the update of the default implementation; rmsprop has none and is built
    as before; ``fused_optimizers=False`` never fuses."""
    import torch

    from nli_routing.training.loop import make_optimizer

    params = {}
    start = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    for fused in (False, True):
        p = torch.nn.Parameter(start.clone())
        opt = make_optimizer(name, [p], 0.1, momentum=0.5 if name in ("sgd", "rmsprop") else 0.0,
                             weight_decay=0.01, fused=fused)
        assert bool(opt.defaults.get("fused")) == (fused and name != "rmsprop")
        for _ in range(3):
            p.grad = torch.sin(p.detach() * 3)  # a gradient that depends on the parameter
            opt.step()
        params[fused] = p.detach()
    torch.testing.assert_close(params[True], params[False], rtol=1e-5, atol=1e-6)
    assert (params[False] - start).abs().max() > 1e-3  # it moved


def test_make_optimizers_fuse_by_default_and_not_when_asked():
    from nli_routing.experiments.bench import mlp_model, train_cfg
    from nli_routing.training.loop import make_optimizers

    model = mlp_model("routing", 4, 2, dim=8)
    for flag in (True, False):
        block_opt, router_opt = make_optimizers(model, train_cfg(fused_optimizers=flag))
        assert bool(block_opt.defaults.get("fused")) is flag and bool(router_opt.defaults.get("fused")) is flag


def test_step_annealing_divides_every_rate_at_the_stated_epochs(monkeypatch):
    """lr_step_epochs=2, factor 10 (the thesis' image runs: 10 every 20 epochs): the rates the optimizers
    step with in epochs 0-1, 2-3 and 4 are lr, lr/10 and lr/100, the routers' at ratio x these."""
    seen = []
    orig = torch.optim.SGD.step

    def spy(self, *a, **k):
        seen.append(tuple(round(g["lr"], 12) for g in self.param_groups))
        return orig(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    torch.manual_seed(0)
    model = NLIRoutingModel(NLIModelConfig(route="wp", num_meta=3), weight(), pad_id=0)
    tc = TrainConfig(epochs=5, lr=0.1, router_lr_ratio=0.5, lr_step_epochs=2, lr_step_factor=10.0, progress=False,
                     cpu=True, select_best=False)
    loader = tiny_loader(16, 2)
    train(model, loader, {"validation": tiny_loader(16, 1)}, tc)
    per_epoch = len(seen) // 5
    rates = [sorted({r for step in seen[e * per_epoch:(e + 1) * per_epoch] for r in step}) for e in range(5)]
    assert rates == [[0.05, 0.1], [0.05, 0.1], [0.005, 0.01], [0.005, 0.01], [0.0005, 0.001]]


@pytest.mark.parametrize("kwargs,message", [
    ({"lr_step_epochs": -1}, "lr_step_epochs must be an integer >= 0"),
    ({"lr_step_epochs": 2.5}, "lr_step_epochs must be an integer >= 0"),
    ({"lr_step_factor": 1.0}, "lr_step_factor must be a number > 1"),
    ({"lr_step_factor": float("nan")}, "lr_step_factor must be a number > 1"),
])
def test_bad_step_annealing_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)
