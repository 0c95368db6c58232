"""CBOW/WP NLI model, training loop and the main recipe, end to end on generated data."""

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from nli_routing.models.nli import NLIModelConfig, NLIRoutingModel
from nli_routing.experiments.nli import (
    DEFAULT_DATA_DIR,
    RECIPE_TRAIN_DEFAULTS,
    DataArgs,
    prepare_sci,
    run_method,
)
from nli_routing.training.loop import TrainConfig

from .conftest import REPO_ROOT
from .helpers import DIM, batch, weight



@pytest.mark.parametrize(
    "route,n_traj", [("none", 0), ("wp", 1), ("classifier", 1), ("wp+classifier", 2)]
)
def test_model_routes_shapes_and_router_loss(route, n_traj):
    torch.manual_seed(0)
    cfg = NLIModelConfig(num_meta=3, route=route, wp_width=3, wp_depth=2, classifier_hidden=32, meta_keyword=route == "none")
    model = NLIRoutingModel(cfg, weight(), pad_id=0)
    b = batch()
    out = model(**b)
    assert out.logits.shape == (6, 3)
    assert out.per_sample_loss.shape == (6,)
    assert len(out.trajectories) == n_traj
    rloss = model.router_loss(out, b["labels"])
    if n_traj:
        assert rloss.requires_grad and float(rloss.detach()) > 0  # zero-initialised tables vs +-1 rewards
        (out.per_sample_loss.mean() + rloss).backward()
        for router in model.routers():
            assert router.table.grad is not None and router.table.grad.abs().sum() > 0
    else:
        assert float(rloss) == 0.0
    # routers and blocks are disjoint parameter sets
    r_ids = {id(p) for p in model.router_parameters()}
    assert not r_ids & {id(p) for p in model.block_parameters()}


def test_unrouted_projection_equals_wp_with_every_sample_on_one_block():
    """route="projection" (the equal-depth unrouted control) computes what WP computes when every
    sample takes the same block at every step."""
    torch.manual_seed(0)
    common = dict(num_meta=3, wp_depth=2, wp_residual=False, classifier_hidden=16)
    w = weight()
    plain = NLIRoutingModel(NLIModelConfig(route="projection", **common), w, pad_id=0)
    routed = NLIRoutingModel(NLIModelConfig(route="wp", wp_width=2, wp_recursive=False, **common), w, 0)
    with torch.no_grad():
        for t, bank in enumerate(routed.encoder.projection.blocks):  # block 1 of each step = the shared layer
            lin = plain.encoder.projection[t][0]
            bank.weight[1].copy_(lin.weight.t())
            bank.bias[1].copy_(lin.bias)
        routed.encoder.projection.router.table.zero_()
        routed.encoder.projection.router.table[:, :, 1] = 1.0  # greedy: block 1 everywhere
        routed.classifier.load_state_dict(plain.classifier.state_dict())
    plain.eval()
    routed.eval()
    b = batch()
    out_plain, out_routed = plain(**b), routed(**b)
    assert out_plain.trajectories == []
    torch.testing.assert_close(out_plain.logits, out_routed.logits, rtol=1e-5, atol=1e-5)


def test_wp_sentences_of_a_sample_share_its_path_and_empty_sentence_is_zero():
    torch.manual_seed(0)
    cfg = NLIModelConfig(num_meta=3, route="wp", wp_width=2, wp_depth=2, classifier_hidden=8)
    model = NLIRoutingModel(cfg, weight(), pad_id=0)
    b = batch()
    p, h, trajs = model.encoder(b["premise_ids"], b["premise_mask"], b["hypothesis_ids"], b["hypothesis_mask"], b["meta"])
    assert torch.equal(p[1], torch.zeros(DIM))  # empty premise
    # recompute sample 2's hypothesis with its own path, word by word
    path = trajs[0].actions[2].tolist()
    words = model.encoder.embedding(b["hypothesis_ids"][2])
    for a in path:
        words = model.encoder.projection.blocks[a](words)
    torch.testing.assert_close(h[2], words.sum(0))


@pytest.fixture(scope="module")
def generated():
    args = DataArgs(data_dir=str(DEFAULT_DATA_DIR), max_train_samples=1500)
    prepared = prepare_sci(args)
    # small evaluation splits keep the test fast
    prepared.data["validation"] = prepared.data["validation"].select(range(300))
    prepared.data["test"] = prepared.data["test"].select(range(400))
    return prepared


def majority_rate(ds):
    counts = torch.bincount(torch.tensor(ds["label"]))
    return float(counts.max() / counts.sum())


@pytest.mark.parametrize("method", ["cbow", "wp-signature"])
def test_end_to_end_beats_majority_on_generated_data(generated, method, tmp_path):
    cfg = TrainConfig(epochs=6, cpu=True, progress=False, seed=0, **RECIPE_TRAIN_DEFAULTS)
    res = run_method(method, generated, NLIModelConfig(wp_residual=True), cfg, output_dir=tmp_path)
    acc = res["summary"]["test_accuracy"]
    majority = majority_rate(generated.data["test"])
    assert acc > majority + 0.05, f"{method}: test accuracy {acc:.3f} vs majority {majority:.3f}"
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["final"]["test"]["n"] == 400
    assert set(metrics["final"]["test"]["accuracy_per_meta"]) <= set(generated.meta_names)
    from transformers import AutoModel

    saved = AutoModel.from_pretrained(tmp_path)  # the run folder is a saved model
    assert isinstance(saved, NLIRoutingModel) and saved.settings.route == ("wp" if method.startswith("wp") else "none")
    if method.startswith("wp"):
        ent = metrics["final"]["test"]["routing_entropy_0"]
        assert 0.0 <= ent["overall"] <= 2.0 + 1e-6  # log2(4 blocks)


