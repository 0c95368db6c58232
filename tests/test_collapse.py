"""Collapse metrics, the collapse warning, and metrics reaching an accelerate tracker (TensorBoard)."""

import logging

import pytest
import torch

from nli_routing.analysis.collapse import dispatch_collapse, path_collapse
from nli_routing.models.nli import NLIModelConfig, NLIRoutingModel
from nli_routing.training.loop import TrainConfig, train

from .helpers import tiny_loader, weight


def test_path_collapse_by_hand():
    actions = torch.tensor([[0, 1], [0, 1], [0, 1], [1, -1], [0, 1], [2, 0]])
    active = actions >= 0
    meta = torch.tensor([0, 0, 1, 1, 1, 2])
    c = path_collapse(actions, active, meta, num_actions=3, num_meta=3)
    assert c["top_block_share"] == [4 / 6, 4 / 5]
    assert c["distinct_paths"] == 3 and c["top_path"] == [0, 1]
    assert c["top_path_share"] == pytest.approx(4 / 6)
    assert c["agents_on_top_path"] == 2  # classes 0 and 1 mostly take (0, 1); class 2 takes (2, 0)
    assert not c["collapsed"]
    assert path_collapse(actions, active, meta, 3, 3, threshold=0.6)["collapsed"]
    one = path_collapse(torch.zeros(10, 1, dtype=torch.long), torch.ones(10, 1, dtype=torch.bool),
                        torch.zeros(10, dtype=torch.long), num_actions=1, num_meta=1)
    assert one["top_path_share"] == 1.0 and not one["collapsed"]  # a single block cannot collapse
    d = dispatch_collapse(torch.tensor([1] * 19 + [0]), 3)
    assert d == {"top_class": 1, "top_class_share": 0.95, "collapsed": True}


def routed_model(forced: bool) -> NLIRoutingModel:
    torch.manual_seed(0)
    cfg = NLIModelConfig(num_meta=3, route="wp", wp_width=3, wp_depth=1, classifier_hidden=8, exploration="none")
    model = NLIRoutingModel(cfg, weight(), pad_id=0)
    table = model.routers()[0].table
    with torch.no_grad():
        table.fill_(-10.0)
        if forced:
            table[:, 0, 0] = 10.0  # every agent on block 0
        else:
            table[torch.arange(3), 0, torch.arange(3)] = 10.0  # agent m on block m
    return model


@pytest.mark.parametrize("forced", [True, False])
def test_collapse_warning_for_a_forced_router_only(forced, caplog):
    model = routed_model(forced)
    cfg = TrainConfig(epochs=1, cpu=True, progress=False, select_best=False, collapse_warmup=0)
    with caplog.at_level(logging.WARNING, logger="nli_routing.training.tracking"):
        res = train(model, tiny_loader(), {"validation": tiny_loader(24, 1)}, cfg)
    record = res["history"][0]
    c = record["validation"]["collapse_0"]
    warned = [r.message for r in caplog.records if "collapsed" in r.message]
    if forced:
        assert c["collapsed"] and c["top_path"] == [0] and c["agents_on_top_path"] == 3
        assert len(warned) == 1 and "routed layer 0 (wp) collapsed: 100.0%" in warned[0]
        assert record["collapse_warnings"] == warned
    else:
        assert not c["collapsed"] and c["distinct_paths"] == 3 and c["agents_on_top_path"] == 1
        assert warned == [] and "collapse_warnings" not in record


def test_no_warning_during_warmup(caplog):
    cfg = TrainConfig(epochs=1, cpu=True, progress=False, select_best=False)  # warm-up: 1 epoch
    with caplog.at_level(logging.WARNING, logger="nli_routing.training.tracking"):
        train(routed_model(True), tiny_loader(), {"validation": tiny_loader(24, 1)}, cfg)
    assert not [r for r in caplog.records if "collapsed" in r.message]


def test_metrics_reach_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = TrainConfig(epochs=2, cpu=True, progress=False, log_with="tensorboard", collapse_warmup=0)
    train(routed_model(True), tiny_loader(), {"validation": tiny_loader(24, 1), "test": tiny_loader(24, 2)}, cfg,
          output_dir=tmp_path / "run")
    events = list((tmp_path / "run").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file under the run folder"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("train_loss", "validation/accuracy", "validation/0-wp/routing_entropy/overall",
                "validation/0-wp/collapse/top_path_share", "validation/0-wp/collapse/collapsed",
                "final_test/accuracy"):
        assert tag in tags, f"{tag} missing from {sorted(tags)}"
    assert [e.value for e in acc.Scalars("validation/0-wp/collapse/collapsed")] == [1.0, 1.0]
    with pytest.raises(ValueError, match="log_with: unknown tracker"):
        TrainConfig(log_with="tensorbored")
