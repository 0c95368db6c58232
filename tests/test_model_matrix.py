"""Every model kind x routed part x router x learner through the same checks (PEFT's style of test
matrix): routing records named, a mixed batch equals each sample alone, save/load round trips
(``save_pretrained`` -> ``AutoModel.from_pretrained``: same logits and routes, in eval and in training
mode), and the router parameters receive updates from the routing objective."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel

from .helpers import ROUTED_NAMES, build_model, select

#: (kind, routed part, router, learner)
CASES = [
    ("cbow", "wp", "tabular", "qlearning"),
    ("cbow", "wp", "tabular", "reinforce"),
    ("cbow", "classifier", "approx", "qlearning"),
    ("cbow", "wp+classifier", "per-step", "aac"),
    ("cbow", "wp", "dispatched", "qlearning"),
    ("lstm", "i2h", "tabular", "qlearning"),
    ("lstm", "h2h", "tabular", "reinforce"),
    ("lstm", "classifier", "approx", "qlearning"),
    ("transformer", "attention", "tabular", "qlearning"),
    ("transformer", "block", "tabular", "reinforce"),
    ("transformer", "lora", "tabular", "qlearning"),
    ("transformer", "lora", "approx", "gumbel"),
    ("transformer", "classifier", "approx", "qlearning"),
    ("vision", "routing", "tabular", "qlearning"),
    ("vision", "routing-recurrent", "tabular", "gumbel"),
    ("vision", "fixed-random-conv3", "tabular", "qlearning"),
]
IDS = ["-".join(c) for c in CASES]


def routes(out) -> list[torch.Tensor]:
    return [t.actions for t in out.trajectories]


@pytest.fixture(params=CASES, ids=IDS)
def case(request):
    kind, part, router, learner = request.param
    model, batch = build_model(kind, part, router, learner)
    return request.param, model, batch


def test_routing_records_are_named(case):
    (kind, part, *_), model, batch = case
    out = model.eval()(**batch)
    assert model.routed_layer_names == ROUTED_NAMES[kind, part]
    assert len(out.trajectories) == len(model.routed_layer_names)


def test_a_mixed_batch_equals_each_sample_alone(case):
    _, model, batch = case
    model.eval()
    with torch.no_grad():
        out = model(**batch)
        n = out.logits.shape[0]
        for i in range(n):
            alone = model(**select(batch, slice(i, i + 1)))
            torch.testing.assert_close(alone.logits[0], out.logits[i], atol=1e-5, rtol=1e-4)
            for a, b in zip(routes(alone), routes(out)):
                assert torch.equal(a[0], b[i])


def test_save_pretrained_and_automodel_round_trip(case, tmp_path):
    _, model, batch = case
    model.set_epoch(1)
    model.train()
    torch.manual_seed(1)
    model(**batch)  # the exploration generators have moved on: the folder must hold their state
    model.save_pretrained(tmp_path)
    # the weights, the config, and the module that lets AutoModel(trust_remote_code=True) load it anywhere
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "model.safetensors", "modeling_nli_routing.py"}
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is type(model) and loaded.settings == model.settings
    for mode in (False, True):  # eval: greedy routes; training: explored routes from the restored generators
        model.train(mode), loaded.train(mode)
        torch.manual_seed(2)
        a = model(**batch)
        torch.manual_seed(2)
        b = loaded(**batch)
        assert torch.equal(a.logits, b.logits)
        assert all(torch.equal(x, y) for x, y in zip(routes(a), routes(b)))
    assert [r.epoch for r in loaded.routers()] == [r.epoch for r in model.routers()] == [1] * len(model.routers())


def test_router_parameters_receive_updates(case):
    (kind, part, router, _), model, batch = case
    if part == "fixed-random-conv3":
        assert model.router_parameters() == []  # a fixed route has nothing to learn
        return
    model.train()
    before = [p.detach().clone() for p in model.router_parameters()]
    assert before, "a learning router has parameters"
    opt = torch.optim.SGD(model.router_parameters(), lr=0.5)
    out = model(**batch)
    # the loop's objective: task loss (relaxed learners' routers learn through it) + routing objective
    (out.per_sample_loss.mean() + model.router_loss(out, batch["labels"])).backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.router_parameters()))