def test_router_tables_learn_during_training(generated):
    cfg = TrainConfig(epochs=1, cpu=True, progress=False, **RECIPE_TRAIN_DEFAULTS)
    res = run_method("wp-signature", generated, NLIModelConfig(wp_depth=1), replace(cfg, select_best=False))
    assert res["history"][0]["router_loss"] > 0


def test_recipe_runs_end_to_end(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [
        sys.executable,
        str(REPO_ROOT / "recipes" / "sci_wp_dispatch.py"),
        "--max_train_samples", "300",
        "--epochs", "1",
        "--cpu",
        "--progress", "False",
        "--output_dir", str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wp-kmeans" in proc.stdout and "test acc" in proc.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["method"] for r in results["summary"]] == ["cbow", "wp-signature", "wp-kmeans"]
    for r in results["summary"]:
        assert 0.0 <= r["test_accuracy"] <= 1.0


def test_unknown_method_is_an_error(generated):
    with pytest.raises(ValueError, match="unknown method 'wp-magic'"):
        run_method("wp-magic", generated, NLIModelConfig(), TrainConfig())


def test_meta_label_unseen_in_training_is_an_error_unless_allowed():
    mismatch = DEFAULT_DATA_DIR.parent / "mismatch"
    with pytest.raises(ValueError, match=r"never in train.*--allow_unseen_meta"):
        prepare_sci(DataArgs(data_dir=str(mismatch)))


@pytest.mark.parametrize("learner", sorted(__import__("nli_routing.routing", fromlist=["LEARNERS"]).LEARNERS))
def test_every_learner_trains_the_routed_nli_model(learner):
    """Each registered algorithm routes WP and the classifier of the NLI model and takes a step."""
    torch.manual_seed(0)
    cfg = NLIModelConfig(num_meta=3, route="wp+classifier", wp_width=3, wp_depth=2, classifier_hidden=16,
                         classifier_width=2, learner=learner)
    model = NLIRoutingModel(cfg, weight(), pad_id=0)
    before = [p.detach().clone() for p in model.router_parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for seed in range(3):
        b = batch(b=16, seed=seed)
        out = model(**b)
        loss = out.per_sample_loss.mean() + model.router_loss(out, b["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
    changed = [not torch.equal(a, p.detach()) for a, p in zip(before, model.router_parameters())]
    assert any(changed), f"{learner}: no router parameter changed"
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("route", ["none", "wp", "classifier"])
def test_pair_features_match_feeds_the_classifier_p_h_difference_and_product(route):
    torch.manual_seed(0)
    cfg = NLIModelConfig(num_meta=3, route=route, classifier_hidden=8, classifier_layers=1, pair_features="match")
    model = NLIRoutingModel(cfg, weight(), pad_id=0)
    p, h = torch.randn(2, DIM), torch.randn(2, DIM)
    x = model.pair(p, h)
    assert torch.equal(x, torch.cat([p, h, (p - h).abs(), p * h], -1))
    assert model(**batch()).logits.shape == (6, 3)  # the classifier takes 4 * dim inputs
    concat = NLIRoutingModel(replace(cfg, pair_features="concat"), weight(), pad_id=0)
    assert torch.equal(concat.pair(p, h), torch.cat([p, h], -1))


def test_pair_features_unknown_is_refused_by_name():
    with pytest.raises(ValueError, match="pair_features must be one of"):
        NLIModelConfig(pair_features="product")


@pytest.mark.parametrize("route,router_type", [("none", "tabular"), ("classifier", "tabular"), ("classifier", "approx")])
def test_classifier_init_he_scales_hidden_layers_and_leaves_routers_alone(route, router_type):
    torch.manual_seed(0)
    cfg = NLIModelConfig(num_meta=3, route=route, router=router_type, classifier_hidden=400, classifier_init="he")
    model = NLIRoutingModel(cfg, weight(), pad_id=0)
    torch.manual_seed(0)
    torch_init = NLIRoutingModel(replace(cfg, classifier_init="torch"), weight(), pad_id=0)
    weights = [(n, p) for n, p in model.classifier.named_parameters()
               if n.endswith("weight") and "router" not in n and not n.startswith("out")]
    biases = [p for n, p in model.classifier.named_parameters() if n.endswith("bias") and "router" not in n and not n.startswith("out")]
    for name, w in weights:
        fan_in = w.shape[-2] if w.dim() == 3 else w.shape[1]  # bank [blocks, in, out]; Linear [out, in]
        assert abs(float(w.std()) / (2.0 / fan_in) ** 0.5 - 1) < 0.05, name
    assert weights and biases
    assert all(float(b.abs().max()) == 0.0 for b in biases)
    routers = [(n, p) for n, p in model.named_parameters() if "router" in n]
    routers_torch = dict((n, p) for n, p in torch_init.named_parameters() if "router" in n)
    for n, p in routers:  # the router's parameters are those of the default initialisation
        assert torch.equal(p, routers_torch[n]), n


def test_classifier_layers_are_checked_against_the_route():
    NLIModelConfig(route="none", classifier_layers=0)  # a linear classifier on the pair features
    with pytest.raises(ValueError, match="classifier_layers must be >= 1 with route 'classifier'"):
        NLIModelConfig(route="classifier", classifier_layers=0)
    with pytest.raises(ValueError, match="classifier_layers must be >= 0"):
        NLIModelConfig(classifier_layers=-1)
