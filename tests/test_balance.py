"""Issue 29: the tabular routers' capacity balance and the dispatchers' mutual-information term and
best-agent target, against their definitions with hand-computed numbers."""

import math
import warnings

import pytest
import torch
from torch import nn

from nli_routing.models.dispatcher import LearnedDispatcher
from nli_routing.routing import RouterConfig
from nli_routing.routing.config import RoutingCollapseWarning
from nli_routing.routing.routers import TabularRouter


def router(**kw):
    return TabularRouter(num_meta=3, depth=1, num_actions=3, init=-1.0, exploration="none", **kw)


def test_balance_bias_moves_by_the_rate_over_the_share_and_back_at_a_tenth():
    r = router(balance_share=0.5, balance_rate=0.1)
    r.update_balance(torch.tensor([[0], [0], [0], [1]]), torch.tensor([0, 1, 1, 2]))  # shares 0.75 / 0.25 / 0
    torch.testing.assert_close(r.balance_bias, torch.tensor([[-0.1, 0.0, 0.0]]))  # raised ones clamp at 0
    r.update_balance(torch.tensor([[1], [2], [-1], [0]]), torch.tensor([0, 1, 2, 0]))  # -1 (stopped) not counted
    torch.testing.assert_close(r.balance_bias, torch.tensor([[-0.09, 0.0, 0.0]]))


def test_one_agent_alone_on_a_block_is_never_pushed_off():
    """A single agent's samples cannot be split: 100% on one block with one agent is not overload."""
    r = router(balance_share=0.5, balance_rate=0.1)
    r.update_balance(torch.tensor([[2], [2], [2]]), torch.tensor([1, 1, 1]))
    torch.testing.assert_close(r.balance_bias, torch.zeros(1, 3))


def test_balance_changes_the_choice_not_the_values_and_only_when_training():
    r = router(balance_share=0.5, balance_rate=0.3)
    meta = torch.tensor([0, 1, 2, 0])
    first = r.decide_path(meta, 1)
    assert first.actions.flatten().tolist() == [0, 0, 0, 0]  # all tied at -1: lowest index
    second = r.decide_path(meta, 1)  # block 0 took 100% > 50% with 3 agents: its bias is now -0.3
    assert second.actions.flatten().tolist() == [1, 1, 1, 1]
    torch.testing.assert_close(second.values, torch.full((4, 1, 3), -1.0))  # the learner sees the table
    r.eval()
    bias = r.balance_bias.clone()
    r.decide_path(meta, 1)
    assert torch.equal(r.balance_bias, bias)  # evaluation does not move the bias


def test_agents_with_a_clear_preference_keep_it_and_the_least_attached_moves():
    r = router(balance_share=0.5, balance_rate=0.05)
    with torch.no_grad():
        r.table[:, 0, 0] = torch.tensor([0.9, 0.5, 0.2])  # every agent prefers block 0, agent 2 the least
    meta = torch.tensor([0, 1, 2])
    for _ in range(40):
        actions = r.decide_path(meta, 1).actions.flatten().tolist()
    assert actions[0] == 0 and actions[2] != 0  # one agent on block 0 is within the share


def test_balance_off_keeps_the_bias_out_of_the_state_dict():
    assert "balance_bias" not in router().state_dict()
    assert "balance_bias" in router(balance_share=0.5).state_dict()


@pytest.mark.parametrize("kw", [{"balance_share": 0.0}, {"balance_share": 1.5}, {"balance_rate": -1.0}])
def test_bad_balance_settings_are_refused(kw):
    with pytest.raises(ValueError, match="balance_"):
        router(**kw)


