"""Routed LSTM encoder: shapes and masks, grouped execution against a per-sample reference,
equality with torch.nn.LSTM when unrouted, and one training step of the NLI model."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from nli_routing.models.lstm import LSTMModelConfig, LSTMNLIModel, RoutedLSTMEncoder
from nli_routing.training.loop import TrainConfig, train

VOCAB, DIM, HID = 40, 8, 6


def weight() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(VOCAB, DIM, generator=g)
    w[0] = 0
    return w


def batch(b: int = 7, tp: int = 5, th: int = 3, num_meta: int = 3, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    plen = torch.randint(1, tp + 1, (b,), generator=g)
    hlen = torch.randint(1, th + 1, (b,), generator=g)
    plen[1] = 0  # an empty premise
    hlen[2] = 0  # an empty hypothesis
    pm = torch.arange(tp) < plen.unsqueeze(1)
    hm = torch.arange(th) < hlen.unsqueeze(1)
    return {
        "premise_ids": torch.randint(1, VOCAB, (b, tp), generator=g) * pm,
        "premise_mask": pm,
        "hypothesis_ids": torch.randint(1, VOCAB, (b, th), generator=g) * hm,
        "hypothesis_mask": hm,
        "meta": torch.randint(0, num_meta, (b,), generator=g),
        "labels": torch.randint(0, 3, (b,), generator=g),
    }


def encoder(routed: str, depth: int = 1, width: int = 3, pool: str = "last", **router) -> RoutedLSTMEncoder:
    torch.manual_seed(0)
    kwargs = {"exploration": "high", "seed": 0, **router}
    enc = RoutedLSTMEncoder(weight(), 0, HID, routed, width, depth, num_meta=3, pool=pool, router_kwargs=kwargs)
    if enc.router is not None:
        with torch.no_grad():
            enc.router.table.normal_()  # no ties: greedy paths depend on the meta label only
    return enc


def enc_args(b: dict) -> tuple:
    return b["premise_ids"], b["premise_mask"], b["hypothesis_ids"], b["hypothesis_mask"], b["meta"]


@pytest.mark.parametrize("routed,n_traj", [("none", 0), ("i2h", 1), ("h2h", 1)])
@pytest.mark.parametrize("pool", ["last", "mean", "max"])
def test_shapes_masks_and_empty_sentences(routed, n_traj, pool):
    enc = encoder(routed, depth=2, pool=pool)
    b = batch()
    p, h, trajs = enc(*enc_args(b))
    assert p.shape == h.shape == (7, HID)
    assert len(trajs) == n_traj
    if n_traj:
        assert trajs[0].actions.shape == (7, 2)
    assert torch.equal(p[1], torch.zeros(HID)) and torch.equal(h[2], torch.zeros(HID))
    assert p[0].abs().sum() > 0
    # padding content is ignored: changing padded ids changes nothing
    b2 = dict(b, premise_ids=torch.where(b["premise_mask"], b["premise_ids"], 7))
    enc.eval()
    torch.testing.assert_close(enc(*enc_args(b))[0], enc(*enc_args(b2))[0])


def test_unrouted_equals_torch_lstm():
    enc = encoder("none", pool="last")
    lstm = nn.LSTM(DIM, HID, batch_first=True)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(enc.i2h.weight)
        lstm.bias_ih_l0.copy_(enc.i2h.bias)
        lstm.weight_hh_l0.copy_(enc.h2h.weight)
        lstm.bias_hh_l0.copy_(enc.h2h.bias)
    b = batch()
    keep = b["premise_mask"].any(1)  # packing needs non-empty sequences
    ids, mask = b["premise_ids"][keep], b["premise_mask"][keep]
    x = enc.embedding(ids)
    packed = nn.utils.rnn.pack_padded_sequence(x, mask.sum(1), batch_first=True, enforce_sorted=False)
    out, (h_n, _) = lstm(packed)
    p, _, _ = enc(*enc_args(b))
    torch.testing.assert_close(p[keep], h_n[0], rtol=1e-5, atol=1e-6)
    # mean / max pooling over the real outputs
    padded, lengths = nn.utils.rnn.pad_packed_sequence(out, batch_first=True)
    real = torch.arange(padded.shape[1]) < lengths.unsqueeze(1)
    for pool, ref in [
        ("mean", (padded * real.unsqueeze(-1)).sum(1) / lengths.unsqueeze(1)),
        ("max", padded.masked_fill(~real.unsqueeze(-1), -1e9).amax(1)),
    ]:
        enc.pool = pool
        torch.testing.assert_close(enc(*enc_args(b))[0][keep], ref, rtol=1e-5, atol=1e-6)


def reference_encode(enc: RoutedLSTMEncoder, ids: torch.Tensor, path: list[int]) -> torch.Tensor:
    """Run one sentence of one sample alone, token by token, through the blocks its path names."""

    def compose(x: torch.Tensor) -> torch.Tensor:
        for t, a in enumerate(path):
            x = enc.routed.step_blocks(t)[a](x)
        return x

    h = c = torch.zeros(1, HID)
    for tok in ids.tolist():
        x = enc.embedding.weight[tok].unsqueeze(0)
        z = (compose(x) if enc.routed_kind == "i2h" else enc.i2h(x)) + (
            compose(h) if enc.routed_kind == "h2h" else enc.h2h(h)
        )
        i, f, g, o = z.split(HID, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
    return h[0]


def grads(module: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in module.parameters()]


@pytest.mark.parametrize("routed", ["i2h", "h2h"])
@pytest.mark.parametrize("depth", [1, 2])
def test_grouped_execution_matches_per_sample_reference(routed, depth):
    enc = encoder(routed, depth=depth, width=3)
    b = batch(b=9, seed=depth)
    p, h, (traj,) = enc(*enc_args(b))
    assert len({tuple(a) for a in traj.actions.tolist()}) > 1, "the batch should take several paths"
    up_p, up_h = torch.randn_like(p), torch.randn_like(h)
    ((p * up_p).sum() + (h * up_h).sum()).backward()
    g_batch = grads(enc.routed.blocks)
    enc.zero_grad()
    ref_p, ref_h = [], []
    for i in range(9):
        path = traj.actions[i].tolist()
        ref_p.append(reference_encode(enc, b["premise_ids"][i][b["premise_mask"][i]], path))
        ref_h.append(reference_encode(enc, b["hypothesis_ids"][i][b["hypothesis_mask"][i]], path))
    ref_p, ref_h = torch.stack(ref_p), torch.stack(ref_h)
    torch.testing.assert_close(p, ref_p, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h, ref_h, rtol=1e-5, atol=1e-6)
    ((ref_p * up_p).sum() + (ref_h * up_h).sum()).backward()
    for g, g_ref in zip(g_batch, grads(enc.routed.blocks)):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("lstm_route,route", [("i2h", "none"), ("h2h", "classifier"), ("none", "classifier")])
def test_routed_lstm_trains_one_step_and_router_tables_change(lstm_route, route):
    torch.manual_seed(0)
    cfg = LSTMModelConfig(
        num_meta=3, route=route, lstm_route=lstm_route, lstm_hidden=HID, lstm_width=2, lstm_depth=2,
        classifier_hidden=8, classifier_layers=1, router_init=0.0, exploration="high",
    )
    model = LSTMNLIModel(cfg, weight(), pad_id=0)
    n_routed = (lstm_route != "none") + (route == "classifier")
    assert len(model.routed_layers) == n_routed
    tables = [r.table.detach().clone() for r in model.routers()]
    blocks = [p.detach().clone() for p in model.block_parameters()]
    b = batch()
    out = model(**b)
    assert out.logits.shape == (7, 3) and len(out.trajectories) == n_routed
    loss = out.per_sample_loss.mean() + model.router_loss(out, b["labels"])
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.5 * p.grad
    assert all(not torch.equal(t, r.table) for t, r in zip(tables, model.routers()))
    assert any(not torch.equal(p0, p) for p0, p in zip(blocks, model.block_parameters()))


@pytest.mark.parametrize("lstm_route", ["i2h", "h2h"])
@pytest.mark.parametrize("router,learner", [("approx", "qlearning"), ("tabular", "gumbel")])
def test_other_router_architectures_train(lstm_route, router, learner):
    cfg = LSTMModelConfig(num_meta=3, lstm_route=lstm_route, lstm_hidden=HID, lstm_width=2, lstm_depth=2,
                          classifier_hidden=8, classifier_layers=1, router=router, learner=learner)
    model = LSTMNLIModel(cfg, weight(), pad_id=0)
    b = batch()
    out = model(**b)
    (model.router_loss(out, b["labels"]) + out.per_sample_loss.mean()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.router_parameters())


def test_lstm_model_runs_in_the_training_loop():
    cfg = LSTMModelConfig(num_meta=3, lstm_route="h2h", lstm_hidden=HID, lstm_width=2, classifier_hidden=8,
                          classifier_layers=1)
    model = LSTMNLIModel(cfg, weight(), pad_id=0)
    batches = [batch(seed=s) for s in range(3)]
    loader = DataLoader(batches, batch_size=None)
    result = train(model, loader, {"validation": loader}, TrainConfig(epochs=1, cpu=True, progress=False))
    assert 0.0 <= result["final"]["validation"]["accuracy"] <= 1.0
    assert "routing_entropy_0" in result["final"]["validation"]


def test_config_rejects_word_projection_routes():
    with pytest.raises(ValueError, match="LSTM models route"):
        LSTMModelConfig(route="wp")
    with pytest.raises(ValueError, match="lstm_route"):
        LSTMModelConfig(lstm_route="gates")