def test_a_collapse_prone_config_warns_at_construction_and_the_balanced_one_does_not():
    with pytest.warns(RoutingCollapseWarning, match="router_balance_share"):
        RouterConfig(num_meta=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RouterConfig(num_meta=4, router_balance_share=0.5)
        RouterConfig(num_meta=1)


@pytest.mark.parametrize("method", ["shared-bottom", "task-specific-all-fc", "cross-stitch", "soft-mixture",
                                    "fixed-random-fc", "no-sharing"])
def test_a_vision_method_without_learned_routes_does_not_warn_of_collapse(method):
    from nli_routing.models.vision import VisionMTLConfig

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        VisionMTLConfig(num_meta=4, method=method)
    if method not in ("soft-mixture", "no-sharing"):  # (those two refuse conv routers)
        with pytest.warns(RoutingCollapseWarning):  # the same method with learned conv routers does
            VisionMTLConfig(num_meta=4, method=method, routed_convs="1")
    with pytest.warns(RoutingCollapseWarning):
        VisionMTLConfig(num_meta=4, method="routing")


def test_the_collapse_warning_names_the_callers_line_once_per_model():
    """Issue 33's newcomer walk: the warning named ``<string>:33`` and came again when the model was built."""
    import inspect

    from nli_routing.models.vision import (
        VisionMTLConfig,
        VisionMTLModel,
        VisionMTLModelConfig,
    )

    small = {"num_meta": 4, "method": "routing", "in_channels": 8, "image_size": 1, "conv_layers": 0,
             "fc_hidden": 8, "fc_layers": 2}
    for build in (VisionMTLConfig, VisionMTLModelConfig):  # the settings dataclass and the Hugging Face config
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            line = inspect.currentframe().f_lineno + 1
            config = build(**small)
            model = VisionMTLModel(config)
            model.config.settings  # noqa: B018 -- re-validation does not warn again
        hits = [w for w in seen if issubclass(w.category, RoutingCollapseWarning)]
        assert [(w.filename, w.lineno) for w in hits] == [(__file__, line)], build


def dispatcher(**kw):
    emb = nn.Embedding(10, 4)
    return LearnedDispatcher("two-stage", emb, 2, encoder="cbow", hidden=4, projection=4, **kw)


def out_with_logits(d, logits):
    ids = torch.ones(logits.shape[0], 2, dtype=torch.long)
    out = d(ids, torch.ones_like(ids, dtype=torch.bool))
    out.trajectory.values = logits.unsqueeze(1)
    return out


def test_mutual_information_known_answers():
    d = dispatcher(balance=1.0)
    confident_split = torch.tensor([[50.0, 0.0], [0.0, 50.0]])
    assert float(d.mutual_information(out_with_logits(d, confident_split))) == pytest.approx(math.log(2), abs=1e-6)
    same = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert float(d.mutual_information(out_with_logits(d, same))) == pytest.approx(0.0, abs=1e-6)
    uncertain = torch.zeros(2, 2)  # spread on average but not per sample: no information
    assert float(d.mutual_information(out_with_logits(d, uncertain))) == pytest.approx(0.0, abs=1e-6)


def test_the_balance_term_enters_the_loss_with_its_weight():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    reward = torch.tensor([1.0, -1.0, 1.0])
    torch.manual_seed(0)
    plain = dispatcher()
    torch.manual_seed(0)
    weighted = dispatcher(balance=0.7)
    a, b = out_with_logits(plain, logits), out_with_logits(weighted, logits)
    expected = plain.loss(a, reward) - 0.7 * plain.mutual_information(a)
    torch.testing.assert_close(weighted.loss(b, reward), expected)


def test_best_agent_target_is_the_cross_entropy_to_the_lowest_loss_agent():
    d = dispatcher(target="best-agent")
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    out = out_with_logits(d, logits)
    with pytest.raises(ValueError, match="DispatchOutput.target"):
        d.loss(out, torch.ones(2))
    d.fill_target(out, None, lambda: torch.tensor([[0.3, 0.1], [0.2, 0.9]]))  # best agents: 1, 0
    assert out.target.tolist() == [1, 0]
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([1, 0]))
    torch.testing.assert_close(d.loss(out, torch.ones(2)), expected)


def test_meta_target_imitates_the_batch_meta_and_only_for_two_stage():
    d = dispatcher(target="meta")
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    out = out_with_logits(d, logits)
    d.fill_target(out, torch.tensor([0, 0]), lambda: pytest.fail("no agent forwards for target='meta'"))
    torch.testing.assert_close(d.loss(out, torch.ones(2)),
                               torch.nn.functional.cross_entropy(logits, torch.tensor([0, 0])))
    with pytest.raises(ValueError, match="two-stage"):
        LearnedDispatcher("basic", nn.Embedding(10, 4), 2, target="meta")


def test_the_nli_model_fills_every_agents_loss_for_a_best_agent_dispatcher():
    from nli_routing.experiments import dispatch_toy as toy

    model = toy.build("oracle", 0)
    model.attach_dispatcher(toy.make_dispatcher(model, "two-stage", 0, target="best-agent"))
    batch = toy.make_batch(8, seed=1)
    out = model(**{k: v for k, v in batch.items() if k != "meta"})
    assert out.dispatch.agent_losses.shape == (8, toy.GROUPS)
    for k in range(toy.GROUPS):  # each column is the model's loss with every sample on agent k, greedy
        model.eval()
        logits = model.logits(tuple(batch[n] for n in ("premise_ids", "premise_mask", "hypothesis_ids",
                                                       "hypothesis_mask")), torch.full((8,), k))[0]
        model.train()
        expected = torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="none")
        torch.testing.assert_close(out.dispatch.agent_losses[:, k], expected)
    assert model.training and model.encoder.training  # the modes are restored


def test_a_folder_saved_before_the_balance_loads_without_it_and_predicts_the_same(tmp_path):
    """config.json files written before issue 29 have no router_balance_share: they were trained without
    the balance, so they load without it (no balance_bias in their weights) and give the same logits."""
    import json

    from nli_routing.models.nli import NLIModelConfig, NLIRoutingModel

    torch.manual_seed(0)
    old = NLIRoutingModel(NLIModelConfig(num_meta=3, router_balance_share=1.0, router_init=0.0), torch.randn(20, 8),
                          pad_id=0)
    old.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key in ("router_balance_share", "router_balance_rate"):
        config.pop(key, None)
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = NLIRoutingModel.from_pretrained(tmp_path)
    assert loaded.config.router_balance_share == 1.0 and not loaded.encoder.projection.router.balancing
    ids = torch.randint(1, 20, (4, 5))
    batch = dict(premise_ids=ids, premise_mask=ids > 0, hypothesis_ids=ids.flip(1), hypothesis_mask=ids > 0,
                 meta=torch.tensor([0, 1, 2, 0]))
    old.eval()
    loaded.eval()
    assert torch.equal(old(**batch).logits, loaded(**batch).logits)
    assert NLIModelConfig().router_balance_share == 0.5  # a new model gets the balance


def test_step_by_step_decisions_are_balanced_per_depth():
    """Routed layers that decide one step at a time (a Transformer's layers) go through ``decide``: the
    bias of that step's depth alone moves, and it changes the choice like ``decide_path``'s."""
    r = TabularRouter(num_meta=3, depth=2, num_actions=3, init=-1.0, exploration="none", balance_share=0.5,
                      balance_rate=0.3)
    meta = torch.tensor([0, 1, 2, 0])
    state = torch.zeros(4, 1)
    assert r.decide(state, meta, 1).actions.tolist() == [0, 0, 0, 0]
    torch.testing.assert_close(r.balance_bias, torch.tensor([[0.0, 0.0, 0.0], [-0.3, 0.0, 0.0]]))
    second = r.decide(state, meta, 1)
    assert second.actions.tolist() == [1, 1, 1, 1]
    torch.testing.assert_close(second.values, torch.full((4, 3), -1.0))  # the learner sees the table
